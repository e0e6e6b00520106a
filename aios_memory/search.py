"""How ``MemoryStore.search`` runs: one manifest read, the query embedded once, the namespace and
``where`` selection, exact ranking over the vector sidecars or the ANN index (checked first; a damaged one
is never used), exact rescoring, time decay, and the fetch of the result rows.

Functions of the store they are given (``MemoryStore._search`` calls :func:`run_search`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from aios_memory.errors import InvalidInputError, QueryError
from aios_memory.given import GivenVector, check_table
from aios_memory.memory import Memory, check_namespace, memory_from_row
from aios_memory.mmr import check_lambda, mmr_select
from aios_memory.modality import prepare
from aios_memory.query import Deadline, Params, check_params, run, vector_columns, view_name
from aios_memory.schema import TEXT_COLUMN
from aios_memory.storage import Fragment, Manifest, Storage
from aios_memory.storage.ann import ann_refusal, ann_search, index_problem
from aios_memory.vectors import (
    decay_weights,
    exact_scores,
    fragment_times,
    fragment_vectors,
    namespace_rows,
    pool_map,
    rank,
    read_rows,
    schema_of,
)

if TYPE_CHECKING:
    from aios_memory.store import MemoryStore

MAX_K = 10_000


def run_search(
    store: MemoryStore,
    query: Any,
    k: int,
    modality: str | None,
    namespace: str | None,
    where: str | None,
    params: Params,
    half_life: float | None,
    order: str,
    min_score: float | None,
    exact: bool | None,
    timeout: float | Deadline | None = None,
    mmr: float | None = None,
    fetch_k: int | None = None,
    signal: str | None = None,
    manifest: Manifest | None = None,
) -> tuple[list[Memory], dict[str, Any]]:
    """One table's ranking by one vector column: ``signal`` names it (default: the table's own
    ``embedding`` when the query's modality reaches it, else the transcript's). ``manifest``: the one
    a fused search read for all its tables (default: read here)."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise InvalidInputError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
    if namespace is not None:
        check_namespace(namespace)
    namespaces = store.scope.readable(namespace)  # the scope's namespaces, or None: every row
    if where is not None and (not isinstance(where, str) or not where.strip()):
        raise QueryError("the where predicate must be a non-empty SQL string")
    if params is not None and where is None:
        raise QueryError("parameters were given without a where predicate")
    check_params(params)
    if isinstance(params, Mapping) and any(str(name).startswith("aiosm_") for name in params):
        raise QueryError("parameter names starting with 'aiosm_' are reserved for the store's own")
    if half_life is not None and (
        isinstance(half_life, bool)
        or not isinstance(half_life, (int, float))
        or not math.isfinite(half_life)
        or half_life <= 0
    ):
        raise InvalidInputError(f"the half-life must be a positive number of seconds, got {half_life!r}")
    if order not in ("score", "newest"):
        raise InvalidInputError(f"order must be 'score' or 'newest', got {order!r}")
    if min_score is not None and (
        isinstance(min_score, bool) or not isinstance(min_score, (int, float)) or math.isnan(min_score)
    ):
        raise InvalidInputError(f"min_score must be a number, got {min_score!r}")
    if exact not in (None, True, False):
        raise InvalidInputError(f"exact must be True, False or None, got {exact!r}")
    pool = mmr_pool(k, mmr, fetch_k, order)  # the candidates ranked: k, or fetch_k for MMR to choose from
    deadline = timeout if isinstance(timeout, Deadline) else Deadline.start(timeout)
    item = None if isinstance(query, GivenVector) else prepare(query)
    target = modality or (item.modality if item is not None else "text")
    reads = _count_reads(store._storage)
    m = manifest or store._manifest()  # the one manifest read of this search: everything below uses ``m``
    provider = store._provider_in(m, target)
    column, dim = "embedding", int(provider.dim)
    transcript = item is not None and target in TEXT_COLUMN and signal != "embedding"
    if item is None:  # a vector made elsewhere, for this table's space
        check_table(provider, query.vector[None, :], target, None)
        vector = query.vector
    elif transcript and (
        signal is not None or (item.modality != target and item.modality not in provider.query_modalities)
    ):
        # e.g. text -> audio: rank by the transcript's embedding from the text provider
        text = store._text_provider_in(m, target)
        if text is None or item.modality != text.modality:
            provider.embed_query(item.payload, item.modality)  # raises the ModalityError that explains
        assert text is not None
        column, dim = f"{TEXT_COLUMN[target]}_embedding", int(text.dim)
        vector = text.embed_query(item.payload, item.modality)
    else:
        vector = provider.embed_query(item.payload, item.modality)
    state = m.tables.get(target)
    fragments = list(state.fragments) if state is not None else []
    explain: dict[str, Any] = {
        "version": m.version,
        "modality": target,
        "column": column,
        "path": "exact",
        "rows": sum(f.rows for f in fragments),
        "selected": sum(f.rows for f in fragments),
        "scored": 0,
        "fragments": len(fragments),
        "parquet_fallback": 0,
        "index": None,
        "_vector": vector,  # the query's vector: a fused search calibrates by it, then drops it
    }
    if not fragments:
        explain["selected"] = 0
        explain["manifest_reads"] = reads()
        if exact is False:
            raise QueryError(
                f"{target} memories have no ANN index; create one first "
                f"(aios-memory index create {target}; in Python, create_index)"
            )
        return [], explain
    deadline.check("the search")
    selections = select_rows(store, m, target, fragments, namespaces, where, params, deadline)
    if selections is not None:
        explain["path"] = "exact-selected"
        explain["selected"] = int(sum(s.size for s in selections))
    weight = None
    now_us = int(time.time() * 1_000_000)
    if half_life is not None:

        def weight(i: int, idx: np.ndarray | slice) -> np.ndarray:
            return decay_weights(fragment_times(store._storage, fragments[i])[idx], now_us, float(half_life))

    index = state.index if state is not None else None
    refusal = ann_refusal(index, column, fragments, explain["selected"], explain["rows"], half_life)
    if refusal is None and index is not None and exact is not True:
        problem = index_problem(store._storage, index)
        if problem is not None:  # damaged or missing: exact search, and it says so
            refusal = f"the index is damaged ({problem}); run create_index('{target}') to rebuild it"
            explain["index_damaged"] = problem
    if exact is False and refusal is not None:
        raise QueryError(f"no usable ANN index for this search of {target} memories: {refusal}")
    got = None
    if index is not None and refusal is None and exact is not True:
        got = ann_search(store._storage, index, fragments, column, dim, vector, pool, selections)
        if exact is None and selections is not None and len(got.row) < min(pool, explain["selected"]):
            # the graph's candidates were mostly rows the filter (a namespace, a scope) leaves out: what
            # other namespaces hold must not shorten this result, so rank the selected rows exactly
            refusal, got = "the index's candidates held fewer than k selected rows", None
    if got is not None:
        frag_idx, rows, scores = got.frag, got.row, got.score
        explain.update(path="ann" if selections is None else "ann-selected", scored=got.scored)
        explain["index"] = index.kind
    else:
        ranked = rank(store._storage, fragments, column, dim, vector, pool, selections, weight, deadline)
        explain["scored"], explain["parquet_fallback"] = ranked.scored, ranked.parquet_fallback
        frag_idx, rows = ranked.frag, ranked.row
        scores = exact_scores(store._storage, fragments, column, dim, vector, frag_idx, rows)
        if weight is not None:
            for i in np.unique(frag_idx):
                at = np.flatnonzero(frag_idx == i)
                scores[at] *= weight(int(i), rows[at])
        if index is not None:
            explain["index_not_used"] = "exact=True" if refusal is None else refusal
    explain["manifest_reads"] = reads()
    if min_score is not None:
        keep = scores >= float(min_score)
        frag_idx, rows, scores = frag_idx[keep], rows[keep], scores[keep]
    if len(rows) > pool:  # exact scores now: keep the top k and anything tied with the k-th
        kth = np.partition(scores, len(scores) - pool)[len(scores) - pool]
        keep = scores >= kth
        frag_idx, rows, scores = frag_idx[keep], rows[keep], scores[keep]
    if not len(rows):
        return [], explain
    found = fetch_rows(store, target, fragments, frag_idx, rows, scores)  # candidates: about k rows
    best = sorted(range(len(found)), key=lambda j: (-(found[j].score or 0.0), found[j].id))[:pool]
    out = [found[j] for j in best]
    if mmr is not None:  # re-rank the pool, in search order, by MMR over the sidecars' vectors
        unit = pool_vectors(store._storage, fragments, column, dim, frag_idx[best], rows[best])
        picked = mmr_select(vector, unit, [mem.score for mem in out], float(mmr), k)
        out = [out[i] for i in picked]
        explain["mmr"] = {"lambda": float(mmr), "fetch_k": pool, "pool": len(unit)}
    if order == "newest":
        out.sort(key=lambda mem: mem.id)
        out.sort(key=lambda mem: mem.created_at, reverse=True)
    return out, explain


