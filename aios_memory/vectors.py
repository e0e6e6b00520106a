"""Exact top-k over the vector sidecars: search at memory-bandwidth speed.

Searches memory-map each fragment's sidecar (see :mod:`aios_memory.storage.sidecars`) on first use,
score blocks of rows with one BLAS matrix-vector product each, keep each block's best few with
``argpartition`` and merge. Fragments from before sidecars existed fall back to their Parquet column.

Ranking is exact: candidates are chosen in float32 with a margin (:data:`MARGIN`) that covers float32
rounding, then rescored in float64 and ordered by (score descending, id), as the SQL ranking did.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aios_memory.storage import Fragment, Storage
from aios_memory.storage.cache import CACHE, DAMAGED
from aios_memory.storage.sidecars import (
    TIME_SUFFIX,
    fragment_times,
    fragment_vectors,
    namespace_rows,
    read_rows,
    schema_of,
    sidecar_buffers,
    vector_suffix,
)

BLOCK_ROWS = 16_384  # rows scored per BLAS call: 32 MiB of 512-d vectors, streamed once
MARGIN = 1e-4  # float32 candidate margin: far above the rounding of a 4096-d unit-vector dot product
_US = 1_000_000

__all__ = [
    "CACHE",
    "TIME_SUFFIX",
    "fragment_times",
    "fragment_vectors",
    "namespace_rows",
    "read_rows",
    "schema_of",
    "sidecar_buffers",
    "vector_suffix",
]


# --- exact ranking --------------------------------------------------------------------------------
@dataclass
class Ranked:
    """What a ranking pass did: the candidates (fragment index, row, float32 score) and the counts."""

    frag: np.ndarray
    row: np.ndarray
    score: np.ndarray
    scored: int = 0  # vectors whose similarity was computed
    fragments: int = 0
    parquet_fallback: int = 0
    notes: list[str] = field(default_factory=list)


def _local_candidates(s: np.ndarray, k: int) -> np.ndarray:
    """Rows of ``s`` that may be in the top ``k`` once rescored exactly: the top ``k`` and every row
    within :data:`MARGIN` of the ``k``-th."""
    if s.size <= k:
        return np.flatnonzero(s > -np.inf)
    top = np.argpartition(s, s.size - k)[s.size - k :]
    kth = s[top].min()
    if kth == -np.inf:
        return np.flatnonzero(s > -np.inf)
    return np.flatnonzero(s >= kth - MARGIN)


_POOL: ThreadPoolExecutor | None = None
THREADS = 2  # ranking threads: two streams of memory reads saturate this machine's bandwidth


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max(1, min(THREADS, os.cpu_count() or 1)), thread_name_prefix="aiosm-rank")
    return _POOL


def pool_map(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """``[fn(x) for x in items]`` on the ranking threads (pyarrow and numpy release the GIL), in order.
    Not for use from inside one of those threads."""
    return list(_pool().map(fn, items)) if len(items) > 1 else [fn(x) for x in items]


def rank(
    storage: Storage,
    fragments: list[Fragment],
    column: str,
    dim: int,
    query: np.ndarray,
    k: int,
    selections: list[np.ndarray | None] | None = None,
    weight: Callable[[int, np.ndarray | slice], np.ndarray] | None = None,
    deadline: Any = None,
) -> Ranked:
    """Exact top-``k`` candidates by cosine to ``query`` over ``fragments`` (all rows, or per fragment
    the row positions in ``selections``), each score multiplied by ``weight(fragment, rows)`` if given.

    Blocks of :data:`BLOCK_ROWS` rows are scored on :data:`THREADS` threads (numpy releases the GIL), each
    with one pass over its rows (``einsum`` streams at memory bandwidth where BLAS ``gemv`` does not here).
    """
    q = np.asarray(query, np.float32).reshape(-1)
    q = q / np.float32(np.linalg.norm(q))
    out = Ranked(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    jobs: list[tuple[int, np.ndarray, np.ndarray, np.ndarray | slice, int]] = []
    used = [
        i
        for i, frag in enumerate(fragments)
        if frag.rows and (selections is None or selections[i] is None or selections[i].size)
    ]
    # mapped (and, the first time in this process, checksummed) on the ranking threads at once
    got = pool_map(lambda i: fragment_vectors(storage, fragments[i], column, dim), used)
    if deadline is not None:
        deadline.check("the search")  # a first search in a process hashes its sidecars before ranking
    for i, (mat, norms) in zip(used, got, strict=True):
        frag, sel = fragments[i], selections[i] if selections is not None else None
        out.fragments += 1
        side = storage.uri(frag.sidecar_path(vector_suffix(column)))
        out.parquet_fallback += vector_suffix(column) not in frag.sidecars or side in DAMAGED
        n = frag.rows if sel is None else sel.size
        for a in range(0, n, BLOCK_ROWS):
            b = min(n, a + BLOCK_ROWS)
            jobs.append((i, mat, norms, slice(a, b) if sel is None else sel[a:b], a))
            out.scored += b - a

    def score(
        job: tuple[int, np.ndarray, np.ndarray, np.ndarray | slice, int],
    ) -> tuple[int, np.ndarray, np.ndarray]:
        i, mat, norms, idx, a = job
        if deadline is not None:
            deadline.check("the search")  # between blocks of rows: a ranking stops within one block
        s = np.einsum("ij,j->i", mat[idx], q)
        s /= norms[idx]
        if weight is not None:
            s *= weight(i, idx).astype(np.float32)
        np.nan_to_num(s, copy=False, nan=-np.inf)  # null vectors never rank
        local = _local_candidates(s, k)
        return i, (local + a if isinstance(idx, slice) else idx[local]), s[local]

    results = list(_pool().map(score, jobs)) if len(jobs) > 1 else [score(j) for j in jobs]
    if not results:
        return out
    f = np.concatenate([np.full(len(r), i, np.int64) for i, r, _ in results])
    r = np.concatenate([r for _, r, _ in results]).astype(np.int64)
    s = np.concatenate([s for _, _, s in results])
    keep = _local_candidates(s, k)
    out.frag, out.row, out.score = f[keep], r[keep], s[keep]
    return out


def exact_scores(
    storage: Storage,
    fragments: list[Fragment],
    column: str,
    dim: int,
    query: np.ndarray,
    frag_idx: np.ndarray,
    rows: np.ndarray,
) -> np.ndarray:
    """Cosine of ``query`` with the given rows, in float64 (the candidates' final scores)."""
    q = np.asarray(query, np.float64).reshape(-1)
    q = q / np.linalg.norm(q)
    out = np.empty(len(rows), np.float64)
    for i in np.unique(frag_idx):
        at = np.flatnonzero(frag_idx == i)
        mat, _ = fragment_vectors(storage, fragments[int(i)], column, dim)
        v = mat[rows[at]].astype(np.float64)
        out[at] = (v @ q) / np.linalg.norm(v, axis=1)
    return out


def decay_weights(times_us: np.ndarray, now_us: int, half_life: float) -> np.ndarray:
    """``0.5 ** (age / half_life)`` with age in seconds from ``created_at`` (a future time counts as 0)."""
    age = np.maximum(now_us - times_us.astype(np.int64), 0).astype(np.float64) / _US
    return np.exp2(-age / float(half_life))


def nearest(
    storage: Storage,
    fragments: list[Fragment],
    column: str,
    dim: int,
    queries: np.ndarray,
    selections: list[np.ndarray | None],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each query row, the most similar row: ``(fragment index, row, cosine)`` (-1, -1, -inf if none)."""
    qs = np.asarray(queries, np.float32)
    qs = qs / np.linalg.norm(qs, axis=1, keepdims=True)
    nq = len(qs)
    best_f = np.full(nq, -1, np.int64)
    best_r = np.full(nq, -1, np.int64)
    best = np.full(nq, -np.inf, np.float64)
    for i, frag in enumerate(fragments):
        sel = selections[i]
        n = frag.rows if sel is None else sel.size
        if n == 0:
            continue
        mat, norms = fragment_vectors(storage, frag, column, dim)
        for a in range(0, n, BLOCK_ROWS):
            b = min(n, a + BLOCK_ROWS)
            idx: np.ndarray | slice = slice(a, b) if sel is None else sel[a:b]
            s = (mat[idx] @ qs.T) / norms[idx][:, None]  # (rows, nq)
            np.nan_to_num(s, copy=False, nan=-np.inf)
            j = s.argmax(axis=0)
            top = s[j, np.arange(nq)].astype(np.float64)
            better = top > best
            best[better] = top[better]
            best_f[better] = i
            pos = j + a if sel is None else sel[a:b][j]
            best_r[better] = pos[better]
    return best_f, best_r, best


def ids_of(storage: Storage, fragments: list[Fragment], frag_idx: np.ndarray, rows: np.ndarray) -> list[str]:
    out: list[str] = [""] * len(rows)
    for i in np.unique(frag_idx):
        at = np.flatnonzero(frag_idx == i)
        t = read_rows(storage, fragments[int(i)], rows[at], ["id"])
        for j, v in zip(at, t.column("id").to_pylist(), strict=True):
            out[int(j)] = v
    return out
