"""The LangGraph store against the real ``langgraph`` package, the real MiniLM weights and real processes.

LangGraph ships a conformance suite for checkpointers (``langgraph-checkpoint-conformance``), none for
stores; the reference here is LangGraph's own ``InMemoryStore`` given our embedding function, driven by
the same random operation sequences (hypothesis)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langgraph.store.base import BaseStore, InvalidNamespaceError, PutOp
from langgraph.store.memory import InMemoryStore

from aios_memory import InvalidInputError, MemoryStore
from aios_memory.integrations.langgraph import AiosMemoryStore

REPO = Path(__file__).resolve().parent.parent
FACTS = {
    "pet": "Alice's cat is called Miso",
    "trip": "Flight to Tokyo on April 3",
    "teeth": "Dentist appointment on March 14 at 10:30",
    "drink": "Alice prefers green tea over coffee",
    "db": "Parquet is a columnar storage format",
}


@pytest.fixture()
def lg(model_home, tmp_path) -> AiosMemoryStore:
    store = AiosMemoryStore(tmp_path / "store", index={"fields": ["text"]})
    store.batch([PutOp(("users", "alice"), k, {"text": t, "n": i}) for i, (k, t) in enumerate(FACTS.items())])
    return store


def test_is_a_langgraph_store_with_items_in_the_store_namespaces(lg):
    assert isinstance(lg, BaseStore) and lg.supports_ttl
    item = lg.get(("users", "alice"), "pet")
    assert (item.namespace, item.key, item.value) == (
        ("users", "alice"),
        "pet",
        {"text": FACTS["pet"], "n": 0},
    )
    # the same memories, seen through the store's own API and SQL
    mem = MemoryStore(lg.store.path)
    assert mem.stats()["namespaces"] == {"users.alice": len(FACTS)}
    assert mem.search("what animal does Alice have?", 1, namespace="users.alice")[0].content == FACTS["pet"]
    rows = mem.sql("SELECT count(*) AS n FROM text_memories WHERE namespace = ?", ["users.alice"]).to_pylist()
    assert rows == [{"n": len(FACTS)}]


def test_search_ranks_by_meaning_and_filters(lg):
    queries = {
        "what animal does Alice have?": "pet",
        "when is the trip to Japan?": "trip",
        "teeth checkup": "teeth",
        "which hot drink does she like?": "drink",
        "file formats for tables": "db",
    }
    for query, key in queries.items():
        hits = lg.search(("users",), query=query, limit=2)
        assert hits[0].key == key and hits[0].score > hits[1].score, query
    assert {i.key for i in lg.search(("users",), filter={"n": {"$gte": 3}})} == {"drink", "db"}
    assert [i.key for i in lg.search(("users",), query="a pet", filter={"n": {"$gt": 0}}, limit=1)] != ["pet"]
    assert lg.search(("users", "bob")) == [] and lg.search(("nobody",), query="cat") == []
    page = [i.key for i in lg.search(("users",), query="Alice", limit=2, offset=1)]
    assert page == [i.key for i in lg.search(("users",), query="Alice", limit=3)][1:]


def test_update_keeps_created_at_and_delete_removes_every_row(lg):
    before = lg.get(("users", "alice"), "pet")
    lg.put(("users", "alice"), "pet", {"text": "Alice's dog is called Rex"})
    after = lg.get(("users", "alice"), "pet")
    assert after.value == {"text": "Alice's dog is called Rex"}
    assert after.created_at == before.created_at and after.updated_at > before.updated_at
    assert lg.search(("users",), query="what is the dog's name?", limit=1)[0].key == "pet"
    lg.delete(("users", "alice"), "pet")
    assert lg.get(("users", "alice"), "pet") is None
    assert MemoryStore(lg.store.path).stats()["namespaces"] == {"users.alice": len(FACTS) - 1}


def test_list_namespaces(lg):
    lg.put(("users", "bob", "notes"), "a", {"text": "x"})
    lg.put(("docs", "v1"), "b", {"text": "y"})
    assert lg.list_namespaces() == [("docs", "v1"), ("users", "alice"), ("users", "bob", "notes")]
    assert lg.list_namespaces(prefix=("users",)) == [("users", "alice"), ("users", "bob", "notes")]
    assert lg.list_namespaces(suffix=("v1",)) == [("docs", "v1")]
    assert lg.list_namespaces(prefix=("users", "*", "notes")) == [("users", "bob", "notes")]
    assert lg.list_namespaces(max_depth=1) == [("docs",), ("users",)]
    assert lg.list_namespaces(limit=1, offset=1) == [("users", "alice")]


def test_index_false_items_are_stored_but_never_scored(lg):
    lg.put(("users", "alice"), "secret", {"text": "The cat's vet is Dr. Who"}, index=False)
    assert lg.get(("users", "alice"), "secret").value["text"].startswith("The cat's vet")
    hits = lg.search(("users",), query="the cat", limit=10)
    assert [h.key for h in hits][-1] == "secret" and hits[-1].score is None  # filled in, unscored
    assert all(h.score is not None for h in hits[:-1])


def test_several_fields_and_list_paths_are_each_embedded(lg):
    lg.put(
        ("docs",),
        "paper",
        {"title": "Cooking", "sections": ["pasta recipes", "the history of Rome"]},
        index=["title", "sections[*]"],
    )
    assert lg.search(("docs",), query="ancient Roman empire", limit=1)[0].key == "paper"
    rows = MemoryStore(lg.store.path).sql("SELECT content FROM text_memories WHERE namespace = 'docs'")
    assert sorted(rows.column("content").to_pylist()) == ["Cooking", "pasta recipes", "the history of Rome"]


def test_ttl_expires_and_reads_refresh_it(lg):
    lg.put(("tmp",), "short", {"text": "gone soon"}, ttl=0.5 / 60)  # half a second
    lg.put(("tmp",), "kept", {"text": "stays"}, ttl=3 / 60)
    assert lg.get(("tmp",), "short") is not None
    import time

    time.sleep(0.8)
    assert lg.get(("tmp",), "short") is None
    assert [i.key for i in lg.search(("tmp",))] == ["kept"] and lg.list_namespaces(prefix=("tmp",))
    assert lg.sweep_ttl() == 1
    assert MemoryStore(lg.store.path).stats()["namespaces"]["tmp"] == 1
    lg.put(("tmp",), "refreshed", {"text": "read often"}, ttl=1.5 / 60)
    for _ in range(3):
        time.sleep(0.8)
        assert lg.get(("tmp",), "refreshed") is not None  # each read moves the expiry
    time.sleep(0.8)
    assert lg.get(("tmp",), "refreshed", refresh_ttl=False) is not None
    time.sleep(1.0)
    assert lg.get(("tmp",), "refreshed") is None


def test_bad_input_is_refused_and_nothing_changes(lg):
    version = lg.store.version
    with pytest.raises(InvalidNamespaceError):
        lg.put(("users.alice",), "k", {"text": "x"})
    with pytest.raises(InvalidNamespaceError):
        lg.put(("langgraph",), "k", {"text": "x"})
    with pytest.raises(InvalidInputError):
        lg.put(("users",), "k", {"text": {1, 2}})
    with pytest.raises(InvalidInputError):
        lg.batch([PutOp(("users",), "k", ["not", "a", "dict"])])
    assert lg.search(("users",), filter={"bad key'); DROP": 1}) == []  # any key: a JSON Pointer parameter
    with pytest.raises(InvalidInputError):
        lg.search(("users",), filter={"n": {"$regex": "x"}})
    with pytest.raises(InvalidInputError):
        AiosMemoryStore(lg.store, index={"embed": lambda texts: [[0.0]] * len(texts), "dims": 1})
    with pytest.raises(InvalidInputError):
        AiosMemoryStore(lg.store, index={"dims": 1536})
    assert lg.store.version == version
    # a quote in a filter value or key text is a parameter, never SQL
    assert lg.search(("users",), filter={"text": "x' OR '1'='1"}) == []


def test_async_api(lg):
    import asyncio

    async def go():
        await lg.aput(("users", "carol"), "k", {"text": "Carol plays the cello"})
        item = await lg.aget(("users", "carol"), "k")
        hits = await lg.asearch(("users",), query="a string instrument", limit=1)
        spaces = await lg.alist_namespaces(prefix=("users",))
        await lg.adelete(("users", "carol"), "k")
        return item, hits, spaces, await lg.aget(("users", "carol"), "k")

    item, hits, spaces, gone = asyncio.run(go())
    assert item.value == {"text": "Carol plays the cello"} and hits[0].key == "k"
    assert ("users", "carol") in spaces and gone is None


def test_threads_putting_one_key_leave_one_item(lg):
    def put(i: int) -> None:
        for j in range(3):
            lg.put(("race",), "same", {"text": f"version {i}.{j}"})

    threads = [threading.Thread(target=put, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(lg.search(("race",))) == 1
    rows = MemoryStore(lg.store.path).sql("SELECT count(*) AS n FROM text_memories WHERE namespace = 'race'")
    assert rows.to_pylist() == [{"n": 1}]


PROCESS_PUTS = """
import sys
from aios_memory.integrations.langgraph import AiosMemoryStore
store = AiosMemoryStore(sys.argv[1])
for j in range(4):
    store.put(("race",), "same", {"text": f"process {sys.argv[2]} put {j}"})
    assert len(store.search(("race",))) == 1  # every read sees one item for the key