def mmr_pool(k: int, mmr: Any, fetch_k: Any, order: str) -> int:
    """How many candidates a search ranks: ``k``, or for MMR (``mmr`` = lambda) ``fetch_k`` (default
    ``max(20, 4k)`` capped at :data:`MAX_K`). Checks both; ``order="newest"`` is refused with MMR."""
    if mmr is None:
        if fetch_k is not None:
            raise InvalidInputError("fetch_k is the size of the MMR candidate pool: it needs mmr=")
        return k
    check_lambda(mmr)
    if order != "score":
        raise InvalidInputError(
            "mmr chooses the result order itself: it cannot be combined with order='newest'"
        )
    if fetch_k is None:
        return min(MAX_K, max(20, 4 * k))
    if isinstance(fetch_k, bool) or not isinstance(fetch_k, int) or not k <= fetch_k <= MAX_K:
        raise InvalidInputError(f"fetch_k must be an integer from k ({k}) to {MAX_K}, got {fetch_k!r}")
    return fetch_k


def pool_vectors(
    storage: Storage, fragments: list[Fragment], column: str, dim: int, frag_idx: np.ndarray, rows: np.ndarray
) -> np.ndarray:
    """The given rows' vectors from the sidecars the ranking mapped, as float64 unit rows, in order."""
    out = np.empty((len(rows), dim), np.float64)
    for i in np.unique(frag_idx):
        at = np.flatnonzero(frag_idx == i)
        mat, _ = fragment_vectors(storage, fragments[int(i)], column, dim)
        v = mat[rows[at]].astype(np.float64)
        out[at] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def select_rows(
    store: MemoryStore,
    m: Manifest,
    modality: str,
    fragments: list[Fragment],
    namespaces: list[str] | None,
    where: str | None,
    params: Params,
    deadline: Deadline | None = None,
) -> list[np.ndarray] | None:
    """Per fragment, the row positions the namespaces and ``where`` select (``None``: every row).

    The namespace comes from each fragment's namespace column. ``where`` runs in DuckDB on the sandboxed
    connection whose views hold only those namespaces' rows (the store's scope) and returns the ids of
    the rows it keeps; those ids are then found in each fragment's id column. (Row order out of DuckDB
    is no key: a predicate whose subquery joins, e.g. ``id IN (SELECT ...)``, reorders rows, and a
    window's numbering follows the parallel scan.) The user's values stay parameters.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from aios_memory.compaction import read_fragment

    if namespaces is None and where is None:
        return None
    if namespaces is not None:
        selections = [
            np.sort(np.concatenate([namespace_rows(store._storage, f, ns) for ns in namespaces]))
            for f in fragments
        ]
    else:
        selections = [np.arange(f.rows, dtype=np.int64) for f in fragments]
    if where is None:
        return selections
    view = view_name(modality)
    con = store._connect(m, namespaces[0] if namespaces is not None and len(namespaces) == 1 else None)
    # the views hold only the scope's (or the one asked for) namespaces: where cannot reach others
    try:
        # first as a WHERE clause, so that what a WHERE refuses (aggregates, windows) is refused here too
        run(con, f"SELECT 1 FROM {view} WHERE ({where}) LIMIT 0", params, timeout=deadline)  # noqa: S608 - the caller's predicate by contract; values are parameters
        ids_sql = f"SELECT id FROM {view} WHERE COALESCE(CAST(({where}) AS BOOLEAN), false)"  # noqa: S608
        picked = run(con, ids_sql, params, timeout=deadline).column("id")
    finally:
        con.close()
    if len(picked) == 0:
        return [s[:0] for s in selections]
    wanted = pa.array(picked.combine_chunks() if isinstance(picked, pa.ChunkedArray) else picked, pa.string())
    out = []
    for f, s in zip(fragments, selections, strict=True):
        if deadline is not None:
            deadline.check("the search")
        ids = read_fragment(store._storage, f, ["id"]).column("id")
        hit = np.asarray(pc.is_in(ids, value_set=wanted).to_numpy(zero_copy_only=False), bool)
        out.append(s[hit[s]])
    return out


def fetch_rows(
    store: MemoryStore,
    modality: str,
    fragments: list[Fragment],
    frag_idx: np.ndarray,
    rows: np.ndarray,
    scores: np.ndarray,
) -> list[Memory]:
    """The result rows (without media and vectors) as memories, in the given order."""
    skip = {"media", *vector_columns(modality)}

    def one(i: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
        at = np.flatnonzero(frag_idx == i)
        frag = fragments[i]
        cols = [n for n in schema_of(store._storage, frag).names if n not in skip]
        return at, read_rows(store._storage, frag, rows[at], cols).to_pylist()

    found: dict[int, dict[str, Any]] = {}
    # a top-k spans several fragments: their row groups are decoded on the ranking threads at once
    for at, got in pool_map(one, np.unique(frag_idx).tolist()):
        for j, row in zip(at, got, strict=True):
            found[int(j)] = row
    out = []
    for j in range(len(rows)):
        row = found[j]
        row["score"] = float(scores[j])
        out.append(memory_from_row(modality, row))
    return out


def _count_reads(storage: Storage) -> Callable[[], int]:
    """A counter of the manifest reads from now on (``explain_search`` reports it)."""
    start = storage.manifest_reads
    return lambda: storage.manifest_reads - start


def recent(store: MemoryStore, limit: int, modality: str | None) -> list[Memory]:
    """``MemoryStore.recent``: the newest memories of the handle's scope, without media or vectors."""
    from aios_memory.provider import MODALITIES

    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_K:
        raise InvalidInputError(f"limit must be an integer from 1 to {MAX_K}, got {limit!r}")
    if modality is not None and modality not in MODALITIES:
        raise InvalidInputError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    m = store._manifest()
    con = store._connect(m)  # the scope's views; no SQL right needed: the statement is ours
    out: list[Memory] = []
    try:
        for mod in [modality] if modality else [x for x in MODALITIES if x in m.tables]:
            hidden = ", ".join(f"'{c}'" for c in ["media", *vector_columns(mod)])
            sql = (  # COLUMNS(...): the same with or without the media column (a scope without media)
                f"SELECT COLUMNS(lambda c: c NOT IN ({hidden})) FROM {view_name(mod)} "  # noqa: S608 - our names
                "ORDER BY created_at DESC, id LIMIT ?"
            )
            out += [memory_from_row(mod, row) for row in run(con, sql, [limit]).to_pylist()]
    finally:
        con.close()
    out.sort(key=lambda mem: mem.id)
    out.sort(key=lambda mem: mem.created_at, reverse=True)
    return out[:limit]
