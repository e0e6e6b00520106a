"""Optional ANN index: an HNSW graph (``usearch``) over one table's vectors, derived data beside the fragments.

The index is an immutable file ``data/<modality>/<uuid>.hnsw.usearch`` named in the manifest
(:class:`aios_memory.storage.IndexFile`) with the fragments it covers, each with the first key of its
rows (key = first key + row). It is never trusted blindly:

- fragments committed after the index was built are not in it: a search ranks them exactly and merges;
- fragments it covers that a later commit removed (delete, update, compact) are skipped: their keys
  are filtered out of the graph's answers;
- the graph (8-bit quantised vectors) only proposes candidates: every candidate is rescored exactly
  from the fragment's vector sidecar, so scores are the exact cosines.

``create_index`` builds it (a commit); called again, it loads the previous graph, removes the keys of
dead fragments and adds only the rows of new ones, unless dead keys exceed :data:`REBUILD_DEAD_RATIO`,
when it rebuilds from scratch. Only the graph's shape (:data:`BUILD_PARAMS`) decides whether it can be
extended: an index built with other defaults (an older version's) is still searched, and is rebuilt by the
next ``create_index``. ``usearch`` is imported only here, only when an index is built or used.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from aios_memory.errors import InvalidInputError, StoreCorruptError, StoreError
from aios_memory.storage import DATA, DERIVED, Fragment, IndexFile, Storage
from aios_memory.storage.cache import CACHE, DAMAGED
from aios_memory.vectors import exact_scores, fragment_vectors, rank

KIND = "hnsw"
# Measured at 1M x 512 (clustered, bench/bench_search.py): expansion_add 64 leaves ~5% of rows hard to reach
# (recall@10 0.94 at any search depth); 128 gives 0.994 at depth 768 (at depth 512, 1 query in 300 misses).
DEFAULTS = {"connectivity": 16, "expansion_add": 128, "expansion_search": 768, "dtype": "i8"}
REBUILD_DEAD_RATIO = 0.25  # more dead keys than this: rebuild instead of extending
MIN_SELECTED = 0.25  # a filter selecting less than this share of the table is ranked exactly
BUILD_PARAMS = ("connectivity", "expansion_add", "dtype")  # the graph's shape; the rest is search-time
CANDIDATES = 128  # the graph proposes max(4k, CANDIDATES) rows, reranked exactly
ADD_BATCH = 65_536


def _usearch() -> Any:
    try:
        from usearch.index import Index
    except ImportError:
        raise StoreError(
            "the ANN index needs the usearch package: pip install usearch==2.26.6 numkong==7.8.6"
        ) from None
    return Index


@dataclass
class AnnResult:
    frag: np.ndarray
    row: np.ndarray
    score: np.ndarray
    scored: int


def _live_map(index: IndexFile, fragments: list[Fragment]) -> dict[str, int]:
    """Fragment path -> position in ``fragments``, for the fragments the index covers."""
    pos = {f.path: i for i, f in enumerate(fragments)}
    return {path: pos[path] for path, _first, _rows in index.covers if path in pos}


def ann_refusal(
    index: IndexFile | None,
    column: str,
    fragments: list[Fragment],
    selected: int,
    rows: int,
    half_life: float | None,
) -> str | None:
    """Why this search cannot use ``index`` (``None``: it can)."""
    if index is None:
        return "the table has no index; call create_index()"
    if index.column != column:
        return f"the index covers {index.column!r}, this search ranks by {column!r}"
    if half_life is not None:
        return "a time-decayed ranking is exact only over every selected row"
    if rows and selected < MIN_SELECTED * rows:
        return f"the filter selects {selected} of {rows} rows: ranking them exactly is cheaper"
    if not _live_map(index, fragments):
        return "every fragment the index covers has been replaced; call create_index() again"
    return None


def index_health(storage: Storage, index: IndexFile) -> str | None:
    """Why the index file cannot be trusted (missing, wrong size or sha256, a graph of the wrong size),
    else ``None``. Reads the whole file: ``verify`` calls it; searches use :func:`index_problem`."""
    try:
        size = storage.backend.size(index.path)
    except OSError:
        return "the index file is missing"
    if size != index.nbytes:
        return f"the index file holds {size} bytes, its manifest says {index.nbytes}"
    try:
        if index.sha256 and storage.backend.sha256(index.path) != index.sha256:
            return "the index file's sha256 differs from the one its manifest recorded"
    except OSError as exc:
        return f"the index file is unreadable ({exc.strerror or exc})"
    try:
        graph = _restore(storage, index.path, view=True)
    except (OSError, RuntimeError, ValueError) as exc:
        return f"the index file is unreadable ({exc})"
    if graph is None or (index.entries >= 0 and len(graph) != index.entries):
        return (
            f"the graph holds {0 if graph is None else len(graph)} vectors, its manifest says {index.entries}"
        )
    return None


def _restore(storage: Storage, rel: str, view: bool) -> Any:
    """The graph in ``rel``: memory-mapped (``view``) from a local file, loaded from an object's copy."""
    with storage.backend.local_copy(rel) as path:
        return _usearch().restore(path, view=view and storage.backend.is_local)


