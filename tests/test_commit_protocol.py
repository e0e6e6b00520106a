"""The commit protocol on object storage, step by step against moto's S3 server (fast, one process).

Storage objects with different lock directories stand for writers on different hosts: only the
create-only put of the next manifest orders them. Builds that block on an event make a race (or a
writer stalled past cleanup) happen exactly where the test wants it.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

from aios_memory.storage import Manifest, Storage, manifest_name
from aios_memory.storage.objectstore import _CHECKED


def _storage(moto_s3, bucket: str, tmp: Path, **kw) -> Storage:
    opts = {**moto_s3.storage_options(), "lock_dir": str(tmp / os.urandom(4).hex())}
    return Storage(f"s3://{bucket}/p", storage_options=opts, **kw)


def test_a_lost_race_rebases_on_the_winner(moto_s3, tmp_path):
    """Two writers with separate locks: B commits while A is building; A's create of the same version
    fails, A re-reads, runs its build again on B's version and commits the next one."""
    bucket = moto_s3.make_bucket()
    a, b = _storage(moto_s3, bucket, tmp_path), _storage(moto_s3, bucket, tmp_path)
    seen: list[int] = []

    def build_a(m: Manifest) -> Manifest:
        seen.append(m.version)
        if len(seen) == 1:
            b.commit("b", lambda mb: mb)  # the other host wins the race for version 1
        return m

    assert a.commit("a", build_a).version == 2
    assert seen == [0, 1] and a.conflicts == 1 and b.conflicts == 0
    assert [a.read_manifest(v).operation for v in (1, 2)] == ["b", "a"]


def test_a_commit_that_landed_is_not_retried(moto_s3, tmp_path):
    """A create-only put whose answer was lost is retried by the client and meets its own object: the
    same bytes count as committed, other bytes as a lost race."""
    bucket = moto_s3.make_bucket()
    st = _storage(moto_s3, bucket, tmp_path)
    key = manifest_name(7)
    assert st.backend.create_exclusive(key, b"mine")
    assert st.backend.create_exclusive(key, b"mine")  # our own put, seen again
    assert not st.backend.create_exclusive(key, b"theirs")
    assert st.backend.read_bytes(key) == b"mine"


def test_a_stalled_writer_cannot_land_in_a_gap_cleanup_left(moto_s3, tmp_path):
    """A writer stalls after reading version 1; meanwhile others commit 2 and 3 and cleanup removes 1
    and 2. Its create of version 2 would succeed (the name is free again) but fork history: it is taken
    back and the commit retried on version 3."""
    bucket = moto_s3.make_bucket()
    a, b = _storage(moto_s3, bucket, tmp_path), _storage(moto_s3, bucket, tmp_path)
    b.commit("one", lambda m: m)
    go, stalled = threading.Event(), threading.Event()
    result: list[Manifest] = []

    def build(m: Manifest) -> Manifest:
        if not stalled.is_set():
            stalled.set()
            go.wait(30)
        return m

    t = threading.Thread(target=lambda: result.append(a.commit("stalled", build)))
    t.start()
    stalled.wait(30)
    b.commit("two", lambda m: m)
    b.commit("three", lambda m: m)
    assert b.cleanup(older_than=0)["versions_removed"] == 2
    go.set()
    t.join(30)
    assert result and result[0].version == 4
    assert b.versions() == [3, 4] and b.read_manifest(4).operation == "stalled"
    assert a.conflicts == 1


def test_moto_honours_the_condition_and_the_self_test_passes(moto_s3, tmp_path):
    _CHECKED.clear()
    st = _storage(moto_s3, moto_s3.make_bucket(), tmp_path)
    assert any(v for (ep, _b), v in _CHECKED.items() if ep == moto_s3.endpoint)
    assert not [k for k in st.backend.list("_versions") if re.match(r"\.probe-", k)]  # probe removed


def test_writers_stalled_past_cleanup_never_fork_the_chain(moto_s3, tmp_path):
    """A stalls on the empty store, C on version 1; B commits 1..3 and cleanup retires 1 and 2. Their
    names stay taken (tombstones), so A's and C's creates fail, they rebase, and the newest version
    holds every writer's change; no version is ever "committed" off the chain."""
    import pyarrow as pa

    bucket = moto_s3.make_bucket()
    a, b, c = (_storage(moto_s3, bucket, tmp_path) for _ in range(3))
    table = pa.table({"x": [1]})

    def appender(st: Storage, stall: threading.Event | None = None, go: threading.Event | None = None):
        frag = st.write_fragment("_history", table)

        def build(m: Manifest) -> Manifest:
            if stall is not None and not stall.is_set():
                stall.set()
                go.wait(30)
            m.history.append(frag)
            return m

        return build, frag.path

    go, done = threading.Event(), []
    stalls = [threading.Event(), threading.Event()]
    build_a, path_a = appender(a, stalls[0], go)
    ta = threading.Thread(target=lambda: done.append(a.commit("a", build_a)))
    ta.start()
    stalls[0].wait(30)
    paths_b = []
    build, path = appender(b)
    b.commit("b1", build)
    paths_b.append(path)
    build_c, path_c = appender(c, stalls[1], go)
    tc = threading.Thread(target=lambda: done.append(c.commit("c", build_c)))
    tc.start()
    stalls[1].wait(30)
    for name in ("b2", "b3"):
        build, path = appender(b)
        b.commit(name, build)
        paths_b.append(path)
    assert b.cleanup(older_than=0)["versions_removed"] == 2
    go.set()
    ta.join(30)
    tc.join(30)
    assert len(done) == 2 and sorted(m.version for m in done) == [4, 5]
    newest = b.read_manifest()
    assert newest.version == 5 and b.versions() == [3, 4, 5]
    assert {f.path for f in newest.history} == {*paths_b, path_a, path_c}
