"""Honest commits under real faults: a call that raised committed nothing; a call that returned committed.

- A real tmpfs of a few MiB, filled to leave 0, 4, 8, ... KiB free before each ``add``: the disk runs
  out at every step of a commit in turn (fragment, sidecars, manifest, the compaction after it).
- One older fragment truncated on disk: later adds still return their ids; the compaction that meets it
  is recorded for ``doctor`` and merges the readable fragments around it, so the file count stays bounded.
- The writers' lock held by another process past ``lock_timeout``.

For every call: either it returned and its memory is there after reopening, exactly once, or it raised
and nothing of it is there; a retry after the fault stores it once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aios_memory import MemoryStore
from aios_memory.errors import AiosMemoryError, StoreError
from aios_memory.storage.manifest import MAX_SMALL_FRAGMENTS

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a tmpfs needs root (CI runs as root)"
)


@pytest.fixture()
def tmpfs(tmp_path: Path):
    """A real 3 MiB tmpfs, unmounted afterwards."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(mnt: Path, leave: int) -> Path:
    """Fill the filesystem so that about ``leave`` bytes stay free (tmpfs counts whole pages)."""
    filler = mnt / "filler"
    filler.unlink(missing_ok=True)
    st = os.statvfs(mnt)
    free = st.f_bavail * st.f_frsize
    with open(filler, "wb") as f:
        if free > leave:
            f.write(b"\0" * (free - leave))
    return filler


def _count(store: MemoryStore, text: str) -> int:
    return (
        store.sql("SELECT count(*) AS n FROM text_memories WHERE content = ?", [text]).column("n")[0].as_py()
    )


def test_disk_full_at_every_step_of_a_commit(model_home, tmpfs):
    path = tmpfs / "store"
    store = MemoryStore(path)
    for i in range(6):
        store.add(f"seed memory number {i} about the garden")
    outcomes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for step, leave in enumerate(range(0, 160 * 1024, 4096)):
        text = f"memory {step}: the parcel arrives on day {step} at the back door"
        filler = _fill(tmpfs, leave)
        try:
            got = MemoryStore(path).add(text)
        except AiosMemoryError as exc:
            got = None
            errors[type(exc).__name__] += 1
            assert "nothing was committed" in str(exc) or "nothing was written" in str(exc), exc
        filler.unlink()
        fresh = MemoryStore(path)  # reopen: what is on disk now
        if got is None:
            outcomes["raised"] += 1
            assert _count(fresh, text) == 0, f"step {step}: raised, yet the memory was committed"
            got = fresh.add(text)  # the retry, with space again: stored once
        else:
            outcomes["returned"] += 1
        assert fresh.get(got).content == text
        assert _count(fresh, text) == 1, f"step {step}: stored {_count(fresh, text)} times"
        report = fresh.verify()
        assert not [p for p in report["problems"] if "maintenance" not in p], report["problems"]
    maintenance = MemoryStore(path)._storage.maintenance()
    print(f"\ndisk-full sweep: {dict(outcomes)}, errors {dict(errors)}, maintenance now {maintenance}")
    assert outcomes["raised"] >= 5 and outcomes["returned"] >= 5  # the sweep crossed the commit's steps
    # compaction after a commit failed for lack of space at some step without failing that add
    assert MemoryStore(path).verify()["ok"] or maintenance


def test_damaged_older_fragment_does_not_fail_later_adds(model_home, tmp_path):
    store = MemoryStore(tmp_path / "s")
    ids = [store.add(f"a single memory about topic {i}") for i in range(8)]
    first = store._manifest().tables["text"].fragments[0]
    p = store.path / first.path
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])  # a damaged older fragment
    later = [store.add("a later memory about subject 0")]  # the 9th fragment: a compaction that reads it
    noted = store._storage.maintenance()
    later += [store.add(f"a later memory about subject {i}") for i in range(1, 40)]
    fresh = MemoryStore(tmp_path / "s")
    # committed: the newest version's intact fragments hold them (get() over DuckDB would open the
    # damaged fragment too, which is a StoreCorruptError naming it)
    intact = [f for f in fresh._manifest().tables["text"].fragments if f.path != first.path]
    rows = pa.concat_tables([pq.read_table(fresh.path / f.path, columns=["id", "content"]) for f in intact])
    committed = dict(zip(rows.column("id").to_pylist(), rows.column("content").to_pylist(), strict=True))
    for i, id_ in enumerate(later):
        assert committed[id_] == f"a later memory about subject {i}"
    # the compaction that met the damage was recorded, and merged the readable fragments around it
    assert "StoreCorruptError" in noted["compact text"]["error"]
    report = fresh.verify()
    assert not report["ok"]
    assert any(first.path in p for p in report["problems"])  # doctor keeps naming the damage itself
    # 48 single adds: without compaction 48 fragments; with it at most 9 a size tier (two tiers here)
    assert len(fresh._manifest().tables["text"].fragments) <= 2 * (MAX_SMALL_FRAGMENTS + 1)
    assert len(set(ids + later)) == 48


LOCK_HOLDER = textwrap.dedent(
    """
    import sys, time
    from filelock import FileLock
    with FileLock(sys.argv[1]):
        print("HELD", flush=True)
        sys.stdin.readline()
    """
)


def test_lock_timeout_raises_and_commits_nothing(model_home, tmp_path):
    path = tmp_path / "s"
    MemoryStore(path).add("first")
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(path / ".lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "HELD"
        store = MemoryStore(path, lock_timeout=0.5)
        with pytest.raises(StoreError, match="nothing was written"):
            store.add("blocked by the other process")
        assert _count(store, "blocked by the other process") == 0
    finally:
        holder.communicate("\n", timeout=10)
    store.add("blocked by the other process")  # the retry
    assert _count(MemoryStore(path), "blocked by the other process") == 1


STEPS = 24  # 0 to 368 KiB free in 16 KiB steps: an update or delete rewrites a whole fragment


def test_disk_full_during_update_and_delete(model_home, tmpfs):
    """The same sweep for the calls that rewrite a fragment: update and delete either happened (and
    returned) or did not happen at all (and raised), whatever step the disk ran out at."""
    path = tmpfs / "store"
    store = MemoryStore(path)
    ids = store.add_many([f"an item to change, number {i}" for i in range(2 * STEPS)])  # first half updated
    outcomes: Counter[str] = Counter()
    for step, leave in enumerate(range(0, STEPS * 16384, 16384)):
        target = ids[step]
        filler = _fill(tmpfs, leave)
        try:
            MemoryStore(path).update(target, metadata={"step": step})
            updated = True
        except AiosMemoryError:
            updated = False
        filler.unlink()
        filler = _fill(tmpfs, leave)  # the same space left for the delete
        try:
            MemoryStore(path).delete(ids[-1 - step])
            deleted = True
        except AiosMemoryError:
            deleted = False
        filler.unlink()
        fresh = MemoryStore(path)
        assert (fresh.get(target).metadata == {"step": step}) == updated, f"step {step}: update"
        gone = _count(fresh, f"an item to change, number {2 * STEPS - 1 - step}") == 0
        assert gone == deleted, f"step {step}: delete"
        outcomes[f"update {'returned' if updated else 'raised'}"] += 1
        outcomes[f"delete {'returned' if deleted else 'raised'}"] += 1
    print(f"\nupdate/delete under a full disk: {dict(outcomes)}")
    assert outcomes["update raised"] and outcomes["update returned"]
    assert outcomes["delete raised"] and outcomes["delete returned"]
