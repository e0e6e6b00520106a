"""``verify``/``doctor`` and ``create_index`` trust nothing derived: sidecars and ANN index files are
checked against the sha256 their manifest recorded; a search never uses a damaged one (it ranks exactly
and says so); ``create_index`` repairs; a manifest cannot make the store read or delete outside itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest import run_cli
from test_vectors import DIM, NAME, _random, register, seeded, sql_ranking, write_rows

from aios_memory import MemoryStore
from aios_memory.errors import QueryError, StoreCorruptError, StoreError
from aios_memory.storage import Manifest, manifest_name

TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture()
def vstore(tmp_path):
    register()
    return MemoryStore(tmp_path / "store", providers={"text": NAME})


def _fresh(store: MemoryStore) -> MemoryStore:
    from aios_memory.vectors import CACHE, DAMAGED

    CACHE.clear()  # a new process: nothing checked or mapped yet
    DAMAGED.clear()
    return MemoryStore(store.path, providers={"text": NAME})


def test_one_overwritten_sidecar_row_is_found_and_never_ranks_wrong(vstore):
    """Issue finding: one row of an .embedding.f32 overwritten; verify said ok and search scored the true
    match 0.049 where SQL over the Parquet column gave 0.817."""
    vecs = _random(40, 3)
    ids = write_rows(vstore, vecs)
    frag = vstore._manifest().tables["text"].fragments[0]
    side = vstore.path / frag.sidecar_path("embedding.f32")
    with open(side, "r+b") as f:  # row 7 becomes another vector; its norm stays
        f.seek(7 * DIM * 4)
        f.write(np.random.default_rng(9).standard_normal(DIM).astype("<f4").tobytes())
    report = vstore.verify()
    assert (
        not report["ok"]
        and "sha256" in report["problems"][0]
        and frag.sidecar_path("embedding.f32") in report["problems"][0]
    )
    store = _fresh(vstore)
    qtext = "seed:7"  # a query whose exact ranking SQL over the Parquet column gives
    explain = store.explain_search(qtext, k=3)
    assert explain["parquet_fallback"] == 1
    assert [m.id for m in explain["results"]] == sql_ranking(store, qtext, 3)
    q = seeded(qtext)
    want = vecs @ q / (np.linalg.norm(vecs, axis=1) * np.linalg.norm(q))
    for m in explain["results"]:
        assert abs(m.score - want[ids.index(m.id)]) < 1e-6  # the Parquet truth, not the damaged sidecar


def _indexed(vstore, n: int = 3000) -> list[str]:
    from test_ann import clustered

    pytest.importorskip("usearch", reason='usearch is not installed: pip install -e ".[test]"')
    ids = write_rows(vstore, clustered(n, 5, dim=DIM))
    vstore.create_index("text")
    return ids


@pytest.mark.parametrize("damage", ["truncate", "delete", "overwrite"])
def test_damaged_index_falls_back_to_exact_and_create_index_repairs(vstore, damage):
    _indexed(vstore)
    index = vstore._manifest().tables["text"].index
    p = vstore.path / index.path
    exact = [m.id for m in vstore.search("seed:11", k=10, exact=True)]
    if damage == "truncate":
        p.write_bytes(p.read_bytes()[:112])
    elif damage == "delete":
        p.unlink()
    else:
        raw = bytearray(p.read_bytes())
        raw[len(raw) // 2 : len(raw) // 2 + 64] = os.urandom(64)
        p.write_bytes(bytes(raw))
    store = _fresh(vstore)
    explain = store.explain_search("seed:11", k=10)
    assert explain["path"] == "exact" and explain["index_damaged"]
    assert "create_index" in explain["index_not_used"]
    assert [m.id for m in explain["results"]] == exact  # never [] silently
    report = store.verify()
    assert not report["ok"] and any("ANN index cannot be used" in x for x in report["problems"])
    with pytest.raises(QueryError, match="no usable ANN index"):
        store.search("seed:11", k=10, exact=False)
    built = store.create_index("text")  # repairs: a full rebuild, not an extension of the damaged file
    assert built["committed"] and built["rows"] == 3000
    store = _fresh(vstore)
    assert store.verify()["ok"]
    explain = store.explain_search("seed:11", k=10)
    assert explain["path"] == "ann"
    assert len(set(m.id for m in explain["results"]) & set(exact)) >= 8


CLEANER = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {tests!r})
    from test_vectors import NAME, register
    register()
    from aios_memory import MemoryStore
    store = MemoryStore(sys.argv[1], providers={{"text": NAME}})
    print("READY", flush=True)
    end = time.time() + float(sys.argv[2])
    n = 0
    while time.time() < end and not os.path.exists(sys.argv[3]):
        store.cleanup(older_than=0)
        n += 1
    print(n, flush=True)
    """
)


