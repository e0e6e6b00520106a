"""Time travel (aios_memory.timetravel): ``MemoryStore(path, as_of=version | datetime)`` reads exactly what
a copy of the store taken at that version reads; the past is read-only; ``versions`` lists what is
retained; the retention period is a store setting that cleanup honours.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time

import pytest
from conftest import run_cli
from trigram_provider import NAME, register

from aios_memory import MemoryStore
from aios_memory.errors import AccessDeniedError, InvalidInputError, MemoryNotFoundError, VersionNotFoundError

PROVIDERS = {"text": NAME}


def _state(store: MemoryStore) -> dict:
    """Everything a reader sees: every row (contents, metadata, times), a few searches, gets."""
    rows = store.sql(
        "SELECT id, namespace, content, metadata, created_at, updated_at FROM text_memories ORDER BY id"
    ).to_pylist()
    found = {
        q: [(h.id, round(h.score, 6), h.content) for h in store.search(q, k=4)]
        for q in ("orange kite", "gate code", "the weather")
    }
    got = {}
    for r in rows[:3]:
        m = store.get(r["id"])
        got[r["id"]] = (m.content, m.metadata)
    return {"rows": rows, "search": found, "get": got}


@pytest.fixture()
def history(tmp_path):
    """A store changed by six commits (adds, an update, a delete, a compaction), a copy of its directory
    taken after each commit, and a moment inside each version's lifetime."""
    register()
    path = tmp_path / "store"
    store = MemoryStore(path, providers=PROVIDERS)
    copies, moments = {}, {}
    before_first = dt.datetime.now(dt.timezone.utc)
    time.sleep(0.02)

    def snap() -> None:
        v = store.version
        shutil.copytree(path, tmp_path / f"copy-{v}")
        copies[v] = tmp_path / f"copy-{v}"
        time.sleep(0.02)
        moments[v] = dt.datetime.now(dt.timezone.utc)
        time.sleep(0.02)

    ids = store.add_many(["the orange kite is in the shed", "gate code 4471", "sunny weather all week"],
                         metadata={"n": 1})  # fmt: skip
    snap()
    store.add_many(["a second kite, red", "rain expected tomorrow"], metadata={"n": 2})
    snap()
    store.update(ids[1], "gate code changed to 9902", metadata={"n": 3})
    snap()
    store.delete(ids[0])
    snap()
    store.compact()
    snap()
    store.add("the orange kite was found again")
    snap()
    return path, store, copies, moments, before_first


def test_as_of_reads_equal_a_copy_taken_then(history):
    path, _store, copies, moments, _ = history
    assert len(copies) == 6
    for v, copy in copies.items():
        want = _state(MemoryStore(copy, providers=PROVIDERS))
        past = MemoryStore(path, providers=PROVIDERS, as_of=v)
        assert past.version == v
        assert _state(past) == want, f"version {v}"
        by_time = MemoryStore(path, providers=PROVIDERS, as_of=moments[v])
        assert by_time.version == v
        naive = moments[v].astimezone(dt.timezone.utc).replace(tzinfo=None)  # naive: UTC
        assert MemoryStore(path, providers=PROVIDERS, as_of=naive).version == v
    # the updated memory as it was: its old content before the update, the new one after
    first, third = MemoryStore(path, as_of=1), MemoryStore(path, as_of=3)
    old = [r for r in first.sql("SELECT content FROM text_memories").to_pylist() if "gate" in r["content"]]
    new = [r for r in third.sql("SELECT content FROM text_memories").to_pylist() if "gate" in r["content"]]
    assert old == [{"content": "gate code 4471"}] and new == [{"content": "gate code changed to 9902"}]


