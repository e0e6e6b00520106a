"""Memory semantics agents expect: near-duplicate memories are stored once, and every change is logged."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from aios_memory import InvalidInputError, MemoryNotFoundError, MemoryStore


def test_dedupe_returns_the_existing_id_and_stores_nothing(store):
    first = store.add("The user's favourite colour is green.", namespace="alice")
    version = store.version
    again = store.add("The user's favourite colour is green!", namespace="alice", dedupe=0.95)
    assert again == first
    assert store.version == version  # nothing committed
    assert store.stats()["tables"]["text"]["memories"] == 1


def test_dedupe_threshold_is_respected(store):
    store.add("The user's favourite colour is green.")
    # related but different: below a strict threshold it is a new memory
    other = store.add("The user's favourite colour is blue.", dedupe=0.999)
    assert store.get(other).content.endswith("blue.")
    assert store.stats()["tables"]["text"]["memories"] == 2


def test_dedupe_is_per_namespace(store):
    a = store.add("Meeting with Bob on Friday at noon.", namespace="alice")
    b = store.add("Meeting with Bob on Friday at noon.", namespace="carol", dedupe=True)
    assert a != b
    assert store.add("Meeting with Bob on Friday at noon.", namespace="carol", dedupe=True) == b


def test_dedupe_within_one_batch_keeps_input_order(store):
    ids = store.add_many(
        ["Paris is the capital of France.", "The tide comes in at six.", "Paris is the capital of France."],
        dedupe=True,
    )
    assert len(ids) == 3 and ids[0] == ids[2] and ids[0] != ids[1]
    assert store.stats()["tables"]["text"]["memories"] == 2
    assert [store.get(i).content for i in ids] == [
        "Paris is the capital of France.",
        "The tide comes in at six.",
        "Paris is the capital of France.",
    ]


def test_store_default_dedupe_and_per_call_override(model_home, tmp_path):
    s = MemoryStore(tmp_path / "s", dedupe=True)
    a = s.add("Remember to water the plants.")
    assert s.add("Remember to water the plants.") == a
    assert s.add("Remember to water the plants.", dedupe=False) != a
    assert s.stats()["tables"]["text"]["memories"] == 2


@pytest.mark.parametrize("bad", [0, 0.0, -0.5, 1.5, "0.9", [0.9]])
def test_bad_dedupe_thresholds_are_refused(store, bad):
    with pytest.raises(InvalidInputError, match="dedupe"):
        store.add("x", dedupe=bad)
    with pytest.raises(InvalidInputError, match="dedupe"):
        MemoryStore(store.path, dedupe=bad)


def test_history_of_updates_and_delete(store):
    id_ = store.add("Lunch with Dana on Tuesday.", metadata={"kind": "event"})
    assert [e["operation"] for e in store.history(id_)] == ["add"]
    store.update(id_, "Lunch with Dana moved to Wednesday.")
    store.update(id_, metadata={"kind": "event", "confirmed": True})
    timeline = store.history(id_)
    assert [e["operation"] for e in timeline] == ["add", "update", "update"]
    assert [e["content"] for e in timeline] == [
        "Lunch with Dana on Tuesday.",
        "Lunch with Dana moved to Wednesday.",
        "Lunch with Dana moved to Wednesday.",
    ]
    assert timeline[0]["metadata"] == {"kind": "event"}
    assert timeline[2]["metadata"] == {"kind": "event", "confirmed": True}
    assert timeline[1]["version"] < timeline[2]["version"] <= store.version
    assert timeline[0]["at"] <= timeline[1]["at"] <= timeline[2]["at"]

    store.delete(id_)
    after = store.history(id_)
    assert [e["operation"] for e in after] == ["add", "update", "update", "delete"]
    assert after[-1]["content"] is None and after[-2]["content"] == "Lunch with Dana moved to Wednesday."
    with pytest.raises(MemoryNotFoundError):
        store.get(id_)


def test_history_survives_compaction_and_reopen(store):
    ids = store.add_many(["one fact", "another fact"])
    for i, id_ in enumerate(ids):
        store.update(id_, metadata={"rev": i})
    store.delete(ids[0])
    assert store.compact().get("_history") == 3
    reopened = MemoryStore(store.path)
    assert [e["operation"] for e in reopened.history(ids[0])] == ["add", "update", "delete"]
    assert [e["metadata"] for e in reopened.history(ids[1])] == [{}, {"rev": 1}]


def test_history_of_unknown_id(store):
    with pytest.raises(MemoryNotFoundError):
        store.history("no-such-id")
    with pytest.raises(InvalidInputError):
        store.history(42)  # type: ignore[arg-type]


ENTRY = [
    "operation",
    "at",
    "version",
    "content",
    "metadata",
    "source",
    "media_type",
    "media_sha256",
    "transcript",
]


def test_history_entries_have_one_shape_and_the_add_its_version(model_home, tmp_path):
    """Through the CLI: add, update and delete entries have the same keys in the same order, and the add
    names the version that committed it (null once cleanup has removed the version before it)."""
    s = ["--store", str(tmp_path / "st")]

    def add(text: str) -> tuple[str, int]:
        (id_,) = run_cli(*s, "add", text).stdout.split()
        return id_, json.loads(run_cli(*s, "stats").stdout)["version"]

    kept, kept_added = add("The spare key is under the blue flowerpot.")
    gone, gone_added = add("The boiler was last serviced in March.")
    untouched, untouched_added = add("The neighbour's dog is called Pepper.")
    store = MemoryStore(tmp_path / "st")
    store.update(kept, metadata={"where": "garden"})
    store.update(gone, "The boiler was last serviced in April.")
    store.delete(gone)
    timelines = {i: json.loads(run_cli(*s, "history", i).stdout) for i in (kept, gone, untouched)}
    assert [e["operation"] for e in timelines[gone]] == ["add", "update", "delete"]
    assert [e["operation"] for e in timelines[kept]] == ["add", "update"]
    assert [list(e) for t in timelines.values() for e in t] == [ENTRY] * 6
    assert [timelines[i][0]["version"] for i in (kept, gone, untouched)] == [
        kept_added,
        gone_added,
        untouched_added,
    ]
    assert (
        kept_added
        < gone_added
        < untouched_added
        < timelines[gone][1]["version"]
        < timelines[gone][2]["version"]
    )

    run_cli(*s, "cleanup", "--older-than", "0")  # the versions before the newest are gone: adds unknown
    after = [json.loads(run_cli(*s, "history", i).stdout) for i in (kept, gone)]
    assert [e["version"] for e in after[0]] == [None, timelines[kept][1]["version"]]
    assert [list(e) for t in after for e in t] == [ENTRY] * 5


def test_metadata_filter_equality_lists_and_parameters(store):
    store.add_many(
        ["Quarterly report due Friday", "Team lunch Thursday", "Budget review due Monday", "O'Brien's party"],
        metadata=[
            {"kind": "deadline", "team": "finance"},
            {"kind": "social", "team": "finance"},
            {"kind": "deadline", "team": "ops", "n": 1},
            {"kind": "social", "host": "O'Brien"},
        ],
    )
    due = store.search("what is due?", filter={"kind": "deadline"})
    assert sorted(m.content for m in due) == ["Budget review due Monday", "Quarterly report due Friday"]
    both = store.search("events", filter={"kind": ["deadline", "social"], "team": "finance"})
    assert sorted(m.content for m in both) == ["Quarterly report due Friday", "Team lunch Thursday"]
    assert [m.content for m in store.search("x", filter={"host": "O'Brien"})] == ["O'Brien's party"]
    assert store.search("x", filter={"n": "1"}) == []  # JSON equality: the string "1" is not the number 1
    assert [m.metadata["n"] for m in store.search("x", filter={"n": 1})] == [1]
    # combined with a where predicate in either parameter style
    pos = store.search("x", where="content LIKE ?", params=["%due%"], filter={"team": "ops"})
    named = store.search("x", where="content LIKE $p", params={"p": "%due%"}, filter={"team": "ops"})
    assert [m.content for m in pos] == [m.content for m in named] == ["Budget review due Monday"]
    explained = store.explain_search("x", filter={"kind": "deadline"})
    assert explained["selected"] == explained["scored"] == 2


@pytest.mark.parametrize("bad", [{}, {"": 1}, {"k": []}, {"k": object()}, "kind=deadline", {1: "a"}])
def test_bad_metadata_filters_are_refused(store, bad):
    store.add("something")
    with pytest.raises(InvalidInputError, match="filter"):
        store.search("x", filter=bad)
