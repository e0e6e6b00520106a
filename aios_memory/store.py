"""``MemoryStore``: the public API. Items go provider → Arrow batch → one atomic commit.

A store is a directory (see :mod:`aios_memory.storage`) holding one table per modality. Reads use the
newest committed version at the time of the call unless the store is pinned with ``checkout``.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aios_memory.crossmodal import CrossModalMixin
from aios_memory.errors import (
    InvalidInputError,
    MemoryNotFoundError,
    ProviderError,
    ProviderMismatchError,
    ProviderNotFoundError,
    QueryError,
    StoreCorruptError,
)
from aios_memory.home import default_store_path
from aios_memory.modality import Item, prepare
from aios_memory.plugins import get_provider, get_providers
from aios_memory.provider import MODALITIES, EmbeddingProvider
from aios_memory.query import Params, connect, run, search_sql, vector_columns, view_name
from aios_memory.schema import EXTRA_COLUMNS, TEXT_COLUMN, base_schema
from aios_memory.storage import Fragment, Manifest, Storage, TableState

# The provider a modality gets when the store has no table for it yet and the caller names none.
DEFAULT_PROVIDERS = {"text": "minilm-l6-v2", "image": "clip-vit-b-32", "audio": "whisper-base"}
MAX_K = 10_000
EMBED_BATCH = 64


@dataclass
class Memory:
    id: str
    modality: str
    namespace: str
    created_at: dt.datetime
    content: str | None = None
    source: str | None = None
    media_type: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    provider: str = ""
    updated_at: dt.datetime | None = None
    score: float | None = None
    media: bytes | None = field(default=None, repr=False)
    extra: dict[str, Any] = field(default_factory=dict)  # modality columns: start_s, end_s, transcript


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _check_namespace(namespace: Any) -> str:
    if not isinstance(namespace, str) or not namespace or len(namespace) > 256 or "\x00" in namespace:
        raise InvalidInputError(
            f"namespace must be a non-empty string of at most 256 characters, got {namespace!r}"
        )
    return namespace


def _metadata_json(metadata: Any) -> str:
    if metadata is None:
        return "{}"
    if not isinstance(metadata, Mapping):
        raise InvalidInputError(f"metadata must be a dict, got {type(metadata).__name__}")
    try:
        return json.dumps(dict(metadata), ensure_ascii=False, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"metadata must be JSON-serialisable: {exc}") from exc


class MemoryStore(CrossModalMixin):
    """A directory of multimodal memories. ``MemoryStore()`` opens the embedded default store."""

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        providers: Mapping[str, str] | None = None,
        create: bool = True,
        lock_timeout: float = 60.0,
    ) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        self._storage = Storage(self.path, create=create, lock_timeout=lock_timeout)
        for modality in providers or {}:
            if modality not in MODALITIES:
                raise InvalidInputError(f"unknown modality {modality!r} in providers=")
        self._chosen = dict(providers or {})
        self._pinned: int | None = None
        self._manifest()  # fail now, not later, on a damaged manifest

    # --- versions ----------------------------------------------------------------------------------
    @property
    def version(self) -> int:
        return self._manifest().version

    def checkout(self, version: int | None) -> None:
        """Pin reads to ``version`` (``None``: follow the newest again)."""
        if version is not None:
            self._storage.read_manifest(version)
        self._pinned = version

    def _manifest(self) -> Manifest:
        return self._storage.read_manifest(self._pinned)

    # --- providers ---------------------------------------------------------------------------------
    def provider_for(self, modality: str) -> EmbeddingProvider:
        """The provider of ``modality``'s table: the one it was built with, else the chosen/default one."""
        if modality not in MODALITIES:
            raise InvalidInputError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
        state = self._manifest().tables.get(modality)
        chosen = self._chosen.get(modality)
        if chosen is not None:
            get_provider(chosen)  # an unknown name is a ProviderNotFoundError, whatever the table holds
        if state is not None:
            if chosen is not None and chosen != state.provider:
                raise ProviderMismatchError(
                    f"{modality} memories in {self.path} were embedded with {state.provider!r}, not {chosen!r}; "
                    f"open the store with providers={{'{modality}': '{state.provider}'}} or re-embed into a new store"
                )
            provider = get_provider(state.provider)
            if provider.fingerprint() != state.fingerprint:
                raise ProviderMismatchError(
                    f"{modality} memories were embedded with {state.fingerprint}, but provider {provider.name!r} "
                    f"now reports {provider.fingerprint()}; re-embed into a new store"
                )
            return provider
        if chosen is not None:
            provider = get_provider(chosen)
        else:
            registered = get_providers()
            default = DEFAULT_PROVIDERS[modality]
            if default in registered:
                provider = registered[default]
            else:
                candidates = sorted(n for n, p in registered.items() if p.modality == modality)
                if not candidates:
                    raise ProviderNotFoundError(
                        f"no installed plugin provides {modality} embeddings; registered providers: "
                        f"{', '.join(sorted(registered)) or 'none'}"
                    )
                provider = registered[candidates[0]]
        if provider.modality != modality:
            raise ProviderMismatchError(
                f"provider {provider.name!r} embeds {provider.modality}, not {modality}"
            )
        return provider

    def providers(self) -> list[dict[str, Any]]:
        """Every registered provider, with the modality tables of this store that use it."""
        tables = self._manifest().tables
        out = []
        for p in get_providers().values():
            info = p.info()
            info["tables"] = sorted(m for m, t in tables.items() if t.provider == p.name)
            out.append(info)
        return sorted(out, key=lambda d: d["name"])

    # --- writing -----------------------------------------------------------------------------------
    def add(
        self,
        content: Any,
        *,
        modality: str | None = None,
        namespace: str = "default",
        metadata: Mapping[str, Any] | None = None,
        source: str | None = None,
    ) -> str:
        """Store one memory; returns its id."""
        return self.add_many(
            [content], modality=modality, namespace=namespace, metadata=[metadata], sources=[source]
        )[0]

    def add_many(
        self,
        items: Iterable[Any],
        *,
        modality: str | None = None,
        namespace: str = "default",
        metadata: Mapping[str, Any] | Sequence[Mapping[str, Any] | None] | None = None,
        sources: Sequence[str | None] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[str]:
        """Store many memories in one atomic commit: all become visible together, or none do.

        ``metadata`` is one dict for every item or a list with one per item. ``progress(n)`` is called
        as each batch of ``n`` items has been embedded.
        """
        contents = list(items)
        namespace = _check_namespace(namespace)
        n = len(contents)
        if isinstance(metadata, Mapping) or metadata is None:
            metas = [_metadata_json(metadata)] * n
        else:
            metas = [_metadata_json(m) for m in metadata]
            if len(metas) != n:
                raise InvalidInputError(f"got {len(metas)} metadata entries for {n} items")
        srcs = list(sources) if sources is not None else [None] * n
        if len(srcs) != n:
            raise InvalidInputError(f"got {len(srcs)} sources for {n} items")
        if n == 0:
            return []
        prepared = [prepare(c, modality, s) for c, s in zip(contents, srcs, strict=True)]
        by_modality: dict[str, list[int]] = {}
        for i, item in enumerate(prepared):
            by_modality.setdefault(item.modality, []).append(i)
        tables: dict[str, pa.Table] = {}
        providers: dict[str, EmbeddingProvider] = {}
        text_providers: dict[str, EmbeddingProvider | None] = {}
        now = _now()
        for mod, idx in by_modality.items():
            provider = providers[mod] = self.provider_for(mod)
            text_providers[mod] = self._text_provider_for(mod)
            # one item may become several rows (long audio: one per 30 s window)
            rows = [(i, payload, cols) for i in idx for payload, cols in provider.expand(prepared[i].payload)]
            last_row = {i: r for r, (i, _, _) in enumerate(rows)}
            vectors, columns = [], []
            for start in range(0, len(rows), EMBED_BATCH):
                chunk = rows[start : start + EMBED_BATCH]
                vecs, cols = provider.embed_with_columns([payload for _, payload, _ in chunk])
                vectors.append(vecs)
                columns.extend({**extra, **c} for (_, _, extra), c in zip(chunk, cols, strict=True))
                if progress is not None:
                    progress(sum(1 for r in range(start, start + len(chunk)) if last_row[rows[r][0]] == r))
            tables[mod] = self._rows(
                mod,
                provider,
                text_providers[mod],
                [prepared[i] for i, _, _ in rows],
                [metas[i] for i, _, _ in rows],
                namespace,
                now,
                vectors,
                columns,
            )

        def build(m: Manifest) -> Manifest:
            for mod, table in tables.items():
                state = self._table_state(m, mod, providers[mod], text_providers[mod])
                state.fragments.append(self._storage.write_fragment(mod, table))
            return m

        self._storage.commit(f"add {n}", build)
        return [i for t in tables.values() for i in t.column("id").to_pylist()]

    def _text_provider_for(self, modality: str) -> EmbeddingProvider | None:
        """The provider that embeds ``modality``'s derived text column (audio transcripts), if any."""
        if modality not in TEXT_COLUMN:
            return None
        state = self._manifest().tables.get(modality)
        if state is not None and state.text_provider is not None:
            return get_provider(state.text_provider)
        if state is not None and state.rows:
            return None  # the table was built without one: keep it consistent
        try:
            return self.provider_for("text")
        except ProviderError:
            return None

    def _table_state(
        self, m: Manifest, modality: str, provider: EmbeddingProvider, text: EmbeddingProvider | None
    ) -> TableState:
        state = m.tables.get(modality)
        text_name, text_dim = (text.name, int(text.dim)) if text is not None else (None, None)
        if state is None:
            state = m.tables[modality] = TableState(
                modality, provider.name, int(provider.dim), provider.fingerprint(), [], text_name, text_dim
            )
        elif (
            state.provider != provider.name
            or state.fingerprint != provider.fingerprint()
            or (state.fragments and state.text_provider != text_name)
        ):
            raise ProviderMismatchError(
                f"another writer created the {modality} table with {state.provider!r} meanwhile; "
                f"this batch was embedded with {provider.name!r} and was not committed"
            )
        state.text_provider, state.text_dim = text_name, text_dim
        return state

    def _rows(
        self,
        modality: str,
        provider: EmbeddingProvider,
        text_provider: EmbeddingProvider | None,
        items: list[Item],
        metas: list[str],
        namespace: str,
        now: dt.datetime,
        vectors: list[Any],
        columns: list[dict[str, Any]],
    ) -> pa.Table:
        import numpy as np

        text_dim = int(text_provider.dim) if text_provider is not None else None
        schema = base_schema(modality, provider.dim, provider.fingerprint(), text_dim)
        allowed = {f.name for f in EXTRA_COLUMNS[modality]}
        for c in columns:
            if set(c) - allowed:
                raise ProviderError(
                    f"provider {provider.name!r} returned unknown columns {sorted(set(c) - allowed)} for "
                    f"{modality} memories (allowed: {sorted(allowed)})"
                )
        n = len(items)
        flat = np.concatenate(vectors).reshape(-1)
        cols: dict[str, Any] = {
            "id": [str(uuid.uuid4()) for _ in range(n)],
            "namespace": [namespace] * n,
            "created_at": [now] * n,
            "updated_at": [None] * n,
            "source": [it.source for it in items],
            "content": [it.content for it in items],
            "media": [it.media for it in items],
            "media_type": [it.media_type for it in items],
            "metadata": metas,
            "provider": [provider.name] * n,
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), int(provider.dim)),
        }
        for name in allowed:
            cols[name] = [c.get(name) for c in columns]
        if modality in TEXT_COLUMN:
            cols[f"{TEXT_COLUMN[modality]}_embedding"] = self._text_vectors(
                [c.get(TEXT_COLUMN[modality]) for c in columns], text_provider
            )
        return pa.table([cols[f.name] for f in schema], schema=schema)

    @staticmethod
    def _text_vectors(texts: list[str | None], provider: EmbeddingProvider | None) -> pa.Array:
        """Embeddings of a derived text column; null where there is no text (silence) or no provider."""
        import numpy as np

        if provider is None:
            return pa.nulls(len(texts), pa.list_(pa.float32()))
        dim = int(provider.dim)
        present = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
        out = np.zeros((len(texts), dim), dtype=np.float32)
        if present:
            out[present] = provider.embed_batch([texts[i] for i in present])
        have = set(present)
        mask = pa.array([i not in have for i in range(len(texts))])
        return pa.FixedSizeListArray.from_arrays(pa.array(out.reshape(-1), pa.float32()), dim, mask=mask)

    def delete(self, ids: str | Iterable[str]) -> int:
        """Delete memories by id in one commit. Unknown ids raise ``MemoryNotFoundError`` and delete nothing."""
        wanted = {ids} if isinstance(ids, str) else set(ids)
        if not wanted:
            return 0

        def build(m: Manifest) -> Manifest:
            found: set[str] = set()
            for mod, state in m.tables.items():
                kept: list[Fragment] = []
                for frag in state.fragments:
                    table = self._read_fragment(frag)
                    hit = pc.is_in(table.column("id"), pa.array(sorted(wanted), pa.string()))
                    n_hit = pc.sum(hit).as_py() or 0
                    if not n_hit:
                        kept.append(frag)
                        continue
                    found.update(pc.filter(table.column("id"), hit).to_pylist())
                    rest = table.filter(pc.invert(hit))
                    if rest.num_rows:
                        kept.append(self._storage.write_fragment(mod, rest))
                state.fragments = kept
            missing = wanted - found
            if missing:
                raise MemoryNotFoundError(
                    f"no memory with id {sorted(missing)[0]!r}"
                    + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                    + "; nothing was deleted"
                )
            return m

        self._storage.commit(f"delete {len(wanted)}", build)
        return len(wanted)

    def update(self, id: str, content: Any = None, *, metadata: Mapping[str, Any] | None = None) -> Memory:
        """Replace a memory's content (re-embedding it) and/or its metadata, keeping its id and namespace."""
        if content is None and metadata is None:
            raise InvalidInputError("update needs new content, new metadata, or both")
        current = self.get(id)
        item = prepare(content, current.modality) if content is not None else None
        meta = _metadata_json(metadata) if metadata is not None else None
        provider = self.provider_for(current.modality)
        vector, columns, text_vec = None, {}, None
        if item is not None:
            pieces = provider.expand(item.payload)
            if len(pieces) != 1:
                raise InvalidInputError(
                    f"the new content becomes {len(pieces)} rows (e.g. audio longer than one window); "
                    "delete the memory and add the content instead"
                )
            payload, columns = pieces[0]
            vecs, cols = provider.embed_with_columns([payload])
            vector, columns = vecs, {**columns, **cols[0]}
            if current.modality in TEXT_COLUMN:
                text_vec = self._text_vectors(
                    [columns.get(TEXT_COLUMN[current.modality])], self._text_provider_for(current.modality)
                )

        def build(m: Manifest) -> Manifest:
            state = m.tables.get(current.modality)
            for pos, frag in enumerate(state.fragments if state else []):
                table = self._read_fragment(frag)
                hit = pc.equal(table.column("id"), id)
                if not (pc.sum(hit).as_py() or 0):
                    continue
                row = table.filter(hit).to_pylist()[0]
                row["updated_at"] = _now()
                if meta is not None:
                    row["metadata"] = meta
                if item is not None:
                    row.update(
                        content=item.content,
                        media=item.media,
                        media_type=item.media_type,
                        source=item.source or row["source"],
                        embedding=vector[0].tolist(),
                        **columns,
                    )
                    if text_vec is not None:
                        row[f"{TEXT_COLUMN[current.modality]}_embedding"] = text_vec.to_pylist()[0]
                new = pa.concat_tables(
                    [table.filter(pc.invert(hit)), pa.Table.from_pylist([row], schema=table.schema)]
                )
                state.fragments[pos] = self._storage.write_fragment(current.modality, new)
                return m
            raise MemoryNotFoundError(f"no memory with id {id!r}; it was deleted meanwhile")

        self._storage.commit("update 1", build)
        return self.get(id)

    def compact(self, modality: str | None = None) -> dict[str, int]:
        """Merge each table's fragments into one; old files stay until ``cleanup`` (readers may use them)."""
        merged: dict[str, int] = {}

        def build(m: Manifest) -> Manifest | None:
            for mod, state in m.tables.items():
                if (modality is None or mod == modality) and len(state.fragments) > 1:
                    table = pa.concat_tables([self._read_fragment(f) for f in state.fragments])
                    merged[mod] = len(state.fragments)
                    state.fragments = [self._storage.write_fragment(mod, table)] if table.num_rows else []
            return m if merged else None

        self._storage.commit("compact", build)
        return merged

    def cleanup(self, older_than: float = 3600.0) -> dict[str, int]:
        """Remove old versions and files no retained version names (older than ``older_than`` seconds)."""
        return self._storage.cleanup(older_than)

    def _read_fragment(self, frag: Fragment) -> pa.Table:
        try:
            return pq.read_table(self._storage.abspath(frag))
        except (FileNotFoundError, pa.ArrowException, OSError) as exc:
            raise StoreCorruptError(
                f"fragment {frag.path} of {self.path} is missing or unreadable ({exc})"
            ) from exc

    # --- reading -----------------------------------------------------------------------------------
    def _connect(self, manifest: Manifest) -> Any:
        embedders = {}
        try:
            text = self.provider_for("text")
            embedders["embed_text"] = (text.embed_batch, int(text.dim))
        except (ProviderNotFoundError, ProviderMismatchError):
            pass
        return connect(self._storage, manifest, embedders)

    def sql(self, query: str, params: Params = None) -> pa.Table:
        """Run read-only SQL over ``text_memories``, ``image_memories``, ``audio_memories``; returns Arrow."""
        con = self._connect(self._manifest())
        try:
            return run(con, query, params)
        finally:
            con.close()

    def get(self, id: str) -> Memory:
        if not isinstance(id, str):
            raise InvalidInputError(f"memory ids are strings, got {type(id).__name__}")
        m = self._manifest()
        con = connect(self._storage, m)
        try:
            for mod in m.tables:
                exclude = ", ".join(vector_columns(mod))
                sql = f"SELECT * EXCLUDE ({exclude}) FROM {view_name(mod)} WHERE id = ?"  # noqa: S608
                rows = run(con, sql, [id]).to_pylist()
                if rows:
                    return self._memory(mod, rows[0])
        finally:
            con.close()
        raise MemoryNotFoundError(f"no memory with id {id!r}")

    def search(
        self,
        query: Any,
        k: int = 10,
        *,
        modality: str | None = None,
        namespace: str | None = None,
        where: str | None = None,
        params: Params = None,
    ) -> list[Memory]:
        """Rank memories by cosine similarity to ``query`` (text, image or audio).

        ``modality`` is the table searched (default: the query's own modality, so text searches text).
        ``where`` is an SQL predicate over the table's columns whose values come from ``params``.
        """
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise InvalidInputError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
        if namespace is not None:
            _check_namespace(namespace)
        if where is not None and (not isinstance(where, str) or not where.strip()):
            raise QueryError("where must be a non-empty SQL predicate string")
        if params is not None and where is None:
            raise QueryError("params were given without a where predicate")
        item = prepare(query)
        target = modality or item.modality
        provider = self.provider_for(target)
        column, dim = "embedding", int(provider.dim)
        if (
            item.modality != target
            and item.modality not in provider.query_modalities
            and target in TEXT_COLUMN
        ):
            # e.g. text -> audio: rank by the transcript's embedding from the text provider
            text = self._text_provider_for(target)
            if text is None or item.modality != text.modality:
                provider.embed_query(item.payload, item.modality)  # raises the ModalityError that explains
            assert text is not None
            column, dim = f"{TEXT_COLUMN[target]}_embedding", int(text.dim)
            vector = text.embed_query(item.payload, item.modality)
        else:
            vector = provider.embed_query(item.payload, item.modality)
        m = self._manifest()
        if target not in m.tables:
            return []
        named = isinstance(params, Mapping)
        sql = search_sql(target, dim, where, named, column)
        qv = vector.astype("float32").tolist()
        if named:
            all_params: Any = {**dict(params or {}), "aiosm_q": qv, "aiosm_ns": namespace, "aiosm_k": k}
        else:
            all_params = [*(params or []), qv, namespace, namespace, k]
        con = self._connect(m)
        try:
            rows = run(con, sql, all_params).to_pylist()
        finally:
            con.close()
        return [self._memory(target, r) for r in rows]

    def stats(self) -> dict[str, Any]:
        m = self._manifest()
        tables = {}
        for mod, state in m.tables.items():
            tables[mod] = {
                "provider": state.provider,
                "dim": state.dim,
                "memories": state.rows,
                "fragments": len(state.fragments),
                "bytes": sum(f.nbytes for f in state.fragments),
            }
        namespaces: dict[str, int] = {}
        if m.tables:
            con = connect(self._storage, m)
            try:
                union = " UNION ALL ".join(f"SELECT namespace FROM {view_name(mod)}" for mod in m.tables)  # noqa: S608
                sql = f"SELECT namespace, count(*) AS n FROM ({union}) GROUP BY 1 ORDER BY 1"  # noqa: S608
                namespaces = {r["namespace"]: r["n"] for r in run(con, sql).to_pylist()}
            finally:
                con.close()
        return {"path": str(self.path), "version": m.version, "tables": tables, "namespaces": namespaces}

    def verify(self) -> dict[str, Any]:
        """Integrity check of the newest version: every fragment readable, row counts and schemas right."""
        m = self._manifest()
        problems: list[str] = []
        for state in m.tables.values():
            for frag in state.fragments:
                try:
                    meta = pq.read_metadata(self._storage.abspath(frag))
                    if meta.num_rows != frag.rows:
                        problems.append(f"{frag.path}: {meta.num_rows} rows, manifest says {frag.rows}")
                    field_type = meta.schema.to_arrow_schema().field("embedding").type
                    if getattr(field_type, "list_size", None) != state.dim:
                        problems.append(f"{frag.path}: embedding type {field_type}, expected dim {state.dim}")
                except (FileNotFoundError, pa.ArrowException, OSError, KeyError) as exc:
                    problems.append(f"{frag.path}: unreadable ({exc})")
        referenced: set[str] = set()
        for v in self._storage.versions():
            try:
                referenced |= self._storage.read_manifest(v).fragment_paths()
            except StoreCorruptError as exc:
                problems.append(str(exc))
        orphans = self._storage.unreferenced_files(referenced)
        return {"version": m.version, "ok": not problems, "problems": problems, "orphans": orphans}

    @staticmethod
    def _memory(modality: str, row: dict[str, Any]) -> Memory:
        return Memory(
            id=row["id"],
            modality=modality,
            namespace=row["namespace"],
            created_at=row["created_at"],
            updated_at=row.get("updated_at"),
            content=row.get("content"),
            source=row.get("source"),
            media_type=row.get("media_type"),
            metadata=json.loads(row["metadata"]) if row.get("metadata") else {},
            provider=row.get("provider", ""),
            score=row.get("score"),
            media=row.get("media"),
            extra={f.name: row.get(f.name) for f in EXTRA_COLUMNS[modality]},
        )

    def __repr__(self) -> str:
        return f"MemoryStore({str(self.path)!r}, version={self.version})"