def index_problem(storage: Storage, index: IndexFile) -> str | None:
    """:func:`index_health`, checked once per process per file (index files are immutable)."""
    path = storage.uri(index.path)
    problem = CACHE.get((path, "hnsw-check"), lambda: index_health(storage, index))
    if problem is not None:
        DAMAGED[path] = problem
    return problem


def _open(storage: Storage, index: IndexFile) -> Any:
    """The graph of a checked index file (a memory map), or a ``StoreCorruptError`` saying what is wrong."""
    path = storage.uri(index.path)
    problem = index_problem(storage, index)
    if problem is not None:
        raise StoreCorruptError(f"ANN index {index.path}: {problem}")

    def load() -> Any:
        try:
            graph = _restore(storage, index.path, view=True)
        except (OSError, RuntimeError, ValueError) as exc:
            raise StoreCorruptError(f"ANN index {index.path} is unreadable ({exc})") from exc
        if graph is None:
            raise StoreCorruptError(f"ANN index {index.path} is missing")
        return graph

    return CACHE.get((path, "hnsw"), load, index.nbytes)


def _owners(index: IndexFile, live: dict[str, int], keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(fragment position, row)`` of each graph key, ``-1`` for keys of fragments a later commit removed."""
    firsts = np.array([first for _p, first, _r in index.covers], np.int64)
    sizes = np.array([rows for _p, _f, rows in index.covers], np.int64)
    where = np.array([live.get(path, -1) for path, _f, _r in index.covers], np.int64)
    c = np.searchsorted(firsts, keys, side="right") - 1
    c0 = np.maximum(c, 0)
    rows = keys - firsts[c0]
    ok = (c >= 0) & (rows >= 0) & (rows < sizes[c0])
    return np.where(ok, where[c0], -1), rows


def ann_search(
    storage: Storage,
    index: IndexFile,
    fragments: list[Fragment],
    column: str,
    dim: int,
    query: np.ndarray,
    k: int,
    selections: list[np.ndarray | None] | None,
) -> AnnResult:
    """Top-``k`` by exact cosine among the graph's candidates plus every row of fragments it does not cover."""
    graph = _open(storage, index)
    live = _live_map(index, fragments)
    q = np.asarray(query, np.float32).reshape(-1)
    q = q / np.linalg.norm(q)
    want = max(4 * k, CANDIDATES)
    # search depth: the one the index was created with (a caller's speed-for-recall choice), but never
    # below twice the candidates it must return
    depth = int(index.params.get("expansion_search", DEFAULTS["expansion_search"]))
    graph.expansion_search = max(depth, 2 * want)
    found = graph.search(q, want, threads=1)
    keys = np.asarray(found.keys, np.int64).reshape(-1)
    f, r = _owners(index, live, keys)
    keep = f >= 0  # rows of fragments that a later commit replaced are skipped
    if selections is not None:
        for i in np.unique(f[keep]).tolist():
            sel = selections[i]
            if sel is None:
                continue
            at = np.flatnonzero(f == i)
            if not sel.size:
                keep[at] = False
                continue
            pos = np.minimum(np.searchsorted(sel, r[at]), sel.size - 1)  # selections are sorted
            keep[at] = sel[pos] == r[at]
    f, r = f[keep], r[keep]
    scored = len(r)
    s = exact_scores(storage, fragments, column, dim, query, f, r) if len(r) else np.zeros(0)
    # fragments committed after the index: ranked exactly, all of them (or their selected rows)
    covered = set(live.values())
    rest = [i for i in range(len(fragments)) if i not in covered]
    if rest:
        sub = [fragments[i] for i in rest]
        sub_sel = None if selections is None else [selections[i] for i in rest]
        ranked = rank(storage, sub, column, dim, q, k, sub_sel)
        scored += ranked.scored
        rf = np.asarray(rest, np.int64)[ranked.frag]
        rs = exact_scores(storage, fragments, column, dim, query, rf, ranked.row)
        f, r, s = np.concatenate([f, rf]), np.concatenate([r, ranked.row]), np.concatenate([s, rs])
    ok = s > -np.inf
    return AnnResult(f[ok], r[ok], s[ok], scored)


def build_index(
    storage: Storage,
    modality: str,
    fragments: list[Fragment],
    column: str,
    dim: int,
    previous: IndexFile | None,
    params: dict[str, Any] | None = None,
    threads: int = 0,
) -> PendingIndex:
    """A graph covering ``fragments`` (extending ``previous`` when that pays and it is intact), in memory:
    the caller writes it in the commit that names it (:meth:`PendingIndex.write`)."""
    Index = _usearch()
    opts = {**DEFAULTS, **(params or {})}
    unknown = set(opts) - set(DEFAULTS)
    if unknown:
        raise InvalidInputError(f"unknown index parameters: {', '.join(sorted(unknown))}")
    live_paths = {f.path for f in fragments}
    graph, covers, next_key = None, [], 0
    same_shape = previous is not None and all(previous.params.get(p) == opts[p] for p in BUILD_PARAMS)
    usable = previous is not None and index_health(storage, previous) is None  # a damaged one: rebuilt
    if previous is not None and usable and previous.column == column and same_shape:
        dead = sum(rows for path, _f, rows in previous.covers if path not in live_paths)
        if dead <= REBUILD_DEAD_RATIO * max(previous.rows, 1):
            try:
                graph = _restore(storage, previous.path, view=False)
            except (OSError, RuntimeError, ValueError):
                graph = None
            if graph is None or (previous.entries >= 0 and len(graph) != previous.entries):
                graph = None  # unreadable after all: build from scratch below
            for path, first, rows in previous.covers if graph is not None else ():
                if path in live_paths:
                    covers.append((path, first, rows))
                elif rows:
                    graph.remove(np.arange(first, first + rows, dtype=np.uint64))
            next_key = max((first + rows for _p, first, rows in previous.covers), default=0)
    if graph is None:
        graph = Index(
            ndim=dim,
            metric="ip",
            dtype=opts["dtype"],
            connectivity=int(opts["connectivity"]),
            expansion_add=int(opts["expansion_add"]),
            expansion_search=int(opts["expansion_search"]),
        )
    have = {path for path, _f, _r in covers}
    for frag in fragments:
        if frag.path in have or frag.rows == 0:
            continue
        mat, norms = fragment_vectors(storage, frag, column, dim)
        for a in range(0, frag.rows, ADD_BATCH):
            b = min(frag.rows, a + ADD_BATCH)
            block = np.asarray(mat[a:b], np.float32) / norms[a:b, None]
            ok = np.flatnonzero(np.isfinite(block).all(axis=1))  # null vectors are not indexed
            if ok.size:
                graph.add((next_key + a + ok).astype(np.uint64), block[ok], threads=threads)
        covers.append((frag.path, next_key, frag.rows))
        next_key += frag.rows
    return PendingIndex(graph, column, tuple(covers), opts)


@dataclass
class PendingIndex:
    """A graph built in memory, not yet a file: :meth:`write` it under the writers' lock, in the commit
    that names it, so no ``cleanup`` can take it for an orphan between the two."""

    graph: Any
    column: str
    covers: tuple[tuple[str, int, int], ...]
    params: dict[str, Any]

    def write(self, storage: Storage, modality: str) -> IndexFile:
        rel = f"{DATA}/{modality}/{DERIVED}/{uuid.uuid4().hex}.hnsw.usearch"
        try:
            size, digest = storage.backend.write_file(rel, lambda path: self.graph.save(path))
        except (OSError, RuntimeError) as exc:  # a full disk: usearch says "Failed to serialize"
            storage.backend.delete(rel)  # no partial index file left behind
            raise StoreError(f"could not write the index file ({exc}); nothing was committed") from exc
        except BaseException:
            storage.backend.delete(rel)
            raise
        return IndexFile(
            path=rel,
            kind=KIND,
            column=self.column,
            nbytes=size,
            covers=self.covers,
            rows=int(sum(rows for _p, _f, rows in self.covers)),
            params=self.params,
            sha256=digest,
            entries=len(self.graph),
        )
