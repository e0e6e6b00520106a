"""LlamaIndex adapters: ``AiosMemoryVectorStore`` (a ``BasePydanticVectorStore``) and ``AiosMemoryEmbedding``
(a ``BaseEmbedding`` over a registered provider, MiniLM by default).

    from llama_index.core import StorageContext, VectorStoreIndex
    from aios_memory.integrations.llama_index import AiosMemoryEmbedding, AiosMemoryVectorStore
    vector_store = AiosMemoryVectorStore("agent-memory", namespace="user-42")
    index = VectorStoreIndex(nodes, storage_context=StorageContext.from_defaults(vector_store=vector_store),
                             embed_model=AiosMemoryEmbedding())

A node's text is the memory's content; the rest of the node (id, relationships, ref_doc_id, metadata)
is kept in the memory's metadata the way LlamaIndex's own stores keep it (``node_to_metadata_dict``), so
nodes round-trip. The store embeds texts with its own text provider; pass ``AiosMemoryEmbedding()`` as
the index's ``embed_model`` so query vectors live in the same space (and nothing calls a remote model),
or pass the index's own model as ``AiosMemoryVectorStore(..., embed_model=...)``: it is then wrapped as a
foreign provider (``aios_memory.foreign``) that embeds the store's text table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aios_memory.integrations._common import (
    add_kwargs,
    compile_filter,
    metadata_of,
    require,
    select,
    store_id,
    vector_search,
    with_text_provider,
)

try:
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.bridge.pydantic import PrivateAttr
    from llama_index.core.schema import BaseNode, MetadataMode
    from llama_index.core.vector_stores.types import (
        BasePydanticVectorStore,
        FilterCondition,
        FilterOperator,
        MetadataFilters,
        VectorStoreQuery,
        VectorStoreQueryMode,
        VectorStoreQueryResult,
    )
    from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise require("llama_index.core", "llama-index") from exc

from aios_memory.errors import InvalidInputError
from aios_memory.memory import check_namespace
from aios_memory.store import MemoryStore

NODE_ID_KEY = "node_id"  # metadata key holding the node's own id, for lookups by node id
DEFAULT_TEXT_PROVIDER = "minilm-l6-v2"
_OPS = {
    FilterOperator.EQ: "eq",
    FilterOperator.NE: "ne",
    FilterOperator.GT: "gt",
    FilterOperator.GTE: "gte",
    FilterOperator.LT: "lt",
    FilterOperator.LTE: "lte",
    FilterOperator.IN: "in",
    FilterOperator.NIN: "nin",
    FilterOperator.TEXT_MATCH: "text_match",
}


def filter_tree(filters: MetadataFilters) -> Any:
    """LlamaIndex ``MetadataFilters`` (nested, AND/OR/NOT) as the adapters' filter tree."""
    children = []
    for f in filters.filters:
        if isinstance(f, MetadataFilters):
            children.append(filter_tree(f))
            continue
        if f.operator not in _OPS:
            supported = ", ".join(op.value for op in _OPS)
            raise InvalidInputError(
                f"filter operator {f.operator.value!r} is not supported; supported: {supported}"
            )
        children.append(("cmp", f.key, _OPS[f.operator], f.value))
    condition = filters.condition or FilterCondition.AND
    if condition == FilterCondition.NOT:
        return ("not", ("and", children))
    return ("or" if condition == FilterCondition.OR else "and", children)


class AiosMemoryEmbedding(BaseEmbedding):
    """LlamaIndex embeddings from an aios-memory text provider (default MiniLM-L6-v2, 384-d), locally."""

    provider_name: str = DEFAULT_TEXT_PROVIDER
    _provider: Any = PrivateAttr()

    def __init__(self, provider_name: str = DEFAULT_TEXT_PROVIDER, **kwargs: Any) -> None:
        from aios_memory.plugins import get_provider

        super().__init__(provider_name=provider_name, model_name=provider_name, **kwargs)
        self._provider = get_provider(provider_name)
        if self._provider.modality != "text":
            raise InvalidInputError(f"provider {provider_name!r} embeds {self._provider.modality}, not text")

    @classmethod
    def class_name(cls) -> str:
        return "AiosMemoryEmbedding"

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._provider.embed_query(query, "text").tolist()

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._provider.embed_batch([text])[0].tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._provider.embed_batch(list(texts)).tolist()