def test_create_index_racing_cleanup_never_commits_a_missing_index(vstore):
    """Issue finding: cleanup deleted the index file between its build and its commit; every search then
    failed, and a later create_index committed an empty 112-byte index that verify() called ok."""
    _indexed(vstore, 2000)
    stop = vstore.path.parent / "stop"
    cleaner = subprocess.Popen(
        [sys.executable, "-c", CLEANER.format(tests=TESTS), str(vstore.path), "20", str(stop)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert cleaner.stdout.readline().strip() == "READY"
    rounds = 0
    try:
        while cleaner.poll() is None and rounds < 12:
            write_rows(vstore, _random(50, 100 + rounds))
            vstore.create_index("text", expansion_search=600 + rounds)  # a new file each time
            rounds += 1
            store = _fresh(vstore)
            index = store._manifest().tables["text"].index
            assert (store.path / index.path).exists()
            explain = store.explain_search("seed:3", k=5)
            assert explain["path"] == "ann" and len(explain["results"]) == 5, explain
    finally:
        stop.touch()
        out = cleaner.communicate(timeout=60)[0]
    print(f"\n{rounds} create_index commits raced {out.strip()} cleanup(older_than=0) calls")
    assert rounds >= 3
    assert _fresh(vstore).verify()["ok"]


def test_the_index_file_is_written_under_the_writers_lock(vstore, monkeypatch):
    """What makes the race above impossible: cleanup deletes only under the writers' lock, after taking in
    the versions committed meanwhile, and the index file exists only from inside its own commit."""
    import aios_memory.storage.ann as ann

    _indexed(vstore, 500)
    real, held = ann.PendingIndex.write, []

    def write(self, storage, modality):
        held.append(storage._lock.is_locked)
        return real(self, storage, modality)

    monkeypatch.setattr(ann.PendingIndex, "write", write)
    write_rows(vstore, _random(20, 77))
    assert vstore.create_index("text")["committed"]
    assert held == [True]
    assert _fresh(vstore).verify()["ok"]


def _commit_raw(store: MemoryStore, edit) -> None:
    """Write the next manifest by hand (as an attacker or a broken tool would), with a valid checksum."""
    m = store._manifest()
    new = m.copy()
    edit(new)
    new.version = m.version + 1
    new.created_at = time.time()
    (store.path / manifest_name(new.version)).write_bytes(new.to_bytes())


@pytest.mark.parametrize("where", ["relative", "absolute"])
def test_a_manifest_naming_files_outside_the_store_is_refused(vstore, tmp_path, where):
    write_rows(vstore, _random(5, 1))
    other = MemoryStore(tmp_path / "other", providers={"text": NAME})
    write_rows(other, _random(5, 2))
    theirs = other._manifest().tables["text"].fragments[0]
    target = (
        f"data/text/../../../other/{theirs.path}" if where == "relative" else str(other.path / theirs.path)
    )
    frag = vstore._manifest().tables["text"].fragments[0]

    def point_outside(m: Manifest) -> None:
        from dataclasses import replace

        m.tables["text"].fragments = [replace(frag, path=target)]

    _commit_raw(vstore, point_outside)
    with pytest.raises(StoreCorruptError, match="not a file of this store"):
        MemoryStore(vstore.path, providers={"text": NAME})
    proc = run_cli("--store", str(vstore.path), "doctor", check=False)
    assert proc.returncode != 0 and "not a file of this store" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    assert other.verify()["ok"] and (other.path / theirs.path).exists()


def test_cleanup_never_follows_a_symlink_out_of_the_store(vstore, tmp_path):
    """Issue finding: with data/ a symlink into another store, cleanup deleted that store's fragments."""
    other = MemoryStore(tmp_path / "other", providers={"text": NAME})
    write_rows(other, _random(5, 2))
    write_rows(other, _random(5, 3))
    other.compact()  # the two old fragments are now unreferenced in `other` too... but young
    theirs = sorted(p.name for p in (other.path / "data" / "text").iterdir())
    os.rename(vstore.path / "data", tmp_path / "data-away")
    os.symlink(other.path / "data", vstore.path / "data")
    with pytest.raises(StoreError, match="symlink"):
        vstore.cleanup(older_than=0)
    assert sorted(p.name for p in (other.path / "data" / "text").iterdir()) == theirs
    report = vstore.verify()
    assert not report["ok"] and any("symlink" in p for p in report["problems"])


def test_doctor_cli_reports_maintenance_as_json(vstore):
    write_rows(vstore, _random(3, 1))
    vstore._storage.note_maintenance("compact text", OSError(28, "No space left on device"))
    proc = run_cli("--store", str(vstore.path), "doctor", check=False)
    report = json.loads(proc.stdout)
    assert proc.returncode == 1 and not report["ok"]
    assert "No space left" in report["maintenance"]["compact text"]["error"]
    vstore._storage.note_maintenance("compact text", None)
    proc = run_cli("--store", str(vstore.path), "doctor", check=False)
    assert proc.returncode == 0 and json.loads(proc.stdout)["ok"]


def test_a_failed_maintenance_note_clears_once_maintenance_works(vstore):
    write_rows(vstore, _random(3, 1))
    vstore._storage.note_maintenance("compact text", OSError(28, "No space left on device"))
    assert not vstore.verify()["ok"]
    vstore.add("a new memory")  # its maintenance has nothing to merge: the failure is over
    assert vstore.verify()["ok"] and vstore._storage.maintenance() == {}


def test_sidecars_are_hashed_once_per_process_even_when_their_maps_are_evicted(vstore, monkeypatch):
    """Review finding: with more fragments than the handle cap every search re-hashed its sidecars."""
    import hashlib

    import aios_memory.storage.cache as cache

    for i in range(6):
        write_rows(vstore, _random(3, 10 + i))
    store = _fresh(vstore)
    monkeypatch.setattr(cache.CACHE, "max_handles", 2)
    hashed = []
    real = hashlib.sha256

    def counting(data=b""):
        hashed.append(len(memoryview(data).cast("B")))
        return real(data)

    monkeypatch.setattr(cache.hashlib, "sha256", counting)
    for i in range(4):
        assert [m.id for m in store.search(f"seed:{i}", k=3)] == sql_ranking(store, f"seed:{i}", 3)
    sidecar = 3 * (DIM + 1) * 4  # bytes of one fragment's vector sidecar (manifests are hashed too)
    assert hashed.count(sidecar) == 6  # each sidecar once, though its map was evicted and made again


def test_a_passing_failure_to_map_is_not_remembered_as_damage(vstore, monkeypatch):
    """Review finding: an EMFILE while mapping marked the sidecar damaged for the rest of the process."""
    import errno

    import aios_memory.storage.local as vectors

    write_rows(vstore, _random(5, 1))
    store = _fresh(vstore)
    real, calls = vectors.map_file, []

    def flaky(path):
        calls.append(path)
        if len(calls) == 1:
            raise OSError(errno.EMFILE, "Too many open files")
        return real(path)

    monkeypatch.setattr(vectors, "map_file", flaky)
    first = store.explain_search("seed:1", k=3)  # this once from the Parquet column
    assert [m.id for m in first["results"]] == sql_ranking(store, "seed:1", 3)
    second = store.explain_search("seed:1", k=3)
    assert len(calls) == 2  # the map was tried again, not refused for good
    assert second["parquet_fallback"] == 0
    assert [m.id for m in second["results"]] == [m.id for m in first["results"]]
    from aios_memory.vectors import DAMAGED

    assert DAMAGED == {}
