"""Search at scale and growth: 10k, 100k and 1M memories of 512 dims (``python bench/bench_search.py``).

Rows are committed through the store's own storage code (``Storage.write_fragment`` + ``commit``: real
Parquet fragments, real sidecars, real manifests) in fragments of 100k, with vectors drawn around 1,000
random centres (ANN recall means nothing on uniform noise). Queries go through ``MemoryStore.search``
with a registered provider that embeds ``"q:N"`` as a vector near one of those centres.

reference = the previous implementation, DuckDB's ``array_cosine_similarity`` over the Parquet fragments
(``query.search_sql``), timed in the same run on the same store. floor = one pass over the vectors at
this machine's memory bandwidth: the time to sum the same float32 bytes once from page cache
(2 threads), measured in the same run. ``quick=True`` stops at 100k.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import median_time, print_rows  # noqa: E402

DIM = 512
CENTRES = 1000
CHUNK = 100_000
NAME = "bench-vectors-512"
QUERIES = 30
ANN_QUERIES = 100  # ANN p50 and recall@10: each query once


@functools.cache
def _centres() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((CENTRES, DIM)).astype(np.float32)


def _vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = _centres()[rng.integers(0, CENTRES, n)] + 0.6 * rng.standard_normal((n, DIM), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def register() -> None:
    from aios_memory import EmbeddingProvider, hookimpl
    from aios_memory.plugins import get_providers, register_plugin

    class BenchVectors(EmbeddingProvider):
        name = NAME
        modality = "text"
        dim = DIM

        def _embed(self, items: list[str]) -> np.ndarray:
            return np.stack([_vectors(1, 10_000_000 + int(s[2:]))[0] for s in items])

    class Plugin:
        @hookimpl
        def register_embedding_providers(self, register):  # type: ignore[no-untyped-def]
            register(BenchVectors())

    if NAME not in get_providers():
        register_plugin(Plugin(), name="bench-search")


def ingest(store: Any, n: int) -> float:
    """Commit ``n`` rows in fragments of :data:`CHUNK`; seconds spent in the store (not in drawing vectors)."""
    from aios_memory.schema import base_schema
    from aios_memory.storage import Manifest, TableState

    provider = store.provider_for("text")
    schema = base_schema("text", DIM, provider.fingerprint())
    spent = 0.0
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        vecs = _vectors(m, start)
        t = time.perf_counter()
        group = [(start + i) % 100 for i in range(m)]
        cols = {
            "id": [str(uuid.uuid4()) for _ in range(m)],
            "namespace": [f"ns{g}" for g in group],
            "created_at": [dt.datetime.now(dt.timezone.utc)] * m,
            "updated_at": [None] * m,
            "source": [f"g{g}" for g in group],
            "content": [f"memory {start + i}" for i in range(m)],
            "media": [None] * m,
            "media_type": [None] * m,
            "metadata": [json.dumps({"i": start + i}) for i in range(m)],
            "provider": [NAME] * m,
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1), pa.float32()), DIM),
        }
        table = pa.table([cols[f.name] for f in schema], schema=schema)

        def build(man: Manifest, table: pa.Table = table) -> Manifest:
            state = man.tables.setdefault("text", TableState("text", NAME, DIM, provider.fingerprint(), []))
            state.fragments.append(store._storage.write_fragment("text", table))
            return man

        store._storage.commit(f"add {m}", build)
        spent += time.perf_counter() - t
    return spent


def reference_search(
    store: Any, query: str, k: int, namespace: str | None = None, scores: bool = False
) -> list[Any]:
    """The previous implementation: DuckDB's cosine over the Parquet fragments."""
    from aios_memory.query import run, search_sql

    m = store._manifest()
    qv = store.provider_for("text").embed_query(query).astype("float32").tolist()
    con = store._connect(m, namespace)
    try:
        sql = search_sql("text", DIM, None, False)
        got = run(con, sql, [qv, namespace, namespace, k]).to_pylist()
    finally:
        con.close()
    return [(r["id"], r["score"]) for r in got] if scores else [r["id"] for r in got]


def agreement(store: Any, queries: list[str]) -> tuple[int, int]:
    """(ids equal to the reference's, of how many); a differing id must be a float32 tie (|d| < 1e-6)."""
    same = total = 0
    for q in queries:
        ours = store.search(q, k=10, exact=True)
        ref = reference_search(store, q, 10, scores=True)
        for m, (rid, rscore) in zip(ours, ref, strict=True):
            total += 1
            same += m.id == rid
            assert abs(m.score - rscore) < 1e-6, (m.score, rscore)
    return same, total