"""


def test_processes_putting_one_key_read_as_one_item(lg, tmp_path):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PROCESS_PUTS, str(lg.store.path), str(i)], stderr=subprocess.PIPE
        )
        for i in range(4)
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    hits = lg.search(("race",))
    assert len(hits) == 1 and hits[0].value["text"].startswith("process ")
    lg.put(("race",), "same", {"text": "settled"})  # the next put removes every older row
    rows = MemoryStore(lg.store.path).sql("SELECT count(*) AS n FROM text_memories WHERE namespace = 'race'")
    assert rows.to_pylist() == [{"n": 1}] and lg.get(("race",), "same").value == {"text": "settled"}


GRAPH = """
import sys
from typing import TypedDict
from langgraph.graph import END, START, StateGraph
from langgraph.store.base import BaseStore
from aios_memory.integrations.langgraph import AiosMemoryStore

class State(TypedDict):
    said: str
    recalled: str

def remember(state: State, *, store: BaseStore) -> dict:
    if state["said"]:
        store.put(("agent", "user-1"), "fact", {"text": state["said"]})
    return {}

def recall(state: State, *, store: BaseStore) -> dict:
    hits = store.search(("agent",), query="what is the user's dog called?", limit=1)
    return {"recalled": hits[0].value["text"] if hits else ""}

