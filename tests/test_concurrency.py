"""Several processes writing one store at once while others read: nothing lost, nothing doubled, no reader error.

Concurrency model: one writer at a time per store through a file lock (others queue for up to
``lock_timeout`` seconds); readers take no lock and read the last committed version.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from trigram_provider import NAME

from aios_memory import MemoryStore

TESTS = Path(__file__).resolve().parent
WRITERS, PER_WRITER, BATCH, READERS = 4, 500, 10, 2

PRELUDE = textwrap.dedent(
    f"""
    import json, sys, time
    sys.path.insert(0, {str(TESTS)!r})
    import trigram_provider
    trigram_provider.register()
    from aios_memory import MemoryStore
    store = MemoryStore(sys.argv[1], providers={{"text": {NAME!r}}}, lock_timeout=300)
    """
)
WRITER = PRELUDE + textwrap.dedent(
    f"""
    w = sys.argv[2]
    for start in range(0, {PER_WRITER}, {BATCH}):
        store.add_many([f"writer {{w}} memory {{i}}" for i in range(start, start + {BATCH})], namespace=f"w{{w}}")
    """
)
READER = PRELUDE + textwrap.dedent(
    """
    stop = sys.argv[2]
    counts, errors, searches = [], [], 0
    import os
    while not os.path.exists(stop):
        try:
            counts.append(store.sql("SELECT count(*) AS n FROM text_memories").column("n")[0].as_py())
            store.search("writer 2 memory 17", k=5)
            searches += 1
        except Exception as exc:  # any error at all is a failure of the concurrency model
            errors.append(f"{type(exc).__name__}: {exc}")
    print(json.dumps({"counts": counts, "errors": errors, "searches": searches}))
    """
)


def test_writers_and_readers_at_once(tmp_path):
    import trigram_provider

    trigram_provider.register()
    path, stop = tmp_path / "store", tmp_path / "stop"
    MemoryStore(path, providers={"text": NAME})
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", READER, str(path), str(stop)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(READERS)
    ]
    time.sleep(1.5)  # readers are up and querying before the first write
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(w)], stderr=subprocess.PIPE, text=True)
        for w in range(WRITERS)
    ]
    for w in writers:
        _, err = w.communicate(timeout=900)
        assert w.returncode == 0, err
    stop.touch()
    results = [json.loads(r.communicate(timeout=120)[0]) for r in readers]

    store = MemoryStore(path, providers={"text": NAME})
    contents = store.sql("SELECT content FROM text_memories").column("content").to_pylist()
    expected = {f"writer {w} memory {i}" for w in range(WRITERS) for i in range(PER_WRITER)}
    print(
        f"\n{WRITERS} writers x {PER_WRITER} memories in {WRITERS * PER_WRITER // BATCH} commits; "
        f"readers ran {sum(r['searches'] for r in results)} searches and "
        f"{sum(len(r['counts']) for r in results)} counts meanwhile, errors: {sum(len(r['errors']) for r in results)}"
    )
    assert len(contents) == len(set(contents)) == WRITERS * PER_WRITER  # nothing lost, nothing doubled
    assert set(contents) == expected
    ops = [store._storage.read_manifest(v).operation for v in store._storage.versions()]
    assert sum(op.startswith("add") for op in ops) == WRITERS * PER_WRITER // BATCH  # one commit per batch
    assert all(op.startswith(("add", "compact")) for op in ops)  # the rest: automatic compactions
    assert len(store._manifest().tables["text"].fragments) < 40  # which keep the file count bounded
    assert store.verify()["ok"]
    for r in results:
        assert r["errors"] == []
        assert r["counts"] == sorted(r["counts"])  # a reader never sees the store go back in time
        assert all(n % BATCH == 0 for n in r["counts"])  # and never sees part of a batch
        assert r["searches"] > 0
