"""Storage: numbered manifests created exclusively over immutable fragments, on a real directory."""

from __future__ import annotations

import os
import time

import pyarrow as pa
import pytest

from aios_memory.errors import StoreCorruptError, StoreError
from aios_memory.storage import VERSIONS, Manifest, Storage, TableState, manifest_name


def _table(n: int, start: int = 0) -> pa.Table:
    return pa.table({"id": [str(i) for i in range(start, start + n)]})


def _append(storage: Storage, n: int, start: int = 0) -> Manifest:
    def build(m: Manifest) -> Manifest:
        state = m.tables.setdefault("text", TableState("text", "p", 3, {"provider": "p"}))
        state.fragments.append(storage.write_fragment("text", _table(n, start)))
        return m

    return storage.commit("add", build)


def _removed(report: dict) -> tuple[int, int]:
    return report["versions_removed"], report["files_removed"]


def test_empty_store_is_version_zero(tmp_path):
    s = Storage(tmp_path / "s")
    assert s.latest_version() == 0 and s.read_manifest().tables == {}


def test_commits_number_versions_and_keep_old_ones(tmp_path):
    s = Storage(tmp_path / "s")
    m1 = _append(s, 3)
    m2 = _append(s, 2, 3)
    assert (m1.version, m2.version) == (1, 2)
    assert s.versions() == [1, 2]
    assert s.read_manifest(1).tables["text"].rows == 3  # a reader pinned to v1 still sees v1
    assert s.read_manifest().tables["text"].rows == 5


def test_manifest_is_created_exclusively(tmp_path):
    s = Storage(tmp_path / "s")
    _append(s, 1)
    assert s.backend.create_exclusive(manifest_name(1), b"{}") is False  # v1 exists: never overwritten
    assert s.read_manifest(1).tables["text"].rows == 1


def test_commit_rebases_when_another_writer_won(tmp_path):
    """A writer that does not share the lock (object storage) loses the race, re-reads and retries."""
    s = Storage(tmp_path / "s")
    other = Storage(tmp_path / "s")
    calls = []

    def build(m: Manifest) -> Manifest:
        calls.append(m.version)
        if len(calls) == 1:  # meanwhile, another writer commits version 1
            _append(other, 4, 100)
        state = m.tables.setdefault("text", TableState("text", "p", 3, {"provider": "p"}))
        state.fragments.append(s.write_fragment("text", _table(1)))
        return m

    # take the other writer's lock path out of the way by using the backend's exclusive create directly
    other._lock = type(other._lock)(str(tmp_path / "other.lock"))
    m = s.commit("add", build)
    assert calls == [0, 1] and m.version == 2 and m.tables["text"].rows == 5


def test_damaged_manifest_is_a_clear_error(tmp_path):
    s = Storage(tmp_path / "s")
    _append(s, 2)
    p = s.backend.path(manifest_name(1))
    raw = p.read_bytes()
    assert raw.count(b'"rows":2') == 1  # compact canonical JSON (manifests before were pretty-printed)
    p.write_bytes(raw.replace(b'"rows":2', b'"rows":9'))
    with pytest.raises(StoreCorruptError, match="checksum"):
        s.read_manifest()
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(StoreCorruptError, match="damaged"):
        s.read_manifest()


def test_temp_files_and_foreign_names_are_not_versions(tmp_path):
    s = Storage(tmp_path / "s")
    _append(s, 1)
    (s.root / VERSIONS / ".tmp-abc").write_bytes(b"partial")
    (s.root / VERSIONS / "notes.txt").write_text("x")
    assert s.versions() == [1]


def test_cleanup_removes_only_unreferenced_old_files(tmp_path):
    s = Storage(tmp_path / "s")
    m1 = _append(s, 1)
    orphan = s.write_fragment("text", _table(1))  # written, never committed (a crashed writer)

    def replace(m: Manifest) -> Manifest:
        m.tables["text"].fragments = [s.write_fragment("text", _table(7))]
        return m

    s.commit("compact", replace)
    assert _removed(s.cleanup(older_than=3600)) == (0, 0)  # too young
    old = time.time() - 7200
    for rel in [manifest_name(1), manifest_name(2), m1.tables["text"].fragments[0].path, orphan.path]:
        os.utime(s.backend.path(rel), (old, old))
    assert _removed(s.cleanup(older_than=3600)) == (1, 2)
    assert s.versions() == [2] and s.read_manifest().tables["text"].rows == 7


