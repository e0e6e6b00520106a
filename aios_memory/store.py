"""``MemoryStore``: the public API. Items go provider → Arrow batch → one atomic commit.

A store is a directory (see :mod:`aios_memory.storage`) holding one table per modality. Reads use the
newest committed version at the time of the call unless the store is pinned with ``checkout``.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from aios_memory.crossmodal import CrossModalMixin
from aios_memory.dedupe import EXACT, policy
from aios_memory.errors import (
    InvalidInputError,
    MemoryNotFoundError,
    ProviderError,
    ProviderMismatchError,
    ProviderNotFoundError,
    QueryError,
    QueryTimeoutError,
    StoreCorruptError,
    VersionNotFoundError,
)
from aios_memory.fusion import composite, fused_search
from aios_memory.given import query_of
from aios_memory.home import default_store_path
from aios_memory.identity import same_text_model
from aios_memory.memory import Memory, check_utf8, memory_from_row, with_metadata_filter
from aios_memory.plugins import get_provider, get_providers
from aios_memory.provider import MODALITIES, EmbeddingProvider
from aios_memory.query import Deadline, Params, connect, run, vector_columns, view_name
from aios_memory.reembed import ReembedMixin
from aios_memory.schema import TEXT_COLUMN
from aios_memory.scope import FULL, Scope
from aios_memory.settings import record_models
from aios_memory.storage import DEFAULT_RETENTION, Manifest, Storage
from aios_memory.storage.s3config import is_remote
from aios_memory.timetravel import VersionsMixin
from aios_memory.vectors import CACHE, ids_of, namespace_rows, nearest
from aios_memory.writes import WritesMixin

READ_RETRIES = 8  # a read whose version cleanup removed mid-call starts again on the newest this often


class MemoryStore(WritesMixin, CrossModalMixin, VersionsMixin, ReembedMixin):
    """A directory of multimodal memories. ``MemoryStore()`` opens the embedded default store;
    ``as_of`` (a version or a datetime) opens it read-only as it was then."""

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        providers: Mapping[str, str] | None = None,
        storage_options: Mapping[str, Any] | None = None,
        create: bool = True,
        lock_timeout: float = 60.0,
        dedupe: float | bool | str | None = None,
        retention: float | None = None,
        as_of: int | dt.datetime | None = None,
    ) -> None:
        # a local directory, or an object-storage location kept as the URI it is ("s3://bucket/prefix")
        self.path: Path | str = path if is_remote(path) else Path(path or default_store_path())  # type: ignore[arg-type]
        if retention is not None and (
            isinstance(retention, bool) or not isinstance(retention, (int, float)) or not retention >= 0
        ):
            raise InvalidInputError(f"retention must be a number of seconds >= 0, got {retention!r}")
        self._retention = None if retention is None else float(retention)  # None: the store's setting
        self._storage = Storage(
            self.path,
            storage_options=storage_options,
            create=create and as_of is None,  # a view of the past never creates a store
            lock_timeout=lock_timeout,
            retention=DEFAULT_RETENTION if retention is None else retention,
        )
        if self._storage.created:  # where its models are, for a process given nothing but the path
            record_models(self._storage.root)
        self._seen_version = -1  # the newest version this object has read (its cache entries follow it)
        self._read_version = threading.local()
        for modality in providers or {}:
            if modality not in MODALITIES:
                raise InvalidInputError(f"unknown modality {modality!r} in the providers setting")
        self._chosen = dict(providers or {})
        self._pinned: int | None = None
        self._scope: Scope = FULL
        self._dedupe = policy(dedupe, EXACT)  # the default of add(dedupe=None); validated now
        self._manifest()  # fail now, not later, on a damaged manifest
        if as_of is not None:  # a read-only view of the store as it was (see aios_memory.timetravel)
            self._open_as_of(as_of)

    # --- scope -------------------------------------------------------------------------------------
    @property
    def scope(self) -> Scope:
        """What this handle may see and do (an in-process store: everything)."""
        return self._scope

    def scoped(self, scope: Scope) -> MemoryStore:
        """The same store seen through ``scope`` (narrowed with this handle's own): reads hold only the
        scope's namespaces, writes outside it raise ``AccessDeniedError``. Shares files, caches, models."""
        if not isinstance(scope, Scope):
            raise InvalidInputError(f"scope must be an aios_memory.scope.Scope, got {type(scope).__name__}")
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view._read_version = threading.local()
        view._scope = self._scope.narrow(scope)
        return view

    # --- versions (and version, checkout, versions, retention: VersionsMixin) ------------------------
    def files(self, modality: str | None = None, *, version: int | None = None) -> list[str]:
        """The committed Parquet fragments of ``version`` (default: the pinned or newest one), as URIs
        other engines open (absolute paths locally, ``s3://`` on object storage): exactly the rows that
        version holds, no superseded fragment, no sidecar. ``modality=None``: every table's."""
        self._scope.check_admin("list the store's files")  # fragments hold every namespace's rows
        if modality is not None and modality not in MODALITIES:
            raise InvalidInputError(f"unknown modality {modality!r}; one of {', '.join(MODALITIES)}")
        m = self._storage.read_manifest(self._pinned if version is None else version)
        tables = sorted((mod, t) for mod, t in m.tables.items() if modality in (None, mod))
        return [self._storage.uri(f.path) for _mod, t in tables for f in t.fragments]

    def _manifest(self) -> Manifest:
        m = self._storage.read_manifest(self._pinned)
        self._read_version.v = m.version  # which version this thread's read is using (see _reading)
        if self._pinned is None and m.version > self._seen_version:
            self._seen_version = m.version
            self._let_go(m)
        return m

    def _let_go(self, newest: Manifest) -> None:
        """Release cached handles and maps of files ``newest`` no longer names (superseded, deleted)."""
        live = {self._storage.uri(p) for p in newest.fragment_paths()}
        CACHE.retain(str(self._storage.root), live)

    def _reading(self, read: Callable[[], Any]) -> Any:
        """Run a read; if the version it read was removed under it by ``cleanup`` (a file it named is
        gone), follow the newest version again (unpinned) or say that the pinned version is gone."""
        for _attempt in range(READ_RETRIES):
            self._read_version.v = None
            try:
                return read()
            except QueryTimeoutError:
                raise  # out of time: not a lost version, and never run again with the time it has left
            except (StoreCorruptError, QueryError) as exc:
                used = self._read_version.v
                if self._pinned is not None:
                    if not self._storage.has_version(self._pinned):
                        self._let_go(self._storage.read_manifest())
                        raise self._storage.version_gone(self._pinned) from exc
                    raise
                if used is None or self._storage.has_version(used):
                    raise  # the version is still there: the damage is real
            except VersionNotFoundError:
                if self._pinned is not None:
                    self._let_go(self._storage.read_manifest())
                    raise
        raise VersionNotFoundError(
            f"store {self.path}: cleanup removed each of the {READ_RETRIES} versions this read used before "
            "it finished; the retention period is shorter than a read (keep versions longer)"
        )

    # --- providers ---------------------------------------------------------------------------------
    def provider_for(self, modality: str) -> EmbeddingProvider:
        """The provider of ``modality``'s table: the one it was built with, else the chosen/default one."""
        return self._provider_in(self._manifest(), modality)

    def _provider_in(self, m: Manifest, modality: str) -> EmbeddingProvider:
        from aios_memory.plugins import resolve_provider

        return resolve_provider(m.tables.get(modality), modality, self._chosen.get(modality), self.path)

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
        """A connection whose views hold what this handle's scope may read (of ``namespace``, if given)."""
        namespaces = self._scope.readable(namespace)
        embedders = {}
        try:
            text = self._provider_in(manifest, "text")
            embedders["embed_text"] = (text.embed_batch, int(text.dim))
        except (ProviderNotFoundError, ProviderMismatchError):
            pass
        return connect(self._storage, manifest, embedders, namespaces, sandboxed, media=self._scope.media)

    def sql(
        self, query: str, params: Params = None, *, timeout: float | None = None, max_rows: int | None = None
    ) -> pa.Table:
        """Run read-only SQL over ``text_memories``, ``image_memories``, ``audio_memories``; returns Arrow.

        No time limit unless ``timeout`` (seconds) is given: past it DuckDB is interrupted and
        ``QueryTimeoutError`` is raised. ``max_rows`` streams the result and returns at most that many
        rows without computing the rest; ``aios_memory.query.truncated(table)`` says whether it cut any.
        """
        self._scope.check_sql()
        deadline = Deadline.start(timeout)  # the clock includes opening the fragments

        def read() -> pa.Table:
            con = self._connect(self._manifest())
            try:
                return run(con, query, params, timeout=deadline, max_rows=max_rows)
            finally:
                con.close()

        return self._reading(read)

    def connection(self, *, allow_file_access: bool = False) -> Any:
        """A DuckDB connection over this version's memory views, for SQL beyond one read-only statement.

        The caller closes it. By default it cannot read or write files, like ``sql()``; with
        ``allow_file_access=True`` (an explicit choice) it can, e.g. to ``COPY`` results out. Either way
        the memories cannot be changed through it: writes go through the ``MemoryStore`` API only.
        """
        self._scope.check_sql()
        if allow_file_access:
            self._scope.check_admin("open a connection with file access")
        return self._connect(self._manifest(), sandboxed=not allow_file_access)

    def get(self, id: str) -> Memory:
        if not isinstance(id, str):
            raise InvalidInputError(f"memory ids are strings, got {type(id).__name__}")
        check_utf8(id, "a memory id")
        return self._reading(lambda: self._get(id))

    def recent(self, limit: int = 20, *, modality: str | None = None) -> list[Memory]:
        """The ``limit`` newest memories this handle may read (of one modality, or of all), newest first,
        without media bytes. Needs no SQL right: a scope that may only recall can still list."""
        from aios_memory.search import recent

        return self._reading(lambda: recent(self, limit, modality))

    def _get(self, id: str) -> Memory:
        m = self._manifest()
        con = connect(self._storage, m, namespaces=self._scope.readable(None))  # outside: not found
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
        query: Any = None,
        k: int = 10,
        *,
        modality: str | None = None,
        namespace: str | None = None,
        where: str | None = None,
        params: Params = None,
        half_life: float | None = None,
        order: str = "score",
        min_score: float | None = None,
        exact: bool | None = None,
        filter: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        vector: Any = None,
        mmr: float | None = None,
        fetch_k: int | None = None,
        mode: str | None = None,
        text: str | None = None,
        image: Any = None,
    ) -> list[Memory]:
        """Rank memories by similarity to ``query`` (text, image, audio), or to a ``vector`` made elsewhere
        (of ``modality``'s table, default text). ``modality``: one table (default: every table the query
        reaches, fused); ``mode``: "vector" (default), "hybrid" (+ BM25 over words) or "keyword". ``text=`` with
        ``image=``: one query of both (each part's best calibrated score, averaged).
        ``where``: an SQL predicate whose values come from ``params``; ``filter``: metadata equality,
        ``{"key": value or [values]}``, ANDed with ``where``. ``half_life`` (seconds) multiplies scores by
        ``0.5 ** (age / half_life)``; ``min_score`` drops results below it (after the decay);
        ``order="newest"``: the top ``k`` newest first. ``exact=True`` never uses an ANN index,
        ``exact=False`` requires one. ``timeout`` (seconds) raises ``QueryTimeoutError`` past it.
        ``mmr=λ`` (0..1; 1: relevance only) re-ranks the top ``fetch_k`` (default ``max(20, 4k)``) by
        maximal marginal relevance; scores stay the exact cosines. See docs/concepts.md "Search"."""
        if where is not None:  # a predicate is SQL: a scope without the SQL right has `filter` only
            self._scope.check_sql()
        where, params = with_metadata_filter(where, params, filter)
        query, deadline = query_of(composite(query, text, image), vector), Deadline.start(timeout)
        args = (query, k, modality, namespace, where, params, half_life, order, min_score, exact, deadline)
        return self._reading(lambda: self._search(*args, mmr, fetch_k, mode))[0]

    def explain_search(self, query: Any = None, k: int = 10, **kwargs: Any) -> dict[str, Any]:
        """Run :meth:`search` and return what it did: ``path``, ``rows``, ``selected`` by the filters,
        ``scored`` (vectors compared), ``fragments``, ``manifest_reads``, ``mmr`` if asked, ``results``."""
        names = "modality namespace where params half_life order min_score exact timeout mmr fetch_k mode"
        kw = {n: kwargs.pop(n, "score" if n == "order" else None) for n in names.split()}
        if kw["where"] is not None:
            self._scope.check_sql()
        kw["where"], kw["params"] = with_metadata_filter(
            kw["where"], kw["params"], kwargs.pop("filter", None)
        )
        query = composite(query, kwargs.pop("text", None), kwargs.pop("image", None))
        query = query_of(query, kwargs.pop("vector", None))
        if kwargs:
            raise InvalidInputError(f"unknown search arguments: {', '.join(sorted(kwargs))}")
        kw["timeout"] = Deadline.start(kw["timeout"])
        results, explain = self._reading(lambda: self._search(query, k, *kw.values()))
        return {**explain, "results": results}

    def _search(self, *args: Any) -> tuple[list[Memory], dict[str, Any]]:
        return fused_search(self, *args)

    def _text_provider_in(self, m: Manifest, modality: str) -> EmbeddingProvider | None:
        """``_text_provider_for`` on a given manifest (a search reads the manifest once)."""
        if modality not in TEXT_COLUMN:
            return None
        state = m.tables.get(modality)
        if state is not None and state.text_provider is not None:
            return same_text_model(state, get_provider(state.text_provider), self.path)
        if state is not None and state.rows:
            return None
        try:
            return self._provider_in(m, "text")
        except ProviderError:
            return None

    def _nearest(
        self, modality: str, vectors: Any, namespace: str, manifest: Manifest | None = None
    ) -> tuple[list[str | None], np.ndarray]:
        """For each row of ``vectors``, the most similar committed memory of ``namespace`` in ``modality``'s
        table (by ``embedding``): its id and cosine (``None`` and ``-inf`` when there is none)."""
        m = manifest if manifest is not None else self._manifest()
        qs = np.asarray(vectors, np.float32)
        if qs.ndim != 2:
            raise InvalidInputError("vectors must be a (n, dim) array")
        state = m.tables.get(modality)
        if state is None or not state.fragments or not len(qs):
            return [None] * len(qs), np.full(len(qs), -np.inf)
        fragments = list(state.fragments)
        selections: list[np.ndarray | None] = [namespace_rows(self._storage, f, namespace) for f in fragments]
        f, r, best = nearest(self._storage, fragments, "embedding", state.dim, qs, selections)
        found = np.flatnonzero(f >= 0)
        ids: list[str | None] = [None] * len(qs)
        for j, id_ in zip(found, ids_of(self._storage, fragments, f[found], r[found]), strict=True):
            ids[int(j)] = id_
        return ids, best

    def stats(self) -> dict[str, Any]:
        return self._reading(self._stats)

    def _stats(self) -> dict[str, Any]:
        from aios_memory.doctor import stats

        return stats(self)

    def verify(self) -> dict[str, Any]:
        """Integrity check of the newest version (see :func:`aios_memory.doctor.verify`): every file it
        names exists inside the store with its recorded size and sha256 (fragments, vector sidecars, ANN
        index), row counts and schemas are right, every retained manifest parses, and maintenance that
        failed after a commit is listed. ``{"version", "ok", "problems", "orphans", "maintenance"}``."""
        from aios_memory.doctor import verify

        self._scope.check_admin("verify the store")
        return verify(self)

    def create_index(
        self, modality: str = "text", *, kind: str = "hnsw", column: str = "embedding", **params: Any
    ) -> dict[str, Any]:
        """Build (or extend) the ANN index of ``modality``'s table and commit it; returns its description.

        The index is derived data: searches use it by default when present (``search(..., exact=True)``
        never does), rank rows committed after it exactly, skip rows that were deleted since, and rescore
        every candidate exactly. Its file is checksummed in the manifest; a search whose index is missing
        or damaged ranks exactly and says so (``explain_search``), and ``create_index`` rebuilds a damaged
        index. Calling it again extends the previous index with the new fragments.
        ``params``: ``connectivity``, ``expansion_add``, ``expansion_search``, ``dtype`` (``i8``/``f16``/``f32``).
        """
        from aios_memory.doctor import create_index

        self._scope.check_admin("build an index")
        return create_index(self, modality, kind, column, params)

    def __repr__(self) -> str:
        return f"MemoryStore({str(self.path)!r}, version={self.version})"
