"""aios-memory: plugin-based multimodal memory for agents.

    from aios_memory import MemoryStore
    store = MemoryStore("memories/")
    store.add("The user's cat is called Miso", namespace="agent-1")
    store.search("what pets does the user have?", namespace="agent-1")

Importing this package loads no model and no torch; providers load their weights on first use.
"""

from typing import TYPE_CHECKING, Any

from aios_memory.errors import (
    AccessDeniedError,
    AiosMemoryError,
    EmptyContentError,
    InputTooLargeError,
    InvalidInputError,
    MemoryNotFoundError,
    ModalityError,
    ModelNotInstalledError,
    ObjectStoreError,
    ProviderError,
    ProviderMismatchError,
    ProviderNotFoundError,
    QueryError,
    QueryTimeoutError,
    StoreCorruptError,
    StoreError,
    StoreNotFoundError,
    UnsupportedMediaError,
    VersionNotFoundError,
    WeightFileError,
)
from aios_memory.hookspecs import hookimpl

if TYPE_CHECKING:
    from aios_memory.memory import Memory
    from aios_memory.provider import EmbeddingProvider
    from aios_memory.store import MemoryStore

__version__ = "0.1.0"

_LAZY = {
    "MemoryStore": "aios_memory.store",
    "Memory": "aios_memory.memory",
    "EmbeddingProvider": "aios_memory.provider",
}


def __getattr__(name: str) -> Any:
    """``MemoryStore`` and ``Memory`` import the storage layer (pyarrow) on first use, so a plugin or a
    process that only embeds (``from aios_memory import EmbeddingProvider``) does not pay for it; and
    ``EmbeddingProvider`` imports numpy on first use, so the ``serve`` proxy pays for neither."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'aios_memory' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "AccessDeniedError",
    "AiosMemoryError",
    "EmbeddingProvider",
    "EmptyContentError",
    "InputTooLargeError",
    "InvalidInputError",
    "Memory",
    "MemoryNotFoundError",
    "MemoryStore",
    "ModalityError",
    "ModelNotInstalledError",
    "ProviderError",
    "ProviderMismatchError",
    "ProviderNotFoundError",
    "QueryError",
    "QueryTimeoutError",
    "StoreCorruptError",
    "ObjectStoreError",
    "StoreError",
    "StoreNotFoundError",
    "UnsupportedMediaError",
    "VersionNotFoundError",
    "WeightFileError",
    "hookimpl",
]