class AiosMemoryVectorStore(BasePydanticVectorStore):
    """A LlamaIndex vector store over the text memories of one namespace of a ``MemoryStore``.

    Queries rank by cosine similarity (``similarities``); ``filters`` accept the operators ==, !=, >, >=,
    <, <=, in, nin and text_match, nested with AND / OR / NOT, compiled to parameterised SQL.
    """

    stores_text: bool = True
    flat_metadata: bool = False
    namespace: str = "default"
    _store: MemoryStore = PrivateAttr()

    def __init__(
        self,
        store: MemoryStore | str | Path,
        *,
        namespace: str = "default",
        embed_model: BaseEmbedding | None = None,
        **kwargs: Any,
    ) -> None:
        """``embed_model``: the index's embedding model when it is not ``AiosMemoryEmbedding``: wrapped as
        a foreign provider (``aios_memory.foreign``) that embeds this store's text table, so the store's
        vectors and the index's query vectors come from the same model."""
        super().__init__(namespace=check_namespace(namespace), **kwargs)
        if embed_model is not None and not isinstance(embed_model, AiosMemoryEmbedding):
            from aios_memory.foreign import register_foreign

            self._store = with_text_provider(store, register_foreign(embed_model))
            return
        self._store = store if isinstance(store, MemoryStore) else MemoryStore(store)
        if embed_model is not None and self._store.provider_for("text").name != embed_model.provider_name:
            raise InvalidInputError(
                f"the store embeds text with {self._store.provider_for('text').name!r}, "
                f"not {embed_model.provider_name!r}"
            )

    @classmethod
    def class_name(cls) -> str:
        return "AiosMemoryVectorStore"

    @property
    def client(self) -> MemoryStore:
        return self._store

    # --- writing -----------------------------------------------------------------------------------
    def add(self, nodes: Any, **kwargs: Any) -> list[str]:
        """Store nodes (their text re-embedded by the store's provider) in one commit; returns node ids.
        A node whose id is already in the namespace is replaced."""
        nodes = list(nodes)
        if not nodes:
            return []
        texts, metas = [], []
        for node in nodes:
            meta = node_to_metadata_dict(node, remove_text=True, flat_metadata=self.flat_metadata)
            meta[NODE_ID_KEY] = node.node_id
            texts.append(node.get_content(metadata_mode=MetadataMode.NONE))
            metas.append(meta)
        if hasattr(self._store, "upsert_many"):  # one atomic upsert under the writers' lock
            keys = [store_id("li", self.namespace, n.node_id) for n in nodes]
            legacy = [r for r in self._memory_ids(node_ids=[n.node_id for n in nodes]) if r not in set(keys)]
            self._store.upsert_many(keys, texts, namespace=self.namespace, metadata=metas)
            if legacy:  # nodes written before upserts (random memory ids): replaced by a second commit
                self._store.delete(legacy, missing_ok=True)
            return [n.node_id for n in nodes]
        old = self._memory_ids(node_ids=[n.node_id for n in nodes])
        self._store.add_many(texts, namespace=self.namespace, metadata=metas, **add_kwargs(self._store))
        if old:
            self._store.delete(old)
        return [n.node_id for n in nodes]

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node of the document ``ref_doc_id``."""
        ids = [r["id"] for r in select(self._store, self.namespace, *self._ref_doc_where([ref_doc_id]))]
        if ids:
            self._store.delete(ids)

    def delete_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None, **delete_kwargs: Any
    ) -> None:
        ids = self._memory_ids(node_ids=node_ids, filters=filters)
        if ids:
            self._store.delete(ids)

    def clear(self) -> None:
        """Delete every node of this namespace."""
        ids = [r["id"] for r in select(self._store, self.namespace)]
        if ids:
            self._store.delete(ids)

    # --- reading -----------------------------------------------------------------------------------
    def get_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None
    ) -> list[BaseNode]:
        where, params = self._where(node_ids=node_ids, filters=filters)
        return [self._node(r) for r in select(self._store, self.namespace, where, params)]

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """The ``similarity_top_k`` nodes closest to ``query_embedding`` (or, without one, ``query_str``).

        ``VectorStoreQueryMode.MMR`` re-ranks by maximal marginal relevance with λ = ``mmr_threshold``
        (of the query, else of ``kwargs``; default 0.5, 1 = relevance only) over a pool of
        ``mmr_prefetch_k`` (or ``mmr_prefetch_factor`` × k) candidates, default the store's; the
        similarities stay the exact cosines."""
        if query.mode not in (VectorStoreQueryMode.DEFAULT, VectorStoreQueryMode.MMR):
            raise InvalidInputError(
                f"query mode {getattr(query.mode, 'value', query.mode)!r} is not supported; "
                "use the default or the mmr mode"
            )
        where, params = self._where(node_ids=query.node_ids, filters=query.filters, doc_ids=query.doc_ids)
        k = query.similarity_top_k
        if query.mode == VectorStoreQueryMode.MMR:
            hits = self._mmr(query, k, where, params, kwargs)
        elif query.query_embedding is not None:
            rows = vector_search(self._store, query.query_embedding, k, self.namespace, where, params)
            hits = [(r, float(r["score"])) for r in rows]
        elif query.query_str:
            found = self._store.search(
                query.query_str,
                k=k,
                modality="text",
                namespace=self.namespace,
                where=where,
                params=params or None,
            )
            hits = [(m.__dict__, float(m.score)) for m in found]
        else:
            raise InvalidInputError("a VectorStoreQuery needs query_embedding or query_str")
        nodes = [self._node(row) for row, _ in hits]
        return VectorStoreQueryResult(
            nodes=nodes, similarities=[s for _, s in hits], ids=[n.node_id for n in nodes]
        )

    def _mmr(
        self, query: VectorStoreQuery, k: int, where: str | None, params: list[Any], kwargs: dict[str, Any]
    ) -> list[tuple[dict[str, Any], float]]:
        lam = query.mmr_threshold if query.mmr_threshold is not None else kwargs.get("mmr_threshold")
        fetch_k = kwargs.get("mmr_prefetch_k")
        factor = kwargs.get("mmr_prefetch_factor")
        if fetch_k is None and factor is not None:
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor >= 1:
                raise InvalidInputError(f"mmr_prefetch_factor must be a number >= 1, got {factor!r}")
            fetch_k = int(k * factor)
        if query.query_embedding is None and not query.query_str:
            raise InvalidInputError("a VectorStoreQuery needs query_embedding or query_str")
        found = self._store.search(
            None if query.query_embedding is not None else query.query_str,
            k=k,
            modality="text",
            namespace=self.namespace,
            where=where,
            params=params or None,
            vector=query.query_embedding,
            mmr=0.5 if lam is None else lam,
            fetch_k=fetch_k,
        )
        return [(m.__dict__, float(m.score)) for m in found]

    # --- helpers -----------------------------------------------------------------------------------
    @staticmethod
    def _ref_doc_where(ref_doc_ids: list[str]) -> tuple[str, list[Any]]:
        return "list_contains(?::VARCHAR[], json_extract_string(metadata, '$.ref_doc_id'))", [
            list(ref_doc_ids)
        ]

    def _where(
        self,
        *,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        doc_ids: list[str] | None = None,
    ) -> tuple[str | None, list[Any]]:
        parts: list[str] = []
        params: list[Any] = []
        if node_ids:  # LlamaIndex passes [] for no restriction
            parts.append("list_contains(?::VARCHAR[], json_extract_string(metadata, '$.node_id'))")
            params.append(list(node_ids))
        if doc_ids:
            sql, ps = self._ref_doc_where(doc_ids)
            parts.append(sql)
            params.extend(ps)
        if filters is not None and filters.filters:
            sql, ps = compile_filter(filter_tree(filters))
            parts.append(sql)
            params.extend(ps)
        return (" AND ".join(f"({p})" for p in parts) if parts else None), params

    def _memory_ids(self, **selection: Any) -> list[str]:
        where, params = self._where(**selection)
        if where is None:
            return []
        return [r["id"] for r in select(self._store, self.namespace, where, params)]

    @staticmethod
    def _node(row: dict[str, Any]) -> BaseNode:
        meta = row["metadata"] if isinstance(row.get("metadata"), dict) else metadata_of(row)
        return metadata_dict_to_node(meta, text=row.get("content") or "")