builder = StateGraph(State)
builder.add_node("remember", remember)
builder.add_node("recall", recall)
builder.add_edge(START, "remember")
builder.add_edge("remember", "recall")
builder.add_edge("recall", END)
graph = builder.compile(store=AiosMemoryStore(sys.argv[1], index={"fields": ["text"]}))
print(graph.invoke({"said": sys.argv[2], "recalled": ""})["recalled"])
"""


def test_a_langgraph_graph_recalls_in_a_second_process_what_the_first_wrote(model_home, tmp_path):
    def run(said: str) -> str:
        out = subprocess.run(
            [sys.executable, "-c", GRAPH, str(tmp_path / "store"), said],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""

    assert run("The user's dog is called Biscuit") == "The user's dog is called Biscuit"
    assert run("") == "The user's dog is called Biscuit"  # the second process only recalls


# --- differential: the same operations on LangGraph's InMemoryStore -------------------------------
TEXTS = [
    "the cat sleeps on the sofa",
    "a flight to Tokyo in April",
    "green tea is better than coffee",
    "Parquet stores columns",
    "the dentist at half past ten",
    "Ünïcode — 東京 ✓",
    "rain tomorrow",
]
NAMESPACES = [("a",), ("a", "b"), ("a", "c"), ("d",)]
values = st.fixed_dictionaries(
    {"text": st.sampled_from(TEXTS), "n": st.integers(-3, 3), "tag": st.sampled_from(["x", "y", None])}
)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from(NAMESPACES), st.sampled_from("pqr"), values, st.booleans()),
        st.tuples(st.just("delete"), st.sampled_from(NAMESPACES), st.sampled_from("pqr")),
        st.tuples(st.just("get"), st.sampled_from(NAMESPACES), st.sampled_from("pqrs")),
        st.tuples(
            st.just("search"),
            st.sampled_from([(), ("a",), ("a", "b"), ("d",)]),
            st.one_of(st.none(), st.sampled_from(TEXTS + ["a sleeping animal", "Japan"])),
            st.one_of(st.none(), st.just({"n": {"$gte": 0}}), st.just({"tag": "x"})),
            st.integers(1, 4),
            st.integers(0, 2),
        ),
        st.tuples(st.just("list"), st.sampled_from([(), ("a",)]), st.sampled_from([None, 1])),
    ),
    max_size=8,
)


def _embed(texts: list[str]) -> list[list[float]]:
    from aios_memory.plugins import get_provider

    return get_provider("minilm-l6-v2").embed_batch(list(texts)).tolist()


def _search_view(items, ranked: bool):
    """What both stores define for a search: with a query, the scored items best first (equal scores
    in any order) and how many unscored ones; without, the set of items."""

    def tail(i):
        return (i.namespace, i.key, json.dumps(i.value, sort_keys=True))

    if not ranked:
        return sorted(tail(i) for i in items)
    scored = sorted((-round(i.score, 4), *tail(i)) for i in items if i.score is not None)
    return scored, sum(i.score is None for i in items)


@pytest.fixture(scope="module")
def shared(model_home, tmp_path_factory):
    return AiosMemoryStore(tmp_path_factory.mktemp("lgdiff") / "store", index={"fields": ["text"]})


RUN = iter(range(10**6))


@settings(
    max_examples=int(os.environ.get("AIOS_MEMORY_LANGGRAPH_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops)
def test_same_results_as_langgraph_in_memory_store(shared, sequence):
    run = f"run{next(RUN)}"  # every example in namespaces of its own, on one store
    ours, ref = shared, InMemoryStore(index={"embed": _embed, "dims": 384, "fields": ["text"]})
    counts: dict[tuple, int] = {}
    for op in sequence:
        kind = op[0]
        if kind == "put":
            _, ns, key, value, indexed = op
            if not indexed:  # LangGraph's stores keep a key's old vectors when it is re-put with index=False
                ref.delete((run, *ns), key)  # (the new value ranks by the old text); ours drops them
            for s in (ours, ref):
                s.put((run, *ns), key, value, index=None if indexed else False)
            counts[(ns, key)] = 1
        elif kind == "delete":
            for s in (ours, ref):
                s.delete((run, *op[1]), op[2])
            counts.pop((op[1], op[2]), None)
        elif kind == "get":
            a, b = (s.get((run, *op[1]), op[2]) for s in (ours, ref))
            assert (a is None) == (b is None)
            if a is not None:
                assert (a.namespace, a.key, a.value) == (b.namespace, b.key, b.value)
        elif kind == "search":
            _, prefix, query, filt, limit, offset = op
            a, b = (
                s.search((run, *prefix), query=query, filter=filt, limit=limit, offset=offset)
                for s in (ours, ref)
            )
            assert len(a) == len(b)
            matching = len(ref.search((run, *prefix), filter=filt, limit=100))
            if query is not None:
                (sa, na), (sb, nb) = _search_view(a, True), _search_view(b, True)
                assert [x[0] for x in sa] == [x[0] for x in sb] and na == nb
                if offset == 0 and limit >= matching:
                    assert _search_view(a, False) == _search_view(b, False)
            elif offset == 0 and limit >= matching:
                assert _search_view(a, False) == _search_view(b, False)
        else:
            _, prefix, depth = op
            # the reference also lists a namespace that a get or delete only touched (its dict is a
            # defaultdict), holding no item; compared on the namespaces that hold items
            full = [n for n in ref.list_namespaces(prefix=(run, *prefix), limit=1000) if ref._data[n]]
            want = sorted({n[:depth] for n in full}) if depth else full
            assert ours.list_namespaces(prefix=(run, *prefix), max_depth=depth) == want