def test_cleanup_spares_a_version_superseded_just_now(tmp_path):
    """Age counts from when a version stopped being the newest, not from when it was written: on a store
    idle for hours, a compact followed at once by cleanup must not pull files from under a reader."""
    s = Storage(tmp_path / "s")
    m1 = _append(s, 3)
    old = time.time() - 7200
    for rel in [manifest_name(1), m1.tables["text"].fragments[0].path]:
        os.utime(s.backend.path(rel), (old, old))

    def replace(m: Manifest) -> Manifest:
        m.tables["text"].fragments = [s.write_fragment("text", _table(3))]
        return m

    s.commit("compact", replace)  # version 1 superseded now
    assert _removed(s.cleanup(older_than=3600)) == (0, 0)
    pinned = s.read_manifest(1)
    assert all(s.backend.exists(f.path) for f in pinned.tables["text"].fragments)


def test_store_path_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(StoreError, match="not a directory"):
        Storage(f)
    with pytest.raises(StoreError, match="no store"):
        Storage(tmp_path / "absent", create=False)


def test_cleanup_spares_a_commit_in_progress(tmp_path):
    """A writer's temp manifest lives between its write and its link: even cleanup(older_than=0) leaves a
    young one alone (deleting it would fail that commit); a crashed writer's old one goes."""
    s = Storage(tmp_path / "s")
    _append(s, 1)
    young, old = s.root / VERSIONS / ".tmp-young", s.root / VERSIONS / ".tmp-old"
    young.write_bytes(b"being written")
    old.write_bytes(b"left by a crash")
    stale = time.time() - 3600
    os.utime(old, (stale, stale))
    s.cleanup(older_than=0)
    assert young.exists() and not old.exists()


def test_cleanup_holds_the_lock_briefly_and_reports_it(tmp_path):
    s = Storage(tmp_path / "s")
    for i in range(30):
        _append(s, 2, 10 * i)

    def squash(m: Manifest) -> Manifest:
        m.tables["text"].fragments = [s.write_fragment("text", _table(60))]
        return m

    s.commit("compact", squash)
    report = s.cleanup(older_than=0)
    assert report["versions_removed"] == 30 and report["files_removed"] == 30
    assert 0 < report["lock_held_max_s"] < 5
    assert s.versions() == [31]


def test_derived_files_stay_out_of_a_plain_parquet_reader(tmp_path):
    """Sidecars (and index files) live in data/<table>/_derived/, which pyarrow's dataset discovery skips
    (names starting with "_"): a plain ``pyarrow.dataset(data/<table>)`` reads the fragments only."""
    import pyarrow.dataset as ds
    from trigram_provider import NAME, register

    from aios_memory import MemoryStore

    register()
    store = MemoryStore(tmp_path / "s", providers={"text": NAME})
    store.add_many(["one", "two", "three"])
    derived = sorted(p.name.split(".", 1)[1] for p in (tmp_path / "s/data/text/_derived").iterdir())
    assert derived == ["content.blake2b", "created_at.i64", "embedding.f32"]
    assert ds.dataset(tmp_path / "s/data/text", format="parquet").to_table().num_rows == 3


def test_fragments_with_sidecars_beside_them_still_read_from_the_sidecars(tmp_path):
    """Stores written before _derived/ keep their sidecars beside the fragment (``derived`` false)."""
    import dataclasses

    from trigram_provider import NAME, register

    from aios_memory import MemoryStore

    register()
    store = MemoryStore(tmp_path / "s", providers={"text": NAME})
    store.add_many(["alpha", "beta", "gamma"])
    storage = store._storage

    def old_layout(m: Manifest) -> Manifest:
        state = m.tables["text"]
        moved = []
        for f in state.fragments:
            old = dataclasses.replace(f, derived=False)
            for s in f.sidecars:
                os.replace(storage.backend.path(f.sidecar_path(s)), storage.backend.path(old.sidecar_path(s)))
            moved.append(old)
        state.fragments = moved
        return m

    storage.commit("old layout", old_layout)
    frag = storage.read_manifest().tables["text"].fragments[0]
    assert not frag.derived and "/_derived/" not in frag.sidecar_path("embedding.f32")
    fresh = MemoryStore(tmp_path / "s")
    explain = fresh.explain_search("alpha", k=2)
    assert explain["parquet_fallback"] == 0 and explain["results"][0].content == "alpha"
    assert fresh.verify()["ok"]


def test_manifests_written_pretty_printed_before_still_read(tmp_path):
    """Manifests were indented JSON with the checksum among the sorted keys; they read as before, and a
    damaged one is still refused."""
    import hashlib
    import json

    s = Storage(tmp_path / "s")
    m = _append(s, 2)
    p = s.backend.path(manifest_name(m.version))
    body = json.loads(p.read_bytes())
    body.pop("checksum")
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"))
    body["checksum"] = hashlib.sha256(canon.encode()).hexdigest()
    old = json.dumps(body, sort_keys=True, indent=1).encode()
    p.write_bytes(old)
    assert s.read_manifest().to_bytes() == m.to_bytes()
    p.write_bytes(old.replace(b'"rows": 2', b'"rows": 3'))
    with pytest.raises(StoreCorruptError, match="checksum"):
        s.read_manifest()
