"""aios-memory: plugin-based multimodal memory for agents.

    from aios_memory import MemoryStore
    store = MemoryStore("memories/")
    store.add("The user's cat is called Miso", namespace="agent-1")
    store.search("what pets does the user have?", namespace="agent-1")

Importing this package loads no model and no torch; providers load their weights on first use.
"""

from aios_memory.errors import (
    AiosMemoryError,
    EmptyContentError,
    InputTooLargeError,
    InvalidInputError,
    MemoryNotFoundError,
    ModalityError,
    ModelNotInstalledError,
    ProviderError,
    ProviderMismatchError,
    ProviderNotFoundError,
    QueryError,
    StoreCorruptError,
    StoreError,
    UnsupportedMediaError,
    WeightFileError,
)
from aios_memory.hookspecs import hookimpl
from aios_memory.memory import Memory
from aios_memory.provider import EmbeddingProvider
from aios_memory.store import MemoryStore

__version__ = "0.1.0"

__all__ = [
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
    "StoreCorruptError",
    "StoreError",
    "UnsupportedMediaError",
    "WeightFileError",
    "hookimpl",
]
