"""Foreign embeddings: a text provider over an embedding function aios-memory did not make.

``ForeignEmbeddingProvider`` wraps a LangChain ``Embeddings`` (``embed_documents`` / ``embed_query``), a
LlamaIndex ``BaseEmbedding`` (``get_text_embedding_batch`` / ``get_query_embedding``) or a plain callable
``list[str] -> vectors``. Its dimension is found by embedding one probe string once (unless given); its
name is ``foreign:<module.Class>[:<model>]`` unless given; its fingerprint adds ``class`` and ``model`` to
the base one, so a table embedded by one model refuses another of the same dimension. Every output goes
through the base class's checks (shape, NaN, zero vectors: ``ProviderError``, nothing written).

``register_foreign`` registers it with the plugin manager (one small pluggy plugin per name), so a store
resolves it by name like any provider. A process that reopens such a store registers the same model
again before using the table; otherwise the store says how (see :func:`unregistered_message`).

    from aios_memory.foreign import register_foreign
    provider = register_foreign(my_langchain_embeddings)
    store = MemoryStore(path, providers={"text": provider.name})
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from aios_memory.errors import ProviderError, ProviderMismatchError
from aios_memory.hookspecs import hookimpl
from aios_memory.provider import EmbeddingProvider

PREFIX = "foreign:"
PROBE = "aios-memory dimension probe"
PLUGIN_PREFIX = "aios-memory-foreign:"  # the pluggy name of the plugin registering one foreign provider
_MODEL_ATTRS = ("model", "model_name", "model_id", "deployment_name", "deployment")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:/@+-]")
_lock = threading.RLock()
_plugins: dict[str, object] = {}  # provider name -> the plugin object that registers it


def _class_path(embedder: Any) -> str:
    """``module.Class`` of an embeddings object; ``module.function`` of a plain function."""
    target = (
        embedder if _kind(embedder) == "callable" and hasattr(embedder, "__qualname__") else type(embedder)
    )
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(target).__name__)}"


def _kind(embedder: Any) -> str:
    if callable(getattr(embedder, "embed_documents", None)) and callable(
        getattr(embedder, "embed_query", None)
    ):
        return "langchain"
    if callable(getattr(embedder, "get_text_embedding_batch", None)) and callable(
        getattr(embedder, "get_query_embedding", None)
    ):
        return "llama_index"
    if callable(embedder):
        return "callable"
    raise ProviderError(
        "a foreign embedding is a LangChain Embeddings (embed_documents/embed_query), a LlamaIndex "
        f"BaseEmbedding (get_text_embedding_batch/get_query_embedding) or a callable; got {type(embedder).__name__}"
    )


def _model_of(embedder: Any) -> str:
    for attr in _MODEL_ATTRS:
        value = getattr(embedder, attr, None)
        if isinstance(value, str) and value:
            return value
    return ""


class ForeignEmbeddingProvider(EmbeddingProvider):
    """A text provider over a foreign embedding function (see the module's docstring).

    ``name``: defaults to ``foreign:<module.Class>[:<model>]``; ``dim``: defaults to the length of the
    probe string's vector; ``model``: defaults to the wrapped object's ``model``/``model_name`` attribute.
    """

    modality = "text"
    version = "1"

    def __init__(
        self, embedder: Any, *, name: str | None = None, dim: int | None = None, model: str | None = None
    ) -> None:
        self.kind = _kind(embedder)
        self.embedder = embedder
        self.class_path = _class_path(embedder)
        self.model_name = model if model is not None else _model_of(embedder)  # type: ignore[misc]
        if name is None:
            name = PREFIX + self.class_path + (f":{self.model_name}" if self.model_name else "")
            name = _UNSAFE.sub("_", name)
        if not isinstance(name, str) or not name.strip():
            raise ProviderError(f"a foreign provider's name is a non-empty string, got {name!r}")
        self.name = name  # type: ignore[misc]
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0):
            raise ProviderError(f"dim must be a positive integer, got {dim!r}")
        self.dim = dim if dim is not None else self._probe()  # type: ignore[misc]
        super().__init__()

    def _probe(self) -> int:
        try:
            arr = np.asarray(self._call([PROBE]), dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ProviderError(
                f"foreign embedding {self.name!r} returned non-numeric vectors: {exc}"
            ) from exc
        if arr.ndim != 2 or arr.shape[0] != 1 or arr.shape[1] == 0:
            raise ProviderError(
                f"foreign embedding {self.name!r} returned shape {arr.shape} for one text; expected (1, dim)"
            )
        return int(arr.shape[1])

    def _call(self, texts: list[str]) -> Any:
        try:
            if self.kind == "langchain":
                return self.embedder.embed_documents(texts)
            if self.kind == "llama_index":
                return self.embedder.get_text_embedding_batch(texts)
            return self.embedder(texts)
        except ProviderError:
            raise
        except Exception as exc:  # the wrapped model's own failure, as the store's typed error
            raise ProviderError(
                f"foreign embedding {self.name!r} failed: {type(exc).__name__}: {exc}"
            ) from exc

    def _embed(self, items: list[Any]) -> Any:
        return self._call(items)

    def embed_query(self, query: Any, modality: str | None = None) -> np.ndarray:
        """A text query through the wrapped model's query function (``embed_query`` /
        ``get_query_embedding``; a plain callable embeds it as a document)."""
        if (modality or "text") != "text" or self.kind == "callable":
            return super().embed_query(query, modality)
        self._check_item(query, "text")
        with self._in_use():
            try:
                if self.kind == "langchain":
                    out = self.embedder.embed_query(query)
                else:
                    out = self.embedder.get_query_embedding(query)
            except Exception as exc:
                raise ProviderError(
                    f"foreign embedding {self.name!r} failed: {type(exc).__name__}: {exc}"
                ) from exc
            return self._finish([out], 1)[0]

    def fingerprint(self) -> dict[str, Any]:
        """The base fingerprint plus the wrapped ``class`` and ``model`` (``dim`` is in the base)."""
        return {
            **super().fingerprint(),
            "class": self.class_path,
            "model": self.model_name,
            "dim": int(self.dim),
        }


class _Plugin:
    """The pluggy plugin that registers one foreign provider."""

    def __init__(self, provider: ForeignEmbeddingProvider) -> None:
        self.provider = provider

    @hookimpl
    def register_embedding_providers(self, register: Callable[[Any], None]) -> None:
        register(self.provider)


def register_foreign(
    embedder: Any, *, name: str | None = None, dim: int | None = None, model: str | None = None
) -> ForeignEmbeddingProvider:
    """Wrap ``embedder`` (or take a ``ForeignEmbeddingProvider``) and register it, so stores resolve it by
    name. The same name registered again with the same fingerprint serves the newest wrapper; with
    another fingerprint (another model, class or dim) it is a ``ProviderMismatchError``; a name taken by
    a provider that is not foreign is a ``ProviderError``."""
    from aios_memory.plugins import get_providers, register_plugin, unregister_plugin

    if isinstance(embedder, ForeignEmbeddingProvider):
        provider = embedder
    else:
        provider = ForeignEmbeddingProvider(embedder, name=name, dim=dim, model=model)
    with _lock:
        existing = get_providers().get(provider.name)
        if existing is provider:
            return provider
        if existing is not None:
            if not isinstance(existing, ForeignEmbeddingProvider) or provider.name not in _plugins:
                raise ProviderError(
                    f"the provider name {provider.name!r} is taken by {existing!r}; pass another name="
                )
            old, new = existing.fingerprint(), provider.fingerprint()
            if old != new:
                raise ProviderMismatchError(
                    f"a foreign provider named {provider.name!r} is registered already with another model "
                    f"({old}), not {new}; pass name= to tell them apart"
                )
            unregister_plugin(_plugins.pop(provider.name))
        plugin = _Plugin(provider)
        register_plugin(plugin, name=PLUGIN_PREFIX + provider.name)
        _plugins[provider.name] = plugin
    return provider


def unregister_foreign(name: str) -> bool:
    """Forget the foreign provider ``name`` in this process; returns whether it was registered."""
    from aios_memory.plugins import unregister_plugin

    with _lock:
        plugin = _plugins.pop(name, None)
        if plugin is not None:
            unregister_plugin(plugin)
    return plugin is not None


def registered_foreign() -> list[str]:
    """The names of the foreign providers registered in this process."""
    with _lock:
        return sorted(_plugins)


def is_foreign(fingerprint: dict[str, Any]) -> bool:
    """Whether a table's recorded fingerprint is a foreign provider's."""
    return "class" in fingerprint and "model" in fingerprint


def unregistered_message(modality: str, path: Any, fingerprint: dict[str, Any]) -> str:
    """Why a table made by a foreign provider cannot be used in a process that has not registered it."""
    model = fingerprint.get("model") or "(no model name)"
    return (
        f"{modality} memories in {path} were embedded by the foreign embedding {fingerprint.get('provider')!r} "
        f"(class {fingerprint.get('class')}, model {model}, dim {fingerprint.get('dim')}), which is not "
        "registered in this process; register the same model before using the table: "
        "`from aios_memory.foreign import register_foreign; register_foreign(embeddings)` (pass the name= "
        "it was registered with, if one was given), or hand it to the adapter "
        "(AiosMemoryVectorStore(path, embedding=embeddings))"
    )
