"""``MemoryStore``: the public API. Items go provider → Arrow batch → one atomic commit.

A store is a directory (see :mod:`aios_memory.storage`) holding one table per modality. Reads use the
newest committed version at the time of the call unless the store is pinned with ``checkout``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from aios_memory.crossmodal import CrossModalMixin
from aios_memory.errors import (
    InvalidInputError,
    MemoryNotFoundError,
    ProviderMismatchError,
    ProviderNotFoundError,
    QueryError,
    StoreCorruptError,
)
from aios_memory.home import default_store_path
from aios_memory.memory import Memory, check_namespace, check_utf8, memory_from_row
from aios_memory.modality import prepare
from aios_memory.plugins import get_provider, get_providers
from aios_memory.provider import MODALITIES, EmbeddingProvider
from aios_memory.query import Params, check_params, connect, run, search_sql, vector_columns, view_name
from aios_memory.schema import TEXT_COLUMN
from aios_memory.storage import Manifest, Storage
from aios_memory.writes import WritesMixin

# The provider a modality gets when the store has no table for it yet and the caller names none.
DEFAULT_PROVIDERS = {"text": "minilm-l6-v2", "image": "clip-vit-b-32", "audio": "whisper-base"}
MAX_K = 10_000


class MemoryStore(WritesMixin, CrossModalMixin):
    """A directory of multimodal memories. ``MemoryStore()`` opens the embedded default store."""

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        providers: Mapping[str, str] | None = None,
        create: bool = True,
        lock_timeout: float = 60.0,
        dedupe: float | bool | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        self._storage = Storage(self.path, create=create, lock_timeout=lock_timeout)
        for modality in providers or {}:
            if modality not in MODALITIES:
                raise InvalidInputError(f"unknown modality {modality!r} in providers=")
        self._chosen = dict(providers or {})
        self._pinned: int | None = None
        self._dedupe: float | bool | None = None
        self._dedupe = self._dedupe_threshold(dedupe)  # the default of add(dedupe=None); validated now
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
            candidates = sorted(n for n, p in registered.items() if p.modality == modality)
            if not candidates:
                raise ProviderNotFoundError(
                    f"no installed plugin provides {modality} embeddings; registered providers: "
                    f"{', '.join(sorted(registered)) or 'none'}"
                )
            # the default provider, unless its weights are missing and another one is ready to embed
            default = DEFAULT_PROVIDERS[modality]
            ready = [n for n in candidates if registered[n].is_installed()]
            if default in registered and (registered[default].is_installed() or not ready):
                provider = registered[default]
            else:
                provider = registered[(ready or candidates)[0]]
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
    def _connect(self, manifest: Manifest, namespace: str | None = None, sandboxed: bool = True) -> Any:
        embedders = {}
        try:
            text = self.provider_for("text")
            embedders["embed_text"] = (text.embed_batch, int(text.dim))
        except (ProviderNotFoundError, ProviderMismatchError):
            pass
        return connect(self._storage, manifest, embedders, namespace, sandboxed)

    def sql(self, query: str, params: Params = None) -> pa.Table:
        """Run read-only SQL over ``text_memories``, ``image_memories``, ``audio_memories``; returns Arrow."""
        con = self._connect(self._manifest())
        try:
            return run(con, query, params)
        finally:
            con.close()

    def connection(self, *, allow_file_access: bool = False) -> Any:
        """A DuckDB connection over this version's memory views, for SQL beyond one read-only statement.

        The caller closes it. By default it cannot read or write files, like ``sql()``; with
        ``allow_file_access=True`` (an explicit choice) it can, e.g. to ``COPY`` results out. Either way
        the memories cannot be changed through it: writes go through the ``MemoryStore`` API only.
        """
        return self._connect(self._manifest(), sandboxed=not allow_file_access)

    def get(self, id: str) -> Memory:
        if not isinstance(id, str):
            raise InvalidInputError(f"memory ids are strings, got {type(id).__name__}")
        check_utf8(id, "a memory id")
        m = self._manifest()
        con = connect(self._storage, m)
        try:
            for mod in m.tables:
                exclude = ", ".join(vector_columns(mod))
                sql = f"SELECT * EXCLUDE ({exclude}) FROM {view_name(mod)} WHERE id = ?"  # noqa: S608
                rows = run(con, sql, [id]).to_pylist()
                if rows:
                    return memory_from_row(mod, rows[0])
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
            check_namespace(namespace)
        if where is not None and (not isinstance(where, str) or not where.strip()):
            raise QueryError("where must be a non-empty SQL predicate string")
        if params is not None and where is None:
            raise QueryError("params were given without a where predicate")
        check_params(params)
        if isinstance(params, Mapping) and any(str(name).startswith("aiosm_") for name in params):
            raise QueryError("parameter names starting with 'aiosm_' are reserved for the store's own")
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
        if target not in m.tables or not m.tables[target].fragments:
            return []
        named = isinstance(params, Mapping)
        sql = search_sql(target, dim, where, named, column)
        qv = vector.astype("float32").tolist()
        if named:
            all_params: Any = {**dict(params or {}), "aiosm_q": qv, "aiosm_ns": namespace, "aiosm_k": k}
        else:
            all_params = [*(params or []), qv, namespace, namespace, k]
        con = self._connect(m, namespace)  # views hold only this namespace: where cannot reach others
        try:
            rows = run(con, sql, all_params).to_pylist()
        finally:
            con.close()
        return [memory_from_row(target, r) for r in rows]

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

    def __repr__(self) -> str:
        return f"MemoryStore({str(self.path)!r}, version={self.version})"
