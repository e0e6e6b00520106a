"""LangChain adapters: ``AiosMemoryVectorStore`` (a ``VectorStore``; ``as_retriever()`` works) and
``AiosMemoryEmbeddings`` (an ``Embeddings`` over a registered provider, MiniLM by default).

    from aios_memory.integrations.langchain import AiosMemoryVectorStore
    vs = AiosMemoryVectorStore("agent-memory", namespace="user-42")
    vs.add_texts(["The user's cat is called Miso"], metadatas=[{"kind": "fact"}])
    vs.as_retriever(search_kwargs={"k": 1, "filter": {"kind": "fact"}}).invoke("pets?")
    vs.as_retriever(search_type="mmr", search_kwargs={"k": 3, "fetch_k": 20, "lambda_mult": 0.5})

The store embeds texts with its own text provider (MiniLM unless the store says otherwise), or, given
``embedding=`` any other LangChain ``Embeddings``, with that model wrapped as a foreign provider
(``aios_memory.foreign``): the table then records its class, model and dimension and refuses another. Documents live in one namespace (per agent, user or session). Ids a caller gives are kept in
the memory's metadata (key ``lc_id``) and are what ``Document.id`` reports; adding a text with an id
that exists in the namespace replaces that document.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from aios_memory.integrations._common import (
    add_kwargs,
    compile_filter,
    dict_filter,
    metadata_of,
    require,
    select,
    store_id,
    vector_search,
    with_text_provider,
)

try:
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.vectorstores import VectorStore
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise require("langchain_core", "langchain") from exc

from aios_memory.errors import InvalidInputError
from aios_memory.store import MemoryStore

ID_KEY = "lc_id"  # metadata key holding a caller-given LangChain id
DEFAULT_TEXT_PROVIDER = "minilm-l6-v2"


def _text_provider(provider: Any) -> Any:
    from aios_memory.plugins import get_provider

    p = get_provider(provider) if isinstance(provider, str) else provider
    if p.modality != "text":
        raise InvalidInputError(f"provider {p.name!r} embeds {p.modality}, not text")
    return p


class AiosMemoryEmbeddings(Embeddings):
    """LangChain ``Embeddings`` backed by an aios-memory text provider (default: MiniLM-L6-v2, 384-d)."""

    def __init__(self, provider: Any = DEFAULT_TEXT_PROVIDER) -> None:
        self.provider = _text_provider(provider)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.provider.embed_batch(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.provider.embed_query(text, "text").tolist()


def _open(store: MemoryStore | str | Path) -> MemoryStore:
    return store if isinstance(store, MemoryStore) else MemoryStore(store)


class AiosMemoryVectorStore(VectorStore):
    """A LangChain vector store over the text memories of one namespace of a ``MemoryStore``.

    ``filter`` (in the search methods, and ``as_retriever(search_kwargs=...)``) is a dict over metadata:
    ``{"kind": "fact"}``, ``{"year": {"$gte": 2020}}``, ``{"$or": [{...}, {...}]}``; operators ``$eq $ne
    $gt $gte $lt $lte $in $nin $like`` and ``$and $or $not``. It becomes a parameterised SQL predicate.
    Scores are cosine similarities (higher is closer).
    """

    def __init__(
        self,
        store: MemoryStore | str | Path,
        *,
        namespace: str = "default",
        embedding: Embeddings | None = None,
    ) -> None:
        from aios_memory.memory import check_namespace

        self.namespace = check_namespace(namespace)
        self._foreign: Embeddings | None = None
        if embedding is not None and not isinstance(embedding, AiosMemoryEmbeddings):
            # any other Embeddings: a foreign provider over it embeds this store's text table
            from aios_memory.foreign import register_foreign

            provider = register_foreign(embedding)
            self.store = with_text_provider(store, provider)
            self._foreign = embedding
            return
        self.store = _open(store)
        if embedding is not None:
            provider = self.store.provider_for("text")
            if embedding.provider.name != provider.name:
                raise InvalidInputError(
                    f"the store embeds text with {provider.name!r}, not {embedding.provider.name!r}"
                )

    @property
    def embeddings(self) -> Embeddings:
        if self._foreign is not None:
            return self._foreign
        return AiosMemoryEmbeddings(self.store.provider_for("text"))

    # --- writing -----------------------------------------------------------------------------------
    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed and store ``texts`` in one commit; returns their ids (the given ones, else new ones)."""
        texts = list(texts)
        n = len(texts)
        if metadatas is not None and len(metadatas) != n:
            raise ValueError(f"got {len(metadatas)} metadatas for {n} texts")
        if ids is not None and len(ids) != n:
            raise ValueError(f"got {len(ids)} ids for {n} texts")
        metas = [dict(m or {}) for m in (metadatas or [{}] * n)]
        given = list(ids) if ids is not None else [None] * n
        for meta, id_ in zip(metas, given, strict=True):
            meta.pop(ID_KEY, None)
            if id_ is not None:
                if not isinstance(id_, str) or not id_:
                    raise InvalidInputError(f"document ids are non-empty strings, got {id_!r}")
                meta[ID_KEY] = id_
        if ids is not None and hasattr(self.store, "upsert_many"):
            # one atomic upsert: the memory of a document id is f"lc:{namespace}:{id}" (ids are store-wide;
            # a collection's document ids are its own), replaced or inserted under the writers' lock
            keys = [store_id("lc", self.namespace, g) if g is not None else str(uuid.uuid4()) for g in given]
            legacy = [r for r in self._resolve([g for g in given if g is not None]) if r not in set(keys)]
            new = self.store.upsert_many(keys, texts, namespace=self.namespace, metadata=metas)
            if legacy:  # memories written before upserts (random ids): replaced by a second commit
                self.store.delete(legacy, missing_ok=True)
            return [g if g is not None else s for g, s in zip(given, new, strict=True)]
        replaced = self._resolve([i for i in given if i is not None])
        new = self.store.add_many(texts, namespace=self.namespace, metadata=metas, **add_kwargs(self.store))
        if replaced:  # a store without upserts: the older memories go once the new ones are committed
            self.store.delete(replaced)
        return [g if g is not None else s for g, s in zip(given, new, strict=True)]

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete documents by id (``None``: every document of the namespace); unknown ids are ignored."""
        rows = (
            self._resolve(ids) if ids is not None else [r["id"] for r in select(self.store, self.namespace)]
        )
        if rows:
            self.store.delete(rows)
        return True

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings | None = None,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        store: MemoryStore | str | Path | None = None,
        namespace: str = "default",
        **kwargs: Any,
    ) -> AiosMemoryVectorStore:
        """A vector store on ``store`` (a path or ``MemoryStore``; required) holding ``texts``."""
        if store is None:
            raise ValueError("from_texts needs store= (a MemoryStore or the path of its directory)")
        vs = cls(store, namespace=namespace, embedding=embedding)
        vs.add_texts(texts, metadatas, ids=ids)
        return vs

    # --- reading -----------------------------------------------------------------------------------
    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        return [self._document(r) for r in self._rows(ids)]

    def similarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter=filter, **kwargs)]

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """``(document, cosine similarity)`` pairs, best first."""
        where, params = compile_filter(dict_filter(filter)) if filter else (None, None)
        hits = self.store.search(
            query, k=k, modality="text", namespace=self.namespace, where=where, params=params
        )
        return [(self._document(m.__dict__), float(m.score)) for m in hits]

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score_by_vector(embedding, k, filter=filter)]

    def similarity_search_with_score_by_vector(
        self, embedding: list[float], k: int = 4, filter: dict[str, Any] | None = None
    ) -> list[tuple[Document, float]]:
        """Rank by a query vector in the store's text space (e.g. from ``self.embeddings``)."""
        where, params = compile_filter(dict_filter(filter)) if filter else (None, [])
        rows = vector_search(self.store, embedding, k, self.namespace, where, params)
        return [(self._document(r), float(r["score"])) for r in rows]

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """``k`` documents chosen by maximal marginal relevance from the ``fetch_k`` closest to ``query``
        (``lambda_mult``: 1 relevance only, 0 diversity only), by the store's ``search(mmr=...)``."""
        return self._mmr(query, None, k, fetch_k, lambda_mult, filter)

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """:meth:`max_marginal_relevance_search` by a query vector in the store's text space."""
        return self._mmr(None, embedding, k, fetch_k, lambda_mult, filter)

    def _mmr(
        self,
        query: str | None,
        vector: list[float] | None,
        k: int,
        fetch_k: int,
        lambda_mult: float,
        filter: dict[str, Any] | None,
    ) -> list[Document]:
        where, params = compile_filter(dict_filter(filter)) if filter else (None, None)
        hits = self.store.search(
            query,
            k=k,
            modality="text",
            namespace=self.namespace,
            where=where,
            params=params,
            vector=vector,
            mmr=lambda_mult,
            fetch_k=max(k, fetch_k) if type(k) is int and type(fetch_k) is int else fetch_k,  # default 20 < k
        )
        return [self._document(m.__dict__) for m in hits]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        return lambda score: min(1.0, max(0.0, score))  # cosine similarity, negatives as 0

    # --- helpers -----------------------------------------------------------------------------------
    def _rows(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        """The namespace's memories whose store id or given id is in ``ids``."""
        wanted = [i for i in ids if isinstance(i, str)]
        if not wanted:
            return []
        return select(
            self.store,
            self.namespace,
            "list_contains(?::VARCHAR[], id) OR list_contains(?::VARCHAR[], json_extract_string(metadata, '$.lc_id'))",
            [wanted, wanted],
        )

    def _resolve(self, ids: Sequence[str]) -> list[str]:
        return [r["id"] for r in self._rows(ids)]

    @staticmethod
    def _document(row: dict[str, Any]) -> Document:
        meta = row["metadata"] if isinstance(row.get("metadata"), dict) else metadata_of(row)
        meta = dict(meta)
        given = meta.pop(ID_KEY, None)
        return Document(id=given or row["id"], page_content=row["content"] or "", metadata=meta)
