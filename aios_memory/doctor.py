"""Checking and repairing a store: ``verify`` (what ``aios-memory doctor`` prints) and ``create_index``.

``verify`` trusts nothing it can check: every file the newest version names must exist inside the store
with the size and sha256 its manifest recorded (fragments, vector sidecars, the ANN index), the Parquet
fragments must hold the rows and vector width the manifest says, every retained manifest must parse and
name only files inside the store, no directory of the store may be a symlink, and maintenance that failed
after a commit is reported until it succeeds.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from aios_memory.errors import InvalidInputError, StoreCorruptError, VersionNotFoundError
from aios_memory.provider import MODALITIES
from aios_memory.query import connect, run, vector_columns, view_name
from aios_memory.storage import Fragment, Manifest, TableState

if TYPE_CHECKING:
    from aios_memory.store import MemoryStore


def _check_models(store: MemoryStore, m: Any) -> list[str]:
    """Tables whose recorded model (or transcripts' text model) is not the one installed here: other
    weights under the same name, or a weight file that cannot be read."""
    from aios_memory.identity import mismatch_message, same_model
    from aios_memory.plugins import get_providers

    out = []
    registered = get_providers()
    for mod, state in m.tables.items():
        pairs = [
            (state.provider, state.fingerprint, False),
            (state.text_provider, state.text_fingerprint, True),
        ]
        for name, recorded, text in pairs:
            provider = registered.get(name) if name and recorded and state.rows else None
            if provider is None:
                continue  # a plugin not installed in this process: nothing to compare (searches say so)
            try:
                current = provider.fingerprint()
            except Exception as exc:  # noqa: BLE001 - a damaged weight file is a finding, not a crash
                out.append(f"{mod}: the weights of provider {name!r} cannot be read ({exc})")
                continue
            if "weights" in recorded and "weights" not in current and provider.is_installed():
                out.append(
                    f"{mod}: the installed weight file of {name!r} cannot be read; reinstall the model"
                )
            elif not same_model(recorded, current):
                out.append(mismatch_message(mod, store.path, recorded, current, text=text))
    return out


def verify(store: MemoryStore) -> dict[str, Any]:
    """Integrity report of the newest version: ``{"version", "ok", "problems", "orphans", "maintenance"}``."""
    storage = store._storage
    m = store._manifest()
    problems: list[str] = list(storage.containment_problems())
    for state in m.tables.values():
        for frag in state.fragments:
            problems.extend(_check_fragment(store, state, frag))
        if state.index is not None:
            problems.extend(_check_index(store, state))
    for frag in m.history:
        problems.extend(_check_files(store, frag))
    problems.extend(_check_models(store, m))
    referenced: set[str] = set()
    for v in storage.versions():
        try:
            referenced |= storage.read_manifest(v).fragment_paths()
        except VersionNotFoundError:
            continue  # removed meanwhile by a cleanup
        except StoreCorruptError as exc:
            problems.append(str(exc))
    orphans = storage.unreferenced_files(referenced)
    maintenance = storage.maintenance()
    problems.extend(
        f"maintenance after a commit failed ({task}): {note['error']}" for task, note in maintenance.items()
    )
    return {
        "version": m.version,
        "ok": not problems,
        "problems": problems,
        "orphans": orphans,
        "maintenance": maintenance,
    }


def _check_files(store: MemoryStore, frag: Fragment, skip: frozenset[str] = frozenset()) -> list[str]:
    """Each file of ``frag`` exists with the sha256 (and, for the Parquet file, the size) recorded."""
    backend, problems = store._storage.backend, []
    for suffix, rel in [("parquet", frag.path), *((s, frag.sidecar_path(s)) for s in frag.sidecars)]:
        if rel in skip:
            continue
        try:
            size = backend.size(rel)
            if suffix == "parquet" and size != frag.nbytes:
                problems.append(f"{rel}: {size} bytes, the manifest says {frag.nbytes}")
                continue
            want = frag.checksum(suffix)
            if want is not None and backend.sha256(rel) != want:
                problems.append(f"{rel}: its sha256 differs from the one the manifest recorded (damaged)")
        except OSError as exc:
            problems.append(f"{rel}: missing or unreadable ({exc.strerror or exc})")
    return problems


def _check_fragment(store: MemoryStore, state: TableState, frag: Fragment) -> list[str]:
    sizes = _check_sidecar_sizes(store, state, frag)  # a wrong size says more than a wrong hash
    problems = sizes + _check_files(store, frag, frozenset(p.split(":")[0] for p in sizes))
    if any(p.startswith(frag.path) for p in problems):
        return problems
    try:
        with store._storage.backend.open_input(frag.path) as f:
            meta = pq.read_metadata(f)
        if meta.num_rows != frag.rows:
            problems.append(f"{frag.path}: {meta.num_rows} rows, manifest says {frag.rows}")
        field_type = meta.schema.to_arrow_schema().field("embedding").type
        if getattr(field_type, "list_size", None) != state.dim:
            problems.append(f"{frag.path}: embedding type {field_type}, expected dim {state.dim}")
    except (FileNotFoundError, pa.ArrowException, OSError, KeyError) as exc:
        problems.append(f"{frag.path}: unreadable ({exc})")
    return problems


def _check_sidecar_sizes(store: MemoryStore, state: TableState, frag: Fragment) -> list[str]:
    """Each sidecar of ``frag`` has the size its rows and dimension imply (older manifests: no sha256)."""
    from aios_memory.storage.sidecars import DIGEST_SUFFIX, TIME_SUFFIX

    problems = []
    for suffix in frag.sidecars:
        rel = frag.sidecar_path(suffix)
        if suffix in (TIME_SUFFIX, DIGEST_SUFFIX):
            want = frag.rows * (8 if suffix == TIME_SUFFIX else 16)
        else:
            column = suffix.removesuffix(".f32")
            dim = state.dim if column == "embedding" else state.text_dim
            want = frag.rows * ((dim or 0) + 1) * 4
        try:
            size = store._storage.backend.size(rel)
        except OSError:
            continue  # reported by _check_files
        if size != want:
            problems.append(f"{rel}: sidecar holds {size} bytes, expected {want}")
    return problems


def _check_index(store: MemoryStore, state: TableState) -> list[str]:
    from aios_memory.storage.ann import index_health

    assert state.index is not None
    problem = index_health(store._storage, state.index)
    if problem is None:
        return []
    return [
        f"{state.index.path}: the {state.modality} ANN index cannot be used ({problem}); searches rank "
        f"exactly until `create_index('{state.modality}')` rebuilds it"
    ]


def create_index(
    store: MemoryStore, modality: str, kind: str, column: str, params: dict[str, Any]
) -> dict[str, Any]:
    """Build (or extend, or repair) the ANN index of ``modality``'s table and commit it.

    The graph is built in memory outside the writers' lock (it can take minutes); its file is written,
    fsynced and hashed inside the commit, under the lock, so no concurrent ``cleanup`` can delete it as
    an orphan before the manifest names it: a manifest never names a missing or wrong index file. A
    previous index that is damaged is not extended but rebuilt.
    """
    from aios_memory.storage.ann import build_index

    if kind != "hnsw":
        raise InvalidInputError(f"unknown index kind {kind!r}; only 'hnsw' is available")
    storage = store._storage
    m = store._manifest()
    state = m.tables.get(modality)
    if modality not in MODALITIES or state is None or not state.fragments:
        raise InvalidInputError(f"there are no {modality} memories to index")
    if column not in vector_columns(modality):
        raise InvalidInputError(f"{modality} memories have no vector column {column!r}")
    dim = state.dim if column == "embedding" else state.text_dim
    if dim is None:
        raise InvalidInputError(f"{modality} memories have no {column} vectors")
    t0 = time.perf_counter()
    pending = build_index(storage, modality, list(state.fragments), column, int(dim), state.index, params)
    built_s = time.perf_counter() - t0
    written: list[Any] = []

    def build(new: Manifest) -> Manifest | None:
        table = new.tables.get(modality)
        if table is None or table.provider != state.provider or table.fingerprint != state.fingerprint:
            return None  # the table was replaced meanwhile: the index describes nothing of it
        if not written:
            written.append(pending.write(storage, modality))
        table.index = written[0]
        return new

    committed = storage.commit(f"index {modality}", build)
    index = written[0] if written else None
    return {
        "modality": modality,
        "kind": kind,
        "column": column,
        "rows": index.rows if index else 0,
        "bytes": index.nbytes if index else 0,
        "seconds": built_s,
        "version": committed.version,
        "committed": index is not None
        and committed.tables.get(modality) is not None
        and committed.tables[modality].index == index,
    }


def stats(store: MemoryStore) -> dict[str, Any]:
    """``MemoryStore.stats``: per table its provider, dimension and rows, and the rows per namespace. A
    handle scoped to some namespaces counts only theirs and is told nothing of files, other rows, tables
    only others use, or the store's version (a count of every namespace's commits)."""
    m = store._manifest()
    scope = store.scope
    namespaces: dict[str, int] = {}
    per_table: dict[str, int] = {}
    if m.tables:
        con = connect(store._storage, m, namespaces=scope.readable(None), media=False)
        try:
            union = " UNION ALL ".join(
                f"SELECT '{mod}' AS modality, namespace FROM {view_name(mod)}"  # noqa: S608 - our own names
                for mod in m.tables
            )
            sql = f"SELECT modality, namespace, count(*) AS n FROM ({union}) GROUP BY 1, 2 ORDER BY 1, 2"  # noqa: S608
            for r in run(con, sql).to_pylist():
                namespaces[r["namespace"]] = namespaces.get(r["namespace"], 0) + r["n"]
                per_table[r["modality"]] = per_table.get(r["modality"], 0) + r["n"]
        finally:
            con.close()
    tables: dict[str, Any] = {}
    for mod, state in m.tables.items():
        if scope.namespaces is not None and not per_table.get(mod):
            continue  # a table only others have rows in is not this handle's business
        tables[mod] = {"provider": state.provider, "dim": state.dim, "memories": per_table.get(mod, 0)}
        if scope.namespaces is None:
            tables[mod].update(
                memories=state.rows,
                fragments=len(state.fragments),
                bytes=sum(f.nbytes for f in state.fragments),
                sidecar_bytes=sum(f.sidecar_nbytes for f in state.fragments),
                index=None if state.index is None else {"kind": state.index.kind, "rows": state.index.rows},
            )
    if scope.namespaces is not None:  # the version counts every namespace's commits: not shown
        return {"path": str(store.path), "tables": tables, "namespaces": namespaces}
    return {"path": str(store.path), "version": m.version, "tables": tables, "namespaces": namespaces}
