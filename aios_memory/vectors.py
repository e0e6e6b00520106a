"""Vector sidecars and exact top-k over them: search at memory-bandwidth speed.

Every fragment ``<stem>.parquet`` is written with immutable sidecars beside it (see
:meth:`aios_memory.storage.Storage.write_fragment`):

- ``<stem>.<column>.f32`` for each fixed-size float32 vector column (``embedding``, audio's
  ``transcript_embedding``): the ``(rows, dim)`` matrix as raw little-endian float32, followed by the
  ``rows`` L2 norms. A null vector is a row of NaN (its norm NaN too) and never ranks.
- ``<stem>.created_at.i64``: ``created_at`` as little-endian int64 microseconds since the epoch (UTC).

The Parquet fragment stays the source of truth; a sidecar is the same numbers in the layout a matrix
product wants. Searches memory-map them on first use (nothing is read when a store is opened), score
blocks of rows with one BLAS matrix-vector product each, keep each block's best few with
``argpartition`` and merge. Fragments from before sidecars existed fall back to their Parquet column.

Ranking is exact: candidates are chosen in float32 with a margin (:data:`MARGIN`) that covers float32
rounding, then rescored in float64 and ordered by (score descending, id), as the SQL ranking did.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aios_memory.errors import StoreCorruptError
from aios_memory.storage import Fragment, Storage
from aios_memory.storage.cache import CACHE, DAMAGED, map_file, trusted

TIME_SUFFIX = "created_at.i64"
BLOCK_ROWS = 16_384  # rows scored per BLAS call: 32 MiB of 512-d vectors, streamed once
MARGIN = 1e-4  # float32 candidate margin: far above the rounding of a 4096-d unit-vector dot product
_US = 1_000_000


def vector_suffix(column: str) -> str:
    return f"{column}.f32"


# --- writing ---------------------------------------------------------------------------------------
def sidecar_buffers(table: pa.Table) -> Iterator[tuple[str, list[Any]]]:
    """The sidecars of ``table``: ``(suffix, buffers)`` for each fixed-size float32 vector column and
    for ``created_at``. Tables without such columns (the change log) get none."""
    n = table.num_rows
    for f in table.schema:
        t = f.type
        if pa.types.is_fixed_size_list(t) and t.value_type == pa.float32():
            dim = t.list_size
            arr = table.column(f.name).combine_chunks()
            flat = arr.values.slice(arr.offset * dim, n * dim)
            mat = np.array(flat.to_numpy(zero_copy_only=False), dtype="<f4").reshape(n, dim)
            if arr.null_count:
                mat[np.asarray(arr.is_null())] = np.nan
            norms = np.sqrt(np.einsum("ij,ij->i", mat, mat, dtype=np.float64)).astype("<f4")
            yield vector_suffix(f.name), [np.ascontiguousarray(mat), norms]
        elif f.name == "created_at" and pa.types.is_timestamp(t):
            # numpy, not Arrow casts: those would import pyarrow.compute (~30 ms) on a cold process's
            # first add. NaT (null) becomes 0, the epoch.
            stamps = np.asarray(table.column(f.name).to_numpy(), dtype="datetime64[us]")
            us = stamps.astype("<i8")
            us[np.isnat(stamps)] = 0
            yield TIME_SUFFIX, [us]


def _corrupt(storage: Storage, frag: Fragment, what: str) -> StoreCorruptError:
    return StoreCorruptError(
        f"store {storage.root}: {what} of fragment {frag.path} is missing or unreadable; run `aios-memory doctor`"
    )


def fragment_vectors(
    storage: Storage, frag: Fragment, column: str, dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(matrix (rows, dim) float32, norms (rows,) float32)`` of ``column``: a memory map of the sidecar,
    checked against its manifest checksum when first mapped; or, for fragments from before sidecars and
    for a sidecar that fails its check, the Parquet column (the source of truth) decoded once."""
    suffix = vector_suffix(column)
    if frag.rows == 0:
        return np.zeros((0, dim), np.float32), np.zeros(0, np.float32)
    path = storage.abspath(frag)

    def decode() -> tuple[np.ndarray, np.ndarray]:
        try:
            col = pq.read_table(path, columns=[column]).column(column)
        except (FileNotFoundError, pa.ArrowException, OSError, KeyError) as exc:
            raise _corrupt(storage, frag, "the Parquet file") from exc
        out = np.full((frag.rows, dim), np.nan, dtype=np.float32)
        if pa.types.is_fixed_size_list(col.type) and col.type.list_size == dim:
            arr = col.combine_chunks()
            flat = arr.values.slice(arr.offset * dim, frag.rows * dim)
            out[:] = np.asarray(flat.to_numpy(zero_copy_only=False), np.float32).reshape(frag.rows, dim)
            if arr.null_count:
                out[np.asarray(arr.is_null())] = np.nan
        norms = np.sqrt(np.einsum("ij,ij->i", out, out, dtype=np.float64)).astype(np.float32)
        return out, norms

    def decoded() -> tuple[np.ndarray, np.ndarray]:
        return CACHE.get((path, f"col:{column}"), decode, frag.rows * (dim + 1) * 4)

    if suffix not in frag.sidecars:
        return decoded()
    side = str(storage.backend.path(frag.sidecar_path(suffix)))
    size = frag.rows * (dim + 1) * 4

    def make() -> tuple[np.ndarray, np.ndarray] | None:
        raw = map_file(side)  # an OSError (a missing file, no descriptor left) is not cached: see below
        if not trusted(side, raw, size, frag.checksum(suffix)):
            return None
        floats = raw.view("<f4")
        return floats[: frag.rows * dim].reshape(frag.rows, dim), floats[frag.rows * dim :]

    try:
        got = CACHE.get((side, "vec"), make, size)
    except OSError:  # not a verdict on the file (it may be a passing shortage): the source of truth
        return decoded()
    return got if got is not None else decoded()