def stream_floor(store: Any) -> float:
    """Seconds to sum every vector byte of the table once (2 threads) from page cache: the bandwidth floor."""
    from aios_memory.vectors import fragment_vectors

    state = store._manifest().tables["text"]
    mats = [fragment_vectors(store._storage, f, "embedding", DIM)[0] for f in state.fragments]
    blocks = [(mat, a) for mat in mats for a in range(0, len(mat), 16_384)]

    def one(b: tuple[np.ndarray, int]) -> float:
        mat, a = b
        return float(np.add.reduce(mat[a : a + 16_384].reshape(-1)))

    with ThreadPoolExecutor(2) as pool:

        def run() -> None:
            list(pool.map(one, blocks))

        run()
        return median_time(run, 5)


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


REOPEN = textwrap.dedent(
    """
    import json, sys, time
    sys.path.insert(0, sys.argv[2])
    import bench_search
    bench_search.register()
    def rss():
        out = {}
        for line in open("/proc/self/status"):
            if line.startswith(("VmRSS", "RssAnon", "RssFile", "VmHWM")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) / 1024
        return out
    from aios_memory import MemoryStore
    base = rss()
    t = time.perf_counter()
    s = MemoryStore(sys.argv[1], providers={"text": bench_search.NAME})
    opened = time.perf_counter() - t
    after_open = rss()
    s.search("q:1", k=10, exact=True)
    after_search = rss()
    print(json.dumps({"open_s": opened, "base": base, "open": after_open, "search": after_search}))
    """
)


