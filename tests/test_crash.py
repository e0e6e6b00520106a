"""Crash safety for real: ingestion in a subprocess is killed with SIGKILL at random points, 50+ times.

After every kill the store must open, pass ``verify()``, hold every batch whose ``add_many`` returned,
and hold no partial batch. Orphaned fragments of interrupted commits are reported, never read, and
removed by ``cleanup``.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

from trigram_provider import NAME

from aios_memory import MemoryStore

TESTS = Path(__file__).resolve().parent
BATCH = 7
KILLS = 60

WRITER = textwrap.dedent(
    f"""
    import sys
    sys.path.insert(0, {str(TESTS)!r})
    import trigram_provider
    trigram_provider.register()
    from aios_memory import MemoryStore
    store = MemoryStore(sys.argv[1], providers={{"text": {NAME!r}}})
    run = sys.argv[2]
    print("READY", flush=True)
    i = 0
    while True:
        tag = f"{{run}}-{{i}}"
        print("BEGIN", tag, flush=True)
        store.add_many([f"batch {{tag}} item {{j}} " + "x" * (j * 50) for j in range({BATCH})],
                       metadata={{"batch": tag}}, namespace=f"run{{run}}")
        print("DONE", tag, flush=True)
        if i % 9 == 8:
            store.compact()  # kills also land inside compactions
            print("COMPACTED", tag, flush=True)
        i += 1
    """
)


def _batches(store: MemoryStore) -> Counter:
    rows = store.sql("SELECT json_extract_string(metadata, '$.batch') AS b FROM text_memories").column("b")
    return Counter(rows.to_pylist())


def test_sigkill_at_random_points_loses_nothing_committed(tmp_path):
    import trigram_provider

    trigram_provider.register()
    path = tmp_path / "store"
    rng = random.Random(1234)
    done: set[str] = set()
    landed = Counter()  # where each kill landed: before the first commit, mid-commit, between commits
    for run in range(KILLS):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(run)], stdout=subprocess.PIPE, text=True
        )
        time.sleep(rng.uniform(0.05, 1.2))
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        lines = out.split("\n")
        done |= {line.split()[1] for line in lines if line.startswith("DONE ")}
        last = next((line.split()[0] for line in reversed(lines) if line.strip()), "nothing")
        landed[
            "mid-commit"
            if last == "BEGIN"
            else "before first commit"
            if last in ("READY", "nothing")
            else "between commits"
        ] += 1

        store = MemoryStore(path, providers={"text": NAME})  # opens after every kill
        report = store.verify()
        assert report["ok"], report["problems"]
        counts = _batches(store)
        assert all(n == BATCH for n in counts.values()), f"partial batch after kill {run}: {counts}"
        assert done <= set(counts), f"committed batches lost after kill {run}: {sorted(done - set(counts))}"
    print(
        f"\n{KILLS} SIGKILLs, landed: {dict(landed)}; {len(done)} batches reported committed, "
        f"{len(_batches(store))} present, {len(report['orphans'])} orphaned fragments reported"
    )
    assert landed["mid-commit"] >= 10  # the kills really hit commits in progress
    # orphans are never read, and cleanup removes them
    store.cleanup(older_than=0)
    after = store.verify()
    assert after["ok"] and after["orphans"] == []
    assert done <= set(_batches(store))
    assert store.search("batch item", k=3)  # and it still answers queries
