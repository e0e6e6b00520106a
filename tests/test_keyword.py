"""The keyword signal (aios_memory/keyword.py): tokens that keep codes and joined names, BM25 equal to
bm25s' own scoring, the index following commits, and namespaces, where and scopes respected."""

from __future__ import annotations

import bm25s
import numpy as np
import pytest

from aios_memory.errors import InvalidInputError
from aios_memory.keyword import keyword_index, tokens

TEXTS = [
    "the gate code is 4471",
    "our kite is called orange-kite",
    "the cat sleeps on the red chair",
    "gate code 9912 opens the back door",
    "meeting with Dr. Okonkwo at noon",
]


def test_tokens_keep_codes_and_joined_names():
    got = tokens("Gate code 4471, the Orange-Kite; v1.2 gate_code")
    assert "4471" in got and "orange-kite" in got and "orange" in got and "kite" in got
    assert "v1.2" in got and "gate_code" in got and got.count("gate") == 2
    assert tokens(None) == [] and tokens("  ,;  ") == []


def test_scores_equal_bm25s_on_the_same_tokens(store):
    store.add_many(TEXTS)
    m = store._manifest()
    frags = list(m.tables["text"].fragments)
    index = keyword_index(store._storage, "text", frags)
    rows = store.sql("SELECT content FROM text_memories").to_pylist()  # fragment order is insertion order
    docs = [tokens(r["content"]) for r in rows]
    ref = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
    ref.index(docs, show_progress=False)
    q = tokens("gate code 4471")
    got, ceiling = index.scores(q)
    assert np.allclose(got, ref.get_scores(q), rtol=1e-6)
    assert ceiling > got.max() > 0


def test_keyword_mode_finds_codes_and_names(store):
    store.add_many(TEXTS)
    assert store.search("4471", k=1, mode="keyword")[0].content == TEXTS[0]
    assert store.search("orange-kite", k=1, mode="keyword")[0].content == TEXTS[1]
    assert store.search("okonkwo", k=1, mode="keyword")[0].content == TEXTS[4]
    assert store.search("zebra", k=3, mode="keyword") == []  # no shared word: no hit
    hit = store.search("gate code 9912", k=1, mode="keyword")[0]
    [sig] = hit.extra["signals"]
    assert sig["table"] == "text" and sig["signal"] == "bm25" and sig["score"] > 0 and sig["rank"] == 1


def test_index_follows_commits(store):
    store.add_many(TEXTS[:3])
    assert store.search("9912", k=1, mode="keyword") == []
    id = store.add(TEXTS[3])
    assert store.search("9912", k=1, mode="keyword")[0].id == id  # a new fragment: a new index
    store.delete(id)
    assert store.search("9912", k=1, mode="keyword") == []
    first = store.search("4471", k=1, mode="keyword")[0].id
    store.update(first, "the gate code changed to 5820")
    assert store.search("4471", k=1, mode="keyword") == []
    assert store.search("5820", k=1, mode="keyword")[0].id == first


def test_namespaces_where_filter_and_scopes(store):
    store.add("gate code 4471 front", namespace="a", metadata={"kind": "door"})
    store.add("gate code 4471 back", namespace="b", metadata={"kind": "gate"})
    assert [m.namespace for m in store.search("4471", mode="keyword", namespace="a")] == ["a"]
    got = store.search("4471", mode="keyword", where="metadata->>'$.kind' = ?", params=["gate"])
    assert [m.content for m in got] == ["gate code 4471 back"]
    assert [m.namespace for m in store.search("4471", mode="keyword", filter={"kind": "door"})] == ["a"]
    from aios_memory.scope import Scope

    scoped = store.scoped(Scope(namespaces=frozenset({"b"})))
    assert [m.namespace for m in scoped.search("4471", mode="keyword")] == ["b"]
    assert [m.namespace for m in scoped.search("4471", mode="hybrid")] == ["b"]


def test_bad_modes_are_typed_errors(store):
    store.add_many(TEXTS)
    with pytest.raises(InvalidInputError, match="mode must be one of"):
        store.search("4471", mode="bm25")
    with pytest.raises(InvalidInputError, match="half_life"):
        store.search("4471", mode="hybrid", half_life=60.0)
    with pytest.raises(InvalidInputError, match="mmr"):
        store.search("4471", mode="hybrid", mmr=0.5)


def test_compaction_and_time_travel_use_the_index_of_their_fragments(store):
    ids = [store.add(t) for t in TEXTS]  # five commits: five fragments
    before = [(m.id, m.score) for m in store.search("gate code", k=5, mode="keyword")]
    assert {i for i, _ in before} == {ids[0], ids[3]}
    v = store.version
    store.compact("text")
    assert len(store._manifest().tables["text"].fragments) == 1
    after = [(m.id, m.score) for m in store.search("gate code", k=5, mode="keyword")]
    assert [i for i, _ in after] == [i for i, _ in before]
    assert np.allclose([s for _, s in after], [s for _, s in before], rtol=1e-6)  # same corpus, same BM25
    store.delete(ids[0])
    assert [m.id for m in store.search("4471", k=5, mode="keyword")] == []
    store.checkout(v)  # an older version: its own fragments, so its own index
    assert [m.id for m in store.search("4471", k=5, mode="keyword")] == [ids[0]]