def fragment_times(storage: Storage, frag: Fragment) -> np.ndarray:
    """``created_at`` of every row as int64 microseconds since the epoch (the sidecar, checked like the
    vectors', else the Parquet column)."""
    if frag.rows == 0:
        return np.zeros(0, np.int64)
    path = storage.abspath(frag)

    def decode() -> np.ndarray:
        try:
            col = pq.read_table(path, columns=["created_at"]).column("created_at")
        except (FileNotFoundError, pa.ArrowException, OSError, KeyError) as exc:
            raise _corrupt(storage, frag, "the Parquet file") from exc
        return np.asarray(col.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy(), np.int64)

    if TIME_SUFFIX in frag.sidecars:
        side = str(storage.backend.path(frag.sidecar_path(TIME_SUFFIX)))

        def make() -> np.ndarray | None:
            raw = map_file(side)
            if not trusted(side, raw, frag.rows * 8, frag.checksum(TIME_SUFFIX)):
                return None
            return raw.view("<i8")

        try:
            got = CACHE.get((side, "time"), make, frag.rows * 8)
        except OSError:
            got = None
        if got is not None:
            return got
    return CACHE.get((path, "col:created_at"), decode, frag.rows * 8)


def namespace_rows(storage: Storage, frag: Fragment, namespace: str) -> np.ndarray:
    """Row positions of ``frag`` that belong to ``namespace`` (its namespace column, cached encoded)."""
    path = storage.abspath(frag)

    def decode() -> tuple[dict[str, int], np.ndarray]:
        try:
            col = pq.read_table(path, columns=["namespace"]).column("namespace").combine_chunks()
        except (FileNotFoundError, pa.ArrowException, OSError, KeyError) as exc:
            raise _corrupt(storage, frag, "the Parquet file") from exc
        enc = col.dictionary_encode()
        codes = {v: i for i, v in enumerate(enc.dictionary.to_pylist())}
        return codes, np.asarray(enc.indices.to_numpy(zero_copy_only=False), np.int32)

    codes, indices = CACHE.get((path, "ns"), decode, frag.rows * 4)
    code = codes.get(namespace)
    if code is None:
        return np.zeros(0, np.int64)
    return np.flatnonzero(indices == code)


def read_rows(storage: Storage, frag: Fragment, rows: np.ndarray, columns: list[str] | None) -> pa.Table:
    """``rows`` of a fragment (in the given order), decoding only the row groups that hold them. The file
    stays open per process with its footer parsed (it is immutable), so a read opens nothing: a search's
    top-k touches a handful of fragments, and each open cost about a third of the read. Reads are
    ``pread`` calls (thread-safe), not a map: a file truncated under the process is a clean error."""
    path = storage.abspath(frag)

    def footer() -> tuple[Any, Any, np.ndarray]:
        try:
            f = pa.OSFile(path)
            meta = pq.read_metadata(f)
        except (FileNotFoundError, pa.ArrowException, OSError) as exc:
            raise _corrupt(storage, frag, "the Parquet file") from exc
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        return f, meta, np.cumsum([0, *sizes])

    source, meta, starts = CACHE.get((path, "rows"), footer)  # read with pread: a descriptor, no map
    rows = np.asarray(rows, np.int64)
    groups = np.searchsorted(starts, rows, side="right") - 1
    wanted = sorted(set(groups.tolist()))
    try:
        part = pq.ParquetFile(source, metadata=meta).read_row_groups(
            wanted, columns=columns, use_threads=False
        )
    except (pa.ArrowException, OSError) as exc:
        raise _corrupt(storage, frag, "the Parquet file") from exc
    offset, base = 0, {}
    for g in wanted:
        base[g] = offset
        offset += int(starts[g + 1] - starts[g])
    local = [base[int(g)] + int(r - starts[g]) for g, r in zip(groups, rows, strict=True)]
    return part.take(pa.array(local, pa.int64()))


def schema_of(storage: Storage, frag: Fragment) -> pa.Schema:
    path = storage.abspath(frag)

    def make() -> pa.Schema:
        try:
            return pq.read_schema(path)
        except (FileNotFoundError, pa.ArrowException, OSError) as exc:
            raise _corrupt(storage, frag, "the Parquet file") from exc

    return CACHE.get((path, "schema"), make)


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
        side = str(storage.backend.path(frag.sidecar_path(vector_suffix(column))))
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