def test_the_past_is_read_only_and_bad_as_of_is_typed(history):
    path, store, _copies, _moments, before_first = history
    newest = store.version
    past = MemoryStore(path, providers=PROVIDERS, as_of=2)
    some = past.sql("SELECT id FROM text_memories LIMIT 1").to_pylist()[0]["id"]
    for write in (
        lambda: past.add("not stored"),
        lambda: past.add_many(["a", "b"]),
        lambda: past.delete(some),
        lambda: past.update(some, "changed"),
        lambda: past.compact(),
        lambda: past.cleanup(),
        lambda: past.set_retention(10),
        lambda: past.checkout(None),
    ):
        with pytest.raises(AccessDeniedError, match="as of version 2"):
            write()
    assert store.version == newest and past.version == 2
    empty = MemoryStore(path, providers=PROVIDERS, as_of=before_first)
    assert empty.version == 0 and empty.search("kite") == []
    with pytest.raises(MemoryNotFoundError):
        empty.get(some)
    with pytest.raises(VersionNotFoundError, match="no version 99"):
        MemoryStore(path, as_of=99)
    for bad in (-1, True, "3", 2.5):
        with pytest.raises(InvalidInputError):
            MemoryStore(path, as_of=bad)


def test_versions_list_changes_and_the_cli_agrees(history):
    path, store, _copies, _moments, _ = history
    log = store.versions()
    assert [e["version"] for e in log] == [6, 5, 4, 3, 2, 1]
    ops = [e["operation"] for e in log]
    assert ops[0].startswith("add") and ops[1].startswith("compact") and ops[2].startswith("delete")
    assert log[-1]["change"] is None and log[-1]["rows"] == {"text": 3}
    assert log[-2]["change"] == {"text": 2} and log[2]["change"] == {"text": -1} and log[1]["change"] == {}
    assert store.versions(limit=2) == log[:2]
    assert log[0]["committed_at"] > log[-1]["committed_at"]
    out = run_cli("--store", str(path), "versions")
    assert json.loads(out.stdout) == log
    with pytest.raises(InvalidInputError):
        store.versions(limit=0)


def test_retention_is_a_store_setting_that_cleanup_honours(history):
    path, store, _copies, moments, _ = history
    assert store.retention == 3600.0  # the default
    v = store.set_retention(0.2)
    assert v == store.version == 7 and store.versions(limit=1)[0]["operation"] == "set retention 0.2 s"
    keeper = MemoryStore(path, providers=PROVIDERS, retention=3600)  # an explicit value wins for its handle
    time.sleep(0.5)
    assert keeper.cleanup()["versions_removed"] == 0
    assert MemoryStore(path, as_of=1).version == 1  # still there
    reopened = MemoryStore(path, providers=PROVIDERS)  # no value given: the store's setting
    assert reopened.retention == 0.2
    reopened.cleanup()
    assert [e["version"] for e in reopened.versions()] == [7]
    with pytest.raises(VersionNotFoundError, match="no longer retained"):
        MemoryStore(path, as_of=3)
    with pytest.raises(VersionNotFoundError, match="retains no version from"):
        MemoryStore(path, as_of=moments[2])
    assert _state(MemoryStore(path, providers=PROVIDERS, as_of=7)) == _state(reopened)
    cli = run_cli("--store", str(path), "retention")
    assert json.loads(cli.stdout) == {"retention": 0.2}
    with pytest.raises(InvalidInputError):
        store.set_retention(-1)


def test_review_regressions(history, tmp_path, monkeypatch):
    """The committed_at that versions() prints opens that version; a past view of a missing path creates
    nothing; a clock stepped back cannot make a later version look older."""
    from aios_memory.errors import StoreNotFoundError

    path, store, _copies, _moments, _ = history
    for entry in store.versions():
        at = dt.datetime.fromisoformat(entry["committed_at"])
        assert MemoryStore(path, as_of=at).version == entry["version"]
    missing = tmp_path / "no-such-store"
    with pytest.raises(StoreNotFoundError):
        MemoryStore(missing, as_of=0)
    assert not missing.exists()
    newest = store.version
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 60)  # this process's clock, one minute behind
    store.add("written with a slow clock")
    monkeypatch.undo()
    log = store.versions(limit=2)
    assert log[0]["version"] == newest + 1 and log[0]["committed_at"] >= log[1]["committed_at"]
    just_before = dt.datetime.fromisoformat(log[1]["committed_at"])
    assert MemoryStore(path, as_of=just_before).version in (newest, newest + 1)
