"""Time travel (issue 17): opening a store ``as_of`` a past version and searching it, vs the newest.

    python bench/bench_timetravel.py            # 100 commits of 500 memories (50,000), 30 rounds
    python bench/bench_timetravel.py --quick    # 40 commits of 500 (20,000), 20 rounds

Given 384-d vectors (``add_many(embeddings=)``: no model in the timing), one commit per batch, so the past
version (the middle one) and the newest differ in rows and fragments. Interleaved per round, the first to
go alternating: ``MemoryStore(path, as_of=v)`` + ``search(vector=q, k=10)`` vs ``MemoryStore(path)`` +
the same search; and ``as_of=datetime`` (a moment: every retained manifest's time is read to find the
version) vs ``as_of=version``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import print_rows  # noqa: E402

DIM, BATCH, PROVIDER = 384, 500, "minilm-l6-v2"


def run(quick: bool = False) -> list[dict]:
    import numpy as np

    from aios_memory import MemoryStore

    commits, rounds = (40, 20) if quick else (100, 30)
    root = Path(tempfile.mkdtemp(prefix="aios-bench-timetravel-"))
    os.environ["AIOS_MEMORY_HOME"] = str(root / "home")
    from aios_memory_text.provider import MiniLMProvider

    MiniLMProvider().install()  # a new table records which weights its vectors are for (none is loaded)
    try:
        path = root / "store"
        store = MemoryStore(path, providers={"text": PROVIDER})
        rng = np.random.default_rng(17)
        middle = commits // 2
        when, past_version = None, 0
        for c in range(commits):
            vecs = rng.standard_normal((BATCH, DIM)).astype(np.float32)
            store.add_many(
                [f"commit {c} memory {i}" for i in range(BATCH)], embeddings=vecs, provider=PROVIDER
            )
            if c + 1 == middle:
                time.sleep(0.01)
                when = dt.datetime.now(dt.timezone.utc)
                past_version = store.version  # (automatic compactions are versions too)
                time.sleep(0.01)
        queries = rng.standard_normal((rounds, DIM)).astype(np.float32)

        def open_search(**kw):  # type: ignore[no-untyped-def]
            def go(q) -> float:  # type: ignore[no-untyped-def]
                t = time.perf_counter()
                s = MemoryStore(path, providers={"text": PROVIDER}, **kw)
                s.search(vector=q, k=10)
                return time.perf_counter() - t

            return go

        sides = {
            "newest": open_search(),
            "as_of_version": open_search(as_of=past_version),
            "as_of_time": open_search(as_of=when),
        }
        for fn in sides.values():
            fn(queries[0])  # warm: imports, page cache
        took: dict[str, list[float]] = {k: [] for k in sides}
        for r in range(rounds):
            for k in list(sides) if r % 2 == 0 else list(sides)[::-1]:
                took[k].append(sides[k](queries[r]))
        med = {k: statistics.median(v) * 1e3 for k, v in took.items()}
        assert MemoryStore(path, as_of=when).version == past_version
        rows_now, rows_then = commits * BATCH, middle * BATCH
        note = (f"{commits} commits of {BATCH} given {DIM}-d vectors; past = version {past_version} "
                f"({rows_then:,} rows) vs newest ({rows_now:,} rows); each side opens a fresh handle and runs one "
                f"search(vector=, k=10); median of {rounds} interleaved rounds")  # fmt: skip
        return [
            {"area": "timetravel", "measure": "open as_of=version + search vs open newest + search",
             "ours": med["as_of_version"], "reference": med["newest"], "ratio": med["newest"] / med["as_of_version"],
             "floor": None, "unit": "ms", "note": note},
            {"area": "timetravel", "measure": "open as_of=datetime + search vs as_of=version + search",
             "ours": med["as_of_time"], "reference": med["as_of_version"],
             "ratio": med["as_of_version"] / med["as_of_time"], "floor": None, "unit": "ms",
             "note": f"a moment is resolved by a binary search over the {store.version} retained versions' commit "
                     f"times (a manifest read per step), after listing them; {note}"},
        ]  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="40 commits instead of 100")
    print_rows(run(ap.parse_args().quick))
