"""The store on object storage: a real S3 server (SeaweedFS, moto) on loopback, real writer processes.

Writers in different processes get different local lock directories, as if each ran on its own host:
only the create-only put of the next manifest (``If-None-Match: *``) keeps them from overwriting each
other's commits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from trigram_provider import NAME

from aios_memory import MemoryStore
from aios_memory.errors import StoreError
from aios_memory.storage.objectstore import _CHECKED

TESTS = Path(__file__).resolve().parent
WRITERS = int(os.environ.get("AIOS_MEMORY_S3_WRITERS", "4"))
COMMITS = int(os.environ.get("AIOS_MEMORY_S3_COMMITS", "12"))


@pytest.fixture(autouse=True)
def _trigram():
    import trigram_provider

    trigram_provider.register()


def _store(uri: str, opts: dict, tmp: Path, **kw) -> MemoryStore:
    opts = {**opts, "lock_dir": str(tmp / f"lock-{os.urandom(4).hex()}")}
    return MemoryStore(uri, storage_options=opts, providers={"text": NAME}, **kw)


def _versions(st: MemoryStore) -> list[int]:
    return st._storage.versions()


WRITER = textwrap.dedent(
    f"""
    import json, sys
    sys.path.insert(0, {str(TESTS)!r})
    import trigram_provider
    trigram_provider.register()
    from aios_memory import MemoryStore
    uri, opts, w, n = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    store = MemoryStore(uri, storage_options=opts, providers={{"text": {NAME!r}}}, lock_timeout=120)
    for i in range(n):
        ids = store.add_many([f"writer {{w}} memory {{i}} a", f"writer {{w}} memory {{i}} b"])
        print(json.dumps({{"ids": ids, "conflicts": store._storage.conflicts}}), flush=True)
    """
)


def _writer(uri: str, opts: dict, w: int, n: int, tmp: Path) -> subprocess.Popen:
    opts = {**opts, "lock_dir": str(tmp / f"host-{w}")}  # its own lock: as if on its own host
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, uri, json.dumps(opts), str(w), str(n)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _returned(out: str) -> tuple[list[str], int]:
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [i for line in lines for i in line["ids"]], max((x["conflicts"] for x in lines), default=0)


def test_the_store_works_on_s3_exactly_as_it_does_locally(s3_store_uri, tmp_path):
    uri, opts = s3_store_uri
    remote, local = _store(uri, opts, tmp_path), MemoryStore(tmp_path / "local", providers={"text": NAME})
    texts = [f"memory number {i} about {w}" for i, w in enumerate(["cats", "dogs", "rain", "stocks"] * 3)]
    for st in (remote, local):
        first = st.add_many(texts[:6])
        st.add_many(texts[6:], metadata={"batch": 2})
        st.update(first[0], metadata={"edited": True})
        st.delete(first[1])
        st.compact()
    assert remote.version == local.version == 5
    for q in ("cats", "rain memory", "stocks 7"):
        got = sorted((round(m.score, 6), m.content) for m in remote.search(q, k=20))  # ids break ties
        assert got == sorted((round(m.score, 6), m.content) for m in local.search(q, k=20))
        assert len(got) == 11
    sql = "SELECT content, metadata FROM text_memories WHERE content LIKE ? ORDER BY content"
    assert remote.sql(sql, ["%dogs%"]).to_pylist() == local.sql(sql, ["%dogs%"]).to_pylist()
    assert [h["operation"] for h in remote.history(remote.search("memory number 0", k=1)[0].id)] == [
        "add",
        "update",
    ]
    assert remote.verify()["ok"] and remote.verify()["orphans"] == []
    files = remote.files("text")
    assert len(files) == 1 and files[0].startswith(uri + "/data/text/") and files[0].endswith(".parquet")
    assert remote.cleanup(older_than=0)["versions_removed"] == 4
    assert _versions(remote) == [5] and remote.verify()["ok"]
    assert remote.sql("SELECT count(*) AS n FROM text_memories").to_pylist() == [{"n": 11}]
    reopened = MemoryStore(uri, storage_options=opts, create=False)
    assert reopened.version == 5 and reopened.get(remote.search("rain", k=1)[0].id).content


def test_concurrent_writer_processes_lose_nothing(s3_store_uri, tmp_path):
    """N writer processes (own lock each) × M commits: every returned id present once, versions 1..N·M
    contiguous, and the create-only put was actually contended (some commits retried)."""
    uri, opts = s3_store_uri
    procs = [_writer(uri, opts, w, COMMITS, tmp_path) for w in range(WRITERS)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    ids, conflicts = [], 0
    for out, _err in outs:
        got, c = _returned(out)
        ids += got
        conflicts += c
    st = _store(uri, opts, tmp_path)
    assert len(ids) == WRITERS * COMMITS * 2 == len(set(ids))
    stored = st.sql("SELECT id FROM text_memories").column("id").to_pylist()
    assert sorted(stored) == sorted(ids)
    versions = _versions(st)
    assert versions == list(range(1, st.version + 1))  # contiguous: no fork, no gap
    ops = [st._storage.read_manifest(v).operation for v in versions]
    assert ops.count("add 2") == WRITERS * COMMITS  # the rest: automatic compactions of small fragments
    assert all(op == "add 2" or op.startswith("compact") for op in ops), ops
    assert st.verify()["ok"]
    assert conflicts > 0, "the writers never raced: the test proved nothing"


def test_writers_killed_mid_commit_leave_a_consistent_store(s3_store_uri, tmp_path):
    uri, opts = s3_store_uri
    procs = [_writer(uri, opts, w, 400, tmp_path) for w in range(3)]
    firsts = [p.stdout.readline() for p in procs]  # each has committed once: now they all race
    for delay, p in zip((0.7, 0.3, 1.1), procs, strict=True):
        time.sleep(delay)
        os.kill(p.pid, signal.SIGKILL)
    outs = [first + p.communicate(timeout=60)[0] for first, p in zip(firsts, procs, strict=True)]
    assert all(p.returncode == -signal.SIGKILL for p in procs)
    returned = [i for out in outs for i in _returned(out)[0]]
    assert returned, "no writer committed before the kill"
    st = _store(uri, opts, tmp_path)
    stored = st.sql("SELECT id FROM text_memories").column("id").to_pylist()
    assert set(returned) <= set(stored) and len(stored) == len(set(stored))  # kept, never doubled
    assert len(stored) % 2 == 0  # each commit held two rows: none half-committed
    assert _versions(st) == list(range(1, st.version + 1))
    report = st.verify()
    assert report["ok"], report["problems"]
    ops = [st._storage.read_manifest(v).operation for v in _versions(st)]
    assert ops.count("add 2") == len(stored) // 2  # one version per returned-or-not commit that landed
    before = st.version
    new = st.add("after the crash")  # the store takes writes again (and may compact after it)
    assert st.version > before and st.get(new).content == "after the crash"


def test_a_pinned_reader_is_unaffected_by_later_commits(s3_store_uri, tmp_path):
    uri, opts = s3_store_uri
    writer = _store(uri, opts, tmp_path)
    writer.add_many(["alpha", "beta"])
    reader = _store(uri, opts, tmp_path)
    reader.checkout(1)
    before = (reader.sql("SELECT id FROM text_memories ORDER BY id").to_pylist(), reader.search("alpha", k=5))
    writer.add_many(["gamma", "delta"])
    writer.delete(writer.search("alpha", k=1)[0].id)
    writer.compact()
    after = (reader.sql("SELECT id FROM text_memories ORDER BY id").to_pylist(), reader.search("alpha", k=5))
    assert [m.id for m in after[1]] == [m.id for m in before[1]] and after[0] == before[0]
    assert writer.version == 4


def test_cleanup_never_deletes_what_a_version_names(s3_store_uri, tmp_path):
    """Cleanup racing two writer processes on other "hosts": with a grace period longer than a commit,
    every returned memory stays readable and verify finds every file each retained version names."""
    uri, opts = s3_store_uri
    procs = [_writer(uri, opts, w, 10, tmp_path) for w in range(2)]
    cleaner = _store(uri, opts, tmp_path, retention=2.0)
    removed = 0
    while any(p.poll() is None for p in procs):
        removed += cleaner.cleanup()["versions_removed"]
        time.sleep(0.2)
    ids = [i for p in procs for i in _returned(p.communicate()[0])[0]]
    time.sleep(2.5)
    removed += cleaner.cleanup()["versions_removed"]
    assert removed > 0
    stored = cleaner.sql("SELECT id FROM text_memories").column("id").to_pylist()
    assert sorted(stored) == sorted(ids) and len(ids) == 40
    assert cleaner.verify()["ok"] and cleaner.verify()["orphans"] == []


def test_a_server_that_ignores_create_only_puts_is_refused(no_condition_s3, tmp_path):
    bucket = no_condition_s3.make_bucket()
    opts = no_condition_s3.storage_options()
    _CHECKED.clear()
    with pytest.raises(StoreError, match="ignores create-only puts"):
        _store(f"s3://{bucket}/s", opts, tmp_path)
    single = _store(f"s3://{bucket}/s", {**opts, "single_writer": True}, tmp_path)
    single.add("one writer only")
    assert single.version == 1


def test_the_cli_works_on_an_s3_store(seaweed_s3, model_home, tmp_path):
    from conftest import run_cli

    bucket = seaweed_s3.make_bucket()
    uri = f"s3://{bucket}/cli"
    env = {**seaweed_s3.env(), "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    base = ["--store", uri, "--storage-option", f"lock_dir={tmp_path}"]
    added = run_cli(*base, "add", "a memory kept in a bucket", env=env).stdout.split()
    assert len(added) == 1
    rows = run_cli(*base, "sql", "SELECT id, content FROM text_memories", "--json", env=env).stdout
    assert added[0] in rows and "kept in a bucket" in rows
    files = run_cli(*base, "files", env=env).stdout.split()
    assert len(files) == 1 and files[0].startswith(f"{uri}/data/text/")
    bad = run_cli(*base, "--storage-option", "nonsense", "add", "x", env=env, check=False)
    assert bad.returncode != 0 and "KEY=VALUE" in bad.stderr
    # init on a bucket prefix: a first, empty version marks the store, so reading commands accept it
    fresh = ["--store", f"s3://{bucket}/fresh", "--storage-option", f"lock_dir={tmp_path}"]
    assert run_cli(*fresh, "stats", env=env, check=False).returncode == 1  # nothing there yet
    made = run_cli(*fresh, "init", env=env).stdout
    assert "(version 1)" in made and "it was a store already" not in made
    assert json.loads(run_cli(*fresh, "stats", env=env).stdout)["tables"] == {}
    assert "it was a store already" in run_cli(*fresh, "init", env=env).stdout


def test_rewrites_racing_on_other_hosts_revalidate_what_they_read(s3_store_uri, tmp_path):
    """Updates of one memory on "host" A race appends and then a delete on "host" B (separate locks):
    every retried rewrite re-reads the memory from the version it lands on, so the memory is never
    doubled, never resurrected, and no append is lost."""
    from aios_memory.errors import MemoryNotFoundError

    uri, opts = s3_store_uri
    a, b = _store(uri, opts, tmp_path), _store(uri, opts, tmp_path)
    target = a.add("the memory both hosts touch")
    appended, updates, errors = [], [], []

    def updater() -> None:
        for i in range(15):
            try:
                a.update(target, metadata={"round": i})
                updates.append(i)
            except MemoryNotFoundError:
                return
            except Exception as exc:  # anything else is a failure
                errors.append(exc)

    t = threading.Thread(target=updater)
    t.start()
    for i in range(15):
        appended += b.add_many([f"append {i}"])
    b.delete(target, missing_ok=True)
    t.join(120)
    assert not errors and a._storage.conflicts + b._storage.conflicts > 0
    ids = b.sql("SELECT id FROM text_memories").column("id").to_pylist()
    assert target not in ids and sorted(ids) == sorted(appended)
    assert _versions(b) == list(range(1, b.version + 1)) and b.verify()["ok"]
    ops = [b._storage.read_manifest(v).operation for v in _versions(b)]
    assert ops.count("update 1") == len(updates) and ops.count("delete 1") == 1


def test_a_version_cleanup_retired_is_gone_for_every_handle(s3_store_uri, tmp_path):
    uri, opts = s3_store_uri
    st = _store(uri, opts, tmp_path)
    st.add("first")
    assert st.files(version=1)
    st.add("second")
    st.add("third")
    assert st.cleanup(older_than=0)["versions_removed"] == 2
    from aios_memory.errors import VersionNotFoundError

    for call in (lambda: st.files(version=1), lambda: st.checkout(1)):
        with pytest.raises(VersionNotFoundError, match="no longer retained"):
            call()
    assert st.version == 3 and _versions(st) == [3]