def reopen(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", REOPEN, str(path), str(Path(__file__).resolve().parent)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(n: int, root: Path, ann: bool = True) -> list[dict[str, Any]]:
    from aios_memory import MemoryStore

    path = root / f"store-{n}"
    store = MemoryStore(path, providers={"text": NAME})
    rows: list[dict[str, Any]] = []

    def row(area: str, measure: str, ours: float, unit: str, reference=None, floor=None, note="") -> None:
        rows.append(
            {
                "area": area,
                "measure": f"{measure} @{n // 1000}k",
                "ours": ours,
                "reference": reference,
                "ratio": (reference / ours) if reference else None,  # lower is better: times, sizes
                "floor": floor,
                "unit": unit,
                "note": note,
            }
        )

    t_ingest = ingest(store, n)
    row("growth", "ingest", n / t_ingest, "rows/s", note=f"{t_ingest:.1f} s, fragments of {CHUNK // 1000}k")
    state = store._manifest().tables["text"]
    parquet = sum(f.nbytes for f in state.fragments)
    row(
        "growth",
        "store size",
        _disk_bytes(path) / 2**20,
        "MiB",
        reference=parquet / 2**20,
        floor=n * DIM * 4 / 2**20,
        note="reference: the Parquet alone; floor: the raw float32 vectors",
    )
    qs = [f"q:{i}" for i in range(QUERIES)]
    store.search(qs[0], k=10, exact=True)  # maps the sidecars (page cache already holds them)
    floor = stream_floor(store)
    it = iter(qs * 100)
    exact = median_time(lambda: store.search(next(it), k=10, exact=True), 15)
    ref_repeats = 3 if n >= 1_000_000 else 7
    ref = median_time(lambda: reference_search(store, next(it), 10), ref_repeats)
    same, total = agreement(store, qs[:5])
    row(
        "search",
        "exact top-10 p50",
        exact * 1e3,
        "ms",
        ref * 1e3,
        floor * 1e3,
        note=f"{same}/{total} ids equal to the reference's, every score within 1e-6 of it",
    )
    sel = median_time(lambda: store.search(next(it), k=10, namespace="ns7", exact=True), 15)
    e = store.explain_search("q:3", k=10, namespace="ns7", exact=True)
    ref_sel = median_time(lambda: reference_search(store, next(it), 10, namespace="ns7"), ref_repeats)
    row(
        "search",
        "exact, 1% namespace filter p50",
        sel * 1e3,
        "ms",
        ref_sel * 1e3,
        floor * 1e3 / 100,
        note=f"scored {e['scored']} of {e['rows']} vectors (= selected {e['selected']})",
    )
    where = median_time(
        lambda: store.search(next(it), k=10, where="source = ?", params=["g7"], exact=True), 7
    )
    e = store.explain_search("q:3", k=10, where="source = ?", params=["g7"], exact=True)
    row(
        "search",
        "exact, 1% where filter p50",
        where * 1e3,
        "ms",
        None,
        floor * 1e3 / 100,
        note=f"unfiltered exact: {exact * 1e3:.1f} ms; scored {e['scored']} = selected {e['selected']}; "
        "includes DuckDB evaluating the predicate over every row",
    )
    if ann:
        from aios_memory.storage.ann import CANDIDATES, DEFAULTS, ann_search

        t = time.perf_counter()
        info = store.create_index("text")
        build = time.perf_counter() - t
        row(
            "ann",
            "HNSW build",
            build,
            "s",
            note=f"usearch {DEFAULTS['dtype']}, M={DEFAULTS['connectivity']}, "
            f"ef_add={DEFAULTS['expansion_add']}; {info['bytes'] / 2**20:.0f} MiB",
        )
        aqs = [f"q:{i}" for i in range(ANN_QUERIES)]  # each query once: nothing is answered from a cache
        store.search(qs[0], k=10)
        wall, cpu = [], []
        for q in aqs:
            c, t = time.process_time(), time.perf_counter()
            store.search(q, k=10)
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        annt = float(np.median(wall))
        state = store._manifest().tables["text"]
        vecs = [store.provider_for("text").embed_query(q) for q in aqs]
        av = iter(vecs)
        stage = median_time(
            lambda: ann_search(
                store._storage, state.index, list(state.fragments), "embedding", DIM, next(av), 10, None
            ),
            len(vecs),
        )
        hits = 0
        for q in aqs:
            truth = {m.id for m in store.search(q, k=10, exact=True)}
            hits += len(truth & {m.id for m in store.search(q, k=10)})
        recall = hits / (10 * len(aqs))
        row(
            "ann",
            "ANN top-10 p50 vs our exact top-10 (approximate vs exact)",
            annt * 1e3,
            "ms",
            exact * 1e3,
            note=f"unlike work: the ANN answer is approximate, recall@10 vs exact = {recall:.3f} "
            f"({len(aqs)} distinct queries; exact: the row above); CPU time p50 "
            f"{np.median(cpu) * 1e3:.1f} ms; ef_search={DEFAULTS['expansion_search']}, {CANDIDATES} candidates",
        )
        rows.append(
            {
                **rows[-1],
                "measure": f"ANN recall@10 @{n // 1000}k",
                "ours": recall,
                "reference": None,
                "ratio": None,
                "unit": "",
                "note": "vs exact search, candidates rescored exactly",
            }
        )
        row(
            "ann",
            "ANN stage alone p50",
            stage * 1e3,
            "ms",
            note="graph search + exact rescoring; the rest of a search embeds the query, reads the "
            "manifest and fetches the k result rows from Parquet",
        )
    store.checkout(None)  # (the reopen below is a fresh process)
    r = reopen(path)
    row("growth", "reopen (fresh process)", r["open_s"] * 1e3, "ms", note="opening reads the manifest only")
    row(
        "growth",
        "RSS after reopen",
        r["open"]["VmRSS"],
        "MiB",
        reference=r["base"]["VmRSS"],
        note=f"reference: the process before opening; anon {r['open']['RssAnon']:.0f} MiB",
    )
    row(
        "growth",
        "peak RSS after one exact search",
        r["search"]["VmHWM"],
        "MiB",
        floor=n * DIM * 4 / 2**20,
        note=f"anon {r['search']['RssAnon']:.0f} MiB + file-backed (page cache, shared) {r['search']['RssFile']:.0f} MiB",
    )
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    register()
    sizes = [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000]
    root = Path(tempfile.mkdtemp(prefix="aiosm-bench-search-"))
    out: list[dict[str, Any]] = []
    try:
        for n in sizes:
            out += measure(n, root, ann=os.environ.get("AIOSM_BENCH_ANN", "1") == "1")
            print_rows(out)
            sys.stdout.flush()
            shutil.rmtree(root / f"store-{n}", ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    t0 = time.perf_counter()
    print_rows(run(quick), f"machine: {os.cpu_count()} cores; bench took {time.perf_counter() - t0:.0f} s")
