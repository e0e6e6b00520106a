"""Vectors computed elsewhere (issue 18): ``add_many(items, embeddings=...)`` and ``search(vector=...)``.

    python bench/bench_vectors.py            # 100,000 vectors of 384 dims, 5 repetitions
    python bench/bench_vectors.py --quick    # 50,000 vectors, 3 repetitions

Interleaved in one run, the sides taking turns, on the same rows (short texts + unit float32 vectors, the
shape a Ray job or another service hands over):

- ``MemoryStore.add_many(texts, embeddings=vecs, provider="minilm-l6-v2")`` into a fresh store (opened
  untimed) vs what a user would otherwise run to keep the rows: ``pyarrow.parquet.write_table`` of the same
  ids/texts/vectors, fsynced (the floor of a durable columnar write). Floor: writing and fsyncing the raw
  vector bytes once. Ours does more: content digests and the exact-duplicate check, a second copy of the
  vectors (the memory-mapped sidecar searches use), sha256 of every file, the commit.
- ``search(vector=q, k=10)`` over those rows vs numpy's exact top 10 of the same matrix held in memory
  (``vecs @ q`` + ``argpartition``): p50 over 50 queries, same top 10 checked.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import print_rows  # noqa: E402

DIM = 384
PROVIDER = "minilm-l6-v2"


def rows_of(n: int, seed: int = 18):  # type: ignore[no-untyped-def]
    import numpy as np

    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    texts = [f"note {i}: item {rng.integers(1 << 30)} from the {i % 97}th batch" for i in range(n)]
    return texts, vecs


def run(quick: bool = False, n: int | None = None) -> list[dict]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from aios_memory import MemoryStore

    n = n or (50_000 if quick else 100_000)
    reps = 3 if quick else 5
    root = Path(tempfile.mkdtemp(prefix="aios-bench-vectors-"))
    os.environ["AIOS_MEMORY_HOME"] = str(root / "home")  # no model is loaded: the vectors are given
    from aios_memory_text.provider import MiniLMProvider

    MiniLMProvider().install()  # a new table records which weights its vectors are for (none is loaded)
    texts, vecs = rows_of(n)
    stores = iter(root / f"store-{i}" for i in range(10 * reps + 2))
    last: dict = {}

    def ours() -> float:
        store = MemoryStore(next(stores), providers={"text": PROVIDER})
        t = time.perf_counter()
        last["ids"] = store.add_many(texts, embeddings=vecs, provider=PROVIDER)
        took = time.perf_counter() - t
        last["store"] = store
        return took

    def ref() -> float:
        import uuid

        t = time.perf_counter()
        table = pa.table({
            "id": [str(uuid.uuid4()) for _ in range(n)],
            "content": texts,
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), DIM),
        })  # fmt: skip
        with open(next(stores).with_suffix(".parquet"), "wb") as f:
            pq.write_table(table, f)
            f.flush()
            os.fsync(f.fileno())
        return time.perf_counter() - t

    def floor() -> float:
        t = time.perf_counter()
        with open(next(stores).with_suffix(".f32"), "wb") as f:
            f.write(memoryview(vecs).cast("B"))
            f.flush()
            os.fsync(f.fileno())
        return time.perf_counter() - t

    try:
        ours(), ref(), floor()  # warm-up: imports, page cache
        took: dict[str, list[float]] = {"ours": [], "ref": [], "floor": []}
        for r in range(reps):
            for k, fn in (("ours", ours), ("ref", ref), ("floor", floor))[:: 1 if r % 2 == 0 else -1]:
                took[k].append(fn())
        med = {k: statistics.median(v) for k, v in took.items()}
        store = last["store"]
        held = store.sql("SELECT count(*) AS n FROM text_memories")["n"][0].as_py()
        assert held == n and len(last["ids"]) == n, (held, len(last["ids"]))
        rows = [
            {
                "area": "vectors",
                "measure": f"add_many of {n:,} given {DIM}-d vectors: ours vs pyarrow write_table (fsynced)",
                "ours": n / med["ours"],
                "reference": n / med["ref"],
                "ratio": med["ref"] / med["ours"],
                "floor": n / med["floor"],
                "unit": "vec/s",
                "note": (
                    f"median of {reps} interleaved; ours {med['ours']:.3f} s, pyarrow {med['ref']:.3f} s "
                    f"(ids + texts + vectors, default compression), floor {med['floor']:.3f} s = the vector bytes "
                    f"written once and fsynced; ours also digests contents for the duplicate check, writes the "
                    f"vectors twice (Parquet + the mapped sidecar), sha256s every file and commits; issue 18's "
                    f"target: 200,000 vec/s"
                ),
            }
        ]
        rng = np.random.default_rng(5)
        queries = rng.standard_normal((50, DIM)).astype(np.float32)
        store.search(vector=queries[0], k=10)  # warm: maps the sidecar
        a, b, same = [], [], 0
        for i, q in enumerate(queries):
            pair = []
            for side in ("ours", "numpy") if i % 2 == 0 else ("numpy", "ours"):
                t = time.perf_counter()
                if side == "ours":
                    got = [h.id for h in store.search(vector=q, k=10)]
                else:
                    s = vecs @ (q / np.linalg.norm(q))
                    top = np.argpartition(-s, 10)[:10]
                    want = [last["ids"][j] for j in top[np.argsort(-s[top])]]
                pair.append((side, time.perf_counter() - t))
            d = dict(pair)
            a.append(d["ours"])
            b.append(d["numpy"])
            same += got == want
        rows.append({
            "area": "vectors",
            "measure": f"search(vector=q, k=10) over {n:,} rows vs numpy exact top 10 in memory",
            "ours": statistics.median(a) * 1e3,
            "reference": statistics.median(b) * 1e3,
            "ratio": statistics.median(b) / statistics.median(a),
            "floor": None,
            "unit": "ms",
            "note": f"p50 of {len(queries)} random queries, interleaved; same top 10 in {same}/{len(queries)}; "
            "ours reads the manifest, maps the checked sidecar and returns memories with their metadata",
        })  # fmt: skip
        return rows
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="50,000 vectors instead of 100,000")
    ap.add_argument("--n", type=int, help="number of vectors")
    args = ap.parse_args()
    print_rows(run(args.quick, args.n))
