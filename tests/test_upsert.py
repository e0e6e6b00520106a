"""``store.upsert`` / ``upsert_many``: replace-or-insert under the caller's id in one commit (issue 17).

Six threads (and four processes) calling the LangChain adapter's ``add_texts(ids=["same"])`` used to leave
six documents: a lookup, an add and a delete are three commits. An upsert is one commit under the
writers' lock, so concurrent upserts of one id leave exactly one memory with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import trigram_provider
from trigram_provider import NAME

from aios_memory import MemoryStore
from aios_memory.errors import AccessDeniedError, InvalidInputError
from aios_memory.scope import Scope

TESTS = Path(__file__).resolve().parent
IDS = ["alpha", "beta", "gamma"]


@pytest.fixture()
def tri(tmp_path: Path) -> MemoryStore:
    trigram_provider.register()
    return MemoryStore(tmp_path / "tri", providers={"text": NAME})


def ids_held(store: MemoryStore) -> list[str]:
    return sorted(store.sql("SELECT id FROM text_memories").column("id").to_pylist())


def test_insert_then_replace_semantic(store):
    assert store.upsert("doc-1", "The cat sleeps on the warm windowsill.", metadata={"v": 1}) == "doc-1"
    store.add("Quarterly revenue grew by twelve percent.")
    hit = store.search("a cat napping in the sun", k=1)[0]
    assert hit.id == "doc-1" and "cat" in hit.content
    created = store.get("doc-1").created_at

    assert store.upsert("doc-1", "Volcanoes erupt molten lava and ash.", metadata={"v": 2}) == "doc-1"
    mem = store.get("doc-1")
    assert mem.content == "Volcanoes erupt molten lava and ash." and mem.metadata == {"v": 2}
    assert mem.created_at == created and mem.updated_at is not None
    assert [m.id for m in store.search("lava from a volcano", k=1)] == ["doc-1"]
    assert all("cat" not in m.content for m in store.search("a cat napping in the sun", k=5))
    assert store.sql("SELECT count(*) AS n FROM text_memories WHERE id = 'doc-1'").column("n")[0].as_py() == 1
    hist = store.history("doc-1")
    assert [h["operation"] for h in hist] == ["add", "update"]
    assert hist[0]["content"].startswith("The cat") and hist[0]["metadata"] == {"v": 1}
    assert hist[1]["content"].startswith("Volcanoes") and hist[1]["version"] == store.version
    assert store.verify()["ok"]


def test_upsert_many_mixes_new_and_existing(tri):
    tri.upsert_many(["a", "b"], ["first a", "first b"], metadata=[{"n": 1}, {"n": 2}])
    v = tri.version
    assert tri.upsert_many(["b", "c", "a"], ["second b", "first c", "second a"]) == ["b", "c", "a"]
    assert tri.version == v + 1  # one commit
    assert ids_held(tri) == ["a", "b", "c"]
    assert {i: tri.get(i).content for i in "abc"} == {"a": "second a", "b": "second b", "c": "first c"}
    assert [h["operation"] for h in tri.history("a")] == ["add", "update"]
    assert [h["operation"] for h in tri.history("c")] == ["add"]


def test_upsert_after_delete_keeps_the_history_whole(tri):
    tri.upsert("re", "first life")
    tri.delete("re")
    tri.upsert("re", "second life")
    tri.upsert("re", "second life, edited")
    hist = tri.history("re")
    assert [(h["operation"], h["content"]) for h in hist] == [
        ("add", "first life"),
        ("delete", None),
        ("add", "second life"),
        ("update", "second life, edited"),
    ]
    assert hist[1] == {**hist[1], "metadata": None, "source": None}
    assert [h["version"] for h in hist] == [1, 2, 3, 4]


def test_upsert_stores_duplicates_under_their_own_ids(tri):
    existing = tri.add("same words")
    tri.upsert_many(["x", "y"], ["same words", "same words"])  # exact dedupe would merge these
    assert ids_held(tri) == sorted([existing, "x", "y"])
    assert tri.add("same words") in {existing, "x", "y"}  # an add still dedupes


def test_upsert_moves_a_memory_between_namespaces_it_sees(tri):
    tri.upsert("m", "in one", namespace="one")
    tri.upsert("m", "in two", namespace="two")
    assert tri.get("m").namespace == "two" and ids_held(tri) == ["m"]


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.upsert_many(["k", "k"], ["one", "two"]),
        lambda s: s.upsert_many(["k", ""], ["one", "two"]),
        lambda s: s.upsert_many(["k", 3], ["one", "two"]),
        lambda s: s.upsert_many(["k", "\ud800"], ["one", "two"]),
        lambda s: s.upsert_many(["k"], ["one", "two"]),
        lambda s: s.upsert_many("kl", ["one", "two"]),
        lambda s: s.upsert_many(["k", "l"], ["one", ""]),
        lambda s: s.upsert("", "one"),
        lambda s: s.upsert(None, "one"),
        lambda s: s.upsert("k", "one", namespace=""),
        lambda s: s.upsert("k", "one", metadata="nope"),
    ],
)
def test_bad_input_is_typed_and_changes_nothing(tri, call):
    tri.upsert("k", "original")
    v = tri.version
    with pytest.raises(InvalidInputError):
        call(tri)
    assert tri.version == v and tri.get("k").content == "original" and ids_held(tri) == ["k"]


def test_scope_is_respected(tri):
    tri.upsert("theirs", "a memory of agent b", namespace="b")
    a = tri.scoped(Scope.of(["a"], label="agent-a"))
    v = tri.version
    with pytest.raises(AccessDeniedError):
        a.upsert("theirs", "overwrite", namespace="a")  # held where agent a cannot see
    with pytest.raises(AccessDeniedError):
        a.upsert("new", "elsewhere", namespace="b")  # a namespace outside the scope
    with pytest.raises(AccessDeniedError):
        tri.scoped(Scope.of(["a"], write=False)).upsert("new", "read only", namespace="a")
    assert tri.version == v and tri.get("theirs").content == "a memory of agent b"
    assert a.upsert("mine", "agent a's", namespace="a") == "mine"


def test_threads_upserting_the_same_ids(tri):
    from threads import run_concurrently

    written: dict[str, set[str]] = {i: set() for i in IDS}

    def work(t: int) -> None:
        for n in range(20):
            id_ = IDS[n % 3]
            text = f"thread {t} write {n} for {id_}"
            written[id_].add(text)
            tri.upsert(id_, text)

    assert not run_concurrently(6, work)
    assert ids_held(tri) == IDS
    for id_ in IDS:
        assert tri.get(id_).content in written[id_]
    assert tri.verify()["ok"]


CHILD = textwrap.dedent(
    f"""
    import sys
    sys.path.insert(0, {str(TESTS)!r})
    import trigram_provider
    trigram_provider.register()
    from aios_memory import MemoryStore
    store = MemoryStore(sys.argv[1], providers={{"text": {NAME!r}}}, lock_timeout=300)
    w, rounds = sys.argv[2], int(sys.argv[3])
    ids = {IDS!r}
    for n in range(rounds):
        if n % 2:
            store.upsert_many(ids, [f"process {{w}} round {{n}} {{i}}" for i in ids])
        else:
            store.upsert(ids[n % 3], f"process {{w}} round {{n}} {{ids[n % 3]}}")
        print(n, flush=True)
    """
)


def test_processes_upserting_the_same_ids(tri):
    path = str(tri.path)
    procs = [
        subprocess.Popen([sys.executable, "-c", CHILD, path, str(w), "20"], stderr=subprocess.PIPE, text=True)
        for w in range(4)
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    store = MemoryStore(path, providers={"text": NAME})
    assert ids_held(store) == IDS
    for id_ in IDS:
        content = store.get(id_).content
        assert content.startswith("process ") and content.endswith(f" {id_}")
    assert store.verify()["ok"]


def test_kill_mid_upsert_loop_leaves_one_memory_per_id(tri):
    path = str(tri.path)
    for run in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, path, f"k{run}", "1000"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout is not None
        proc.stdout.readline(), proc.stdout.readline()  # two rounds done: every id is held
        time.sleep(0.05 + 0.07 * run)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        store = MemoryStore(path, providers={"text": NAME})  # opens after the kill
        report = store.verify()
        assert report["ok"], report
        held = ids_held(store)
        assert len(held) == len(set(held)) and set(held) <= set(IDS)
    assert ids_held(store) == IDS
