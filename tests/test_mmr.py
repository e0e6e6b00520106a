"""Maximal marginal relevance: the pure selection and ``MemoryStore.search(mmr=...)`` on real MiniLM vectors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aios_memory import InvalidInputError
from aios_memory.mmr import mmr_select

FACT = [  # five paraphrases of one fact
    "The user's cat is called Miso",
    "The user has a cat named Miso",
    "Miso is the name of the user's cat",
    "The user's cat's name is Miso",
    "The cat that belongs to the user is called Miso",
]
OTHERS = [
    "The user adopted a beagle puppy last spring",
    "The user keeps tropical fish in an aquarium",
    "Flight to Tokyo on April 3",
    "The user prefers green tea over coffee",
    "Parquet is a columnar storage format",
    "Dentist appointment on March 14 at 10:30",
    "The user's sister lives in Lisbon",
    "The user is allergic to peanuts",
]
QUERY = "what pet does the user have?"


@pytest.fixture()
def pets(store):
    store.add_many(FACT + OTHERS, namespace="u")
    store.add_many(["The user's cat is named Miso, a tabby"], namespace="other")  # outside the namespace
    return store


def reference_mmr(query_vec, pool, vectors, lam, k):
    """Greedy MMR in plain Python loops: ``pool`` is [(id, score)] in search order."""
    q = [float(x) for x in query_vec]
    assert len(q) == len(vectors[pool[0][0]])

    def cos(a, b):
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))

    chosen: list[int] = []
    while len(chosen) < min(k, len(pool)):
        best, best_value = None, -math.inf
        for i, (id_, score) in enumerate(pool):
            if i in chosen:
                continue
            redundancy = max((cos(vectors[id_], vectors[pool[j][0]]) for j in chosen), default=0.0)
            value = lam * score - (1 - lam) * redundancy
            if value > best_value:  # strictly greater: the lower index wins a tie
                best, best_value = i, value
        chosen.append(best)
    return [pool[i][0] for i in chosen]


def _vectors(store) -> dict[str, list[float]]:
    rows = store.sql("SELECT id, embedding FROM text_memories").to_pylist()
    return {r["id"]: [float(x) for x in r["embedding"]] for r in rows}


def _near_duplicates(memories) -> int:
    return sum(m.content in FACT for m in memories)


@pytest.mark.parametrize("lam", [0.0, 0.25, 0.5, 0.7, 1.0])
def test_store_mmr_equals_the_reference_on_real_vectors(pets, lam):
    fetch_k = 10
    pool = pets.search(QUERY, k=fetch_k, namespace="u")
    assert len(pool) == fetch_k
    qvec = pets.provider_for("text").embed_query(QUERY, "text")
    expected = reference_mmr(qvec, [(m.id, m.score) for m in pool], _vectors(pets), lam, 4)
    got = pets.search(QUERY, k=4, namespace="u", mmr=lam, fetch_k=fetch_k)
    assert [m.id for m in got] == expected
    # by a vector made elsewhere: the same selection
    by_vec = pets.search(vector=qvec, k=4, namespace="u", mmr=lam, fetch_k=fetch_k)
    assert [m.id for m in by_vec] == expected


def test_mmr_holds_fewer_near_duplicates_and_keeps_exact_cosines(pets):
    plain = pets.search(QUERY, k=3, namespace="u")
    assert _near_duplicates(plain) == 3  # the paraphrases crowd the plain top 3
    diverse = pets.search(QUERY, k=3, namespace="u", mmr=0.5)
    assert _near_duplicates(diverse) < _near_duplicates(plain)
    assert diverse[0].id == plain[0].id  # the first pick is the most relevant
    assert all(m.namespace == "u" for m in diverse)
    qvec = np.asarray(pets.provider_for("text").embed_query(QUERY, "text"), np.float64)
    vecs = _vectors(pets)
    for m in diverse:
        v = np.asarray(vecs[m.id], np.float64)
        assert m.score == pytest.approx(float(v @ qvec / np.linalg.norm(v) / np.linalg.norm(qvec)), abs=1e-12)


def test_lambda_one_is_the_plain_search_order(pets):
    plain = pets.search(QUERY, k=6, namespace="u")
    same = pets.search(QUERY, k=6, namespace="u", mmr=1.0, fetch_k=13)
    assert [m.id for m in same] == [m.id for m in plain]
    # the same cosines (a float64 dot product over a pool of another size may differ in the last bit)
    assert [m.score for m in same] == pytest.approx([m.score for m in plain], abs=1e-12)


def test_filters_apply_to_the_pool_and_explain_reports_it(pets):
    got = pets.search(QUERY, k=3, namespace="u", mmr=0.3, filter=None, where="content LIKE '%Miso%'")
    assert {m.content for m in got} <= set(FACT) and len(got) == 3
    plan = pets.explain_search(QUERY, k=3, namespace="u", mmr=0.5)
    assert plan["mmr"] == {"lambda": 0.5, "fetch_k": 20, "pool": len(FACT + OTHERS)}
    assert [m.id for m in plan["results"]] == [m.id for m in pets.search(QUERY, k=3, namespace="u", mmr=0.5)]
    assert pets.explain_search(QUERY, k=10, mmr=0.5)["mmr"]["fetch_k"] == 40
    assert "mmr" not in pets.explain_search(QUERY, k=3)
    # the decay applies to the pool: the scores are the decayed ones plain search reports (up to the
    # decay over the moments between the two searches)
    decayed = {m.id: m.score for m in pets.search(QUERY, k=13, namespace="u", half_life=86400.0)}
    got = pets.search(QUERY, k=3, namespace="u", half_life=86400.0, mmr=0.5, fetch_k=13)
    assert len(got) == 3 and all(m.score == pytest.approx(decayed[m.id], rel=1e-3) for m in got)
    plain = {m.id: m.score for m in pets.search(QUERY, k=13, namespace="u")}
    assert all(0 < m.score < plain[m.id] for m in got)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mmr": 1.5}, "lambda"),
        ({"mmr": -0.1}, "lambda"),
        ({"mmr": float("nan")}, "lambda"),
        ({"mmr": True}, "lambda"),
        ({"mmr": "0.5"}, "lambda"),
        ({"mmr": 0.5, "fetch_k": 2}, "fetch_k"),
        ({"mmr": 0.5, "fetch_k": 3.0}, "fetch_k"),
        ({"mmr": 0.5, "fetch_k": 10_001}, "fetch_k"),
        ({"fetch_k": 20}, "needs mmr"),
        ({"mmr": 0.5, "order": "newest"}, "newest"),
    ],
)
def test_bad_mmr_arguments_are_typed_errors(pets, kwargs, match):
    before = pets.version
    with pytest.raises(InvalidInputError, match=match):
        pets.search(QUERY, k=3, **kwargs)
    with pytest.raises(InvalidInputError, match=match):
        pets.explain_search(QUERY, k=3, **kwargs)
    assert pets.version == before


def test_mmr_on_an_empty_table(store):
    assert store.search(QUERY, k=3, mmr=0.5) == []


# --- the pure function ---------------------------------------------------------------------------
def test_mmr_select_by_hand():
    q = np.array([1.0, 0.0, 0.0])
    a = np.array([0.9, np.sqrt(1 - 0.81), 0.0])  # relevance 0.9
    a2 = np.array([0.89, 0.44, 0.1])  # relevance 0.89 after normalising: a near-duplicate of a
    b = np.array([0.8, 0.0, 0.6])  # relevance 0.8, cosine 0.72 to a
    vecs = np.stack([a, a2 / np.linalg.norm(a2), b])
    scores = vecs @ q
    assert 0.99 < vecs[0] @ vecs[1] and scores[1] > scores[2]
    assert mmr_select(q, vecs, scores, 1.0, 3) == [0, 1, 2]
    assert mmr_select(q, vecs, scores, 0.5, 2) == [0, 2]  # 0.4 - 0.36 beats 0.445 - 0.495
    assert mmr_select(q, vecs, scores, 0.0, 3) == [0, 2, 1]
    assert mmr_select(q, vecs, scores, 0.5, 10) == [0, 2, 1]  # never more than the pool
    assert mmr_select(q, np.zeros((0, 3)), [], 0.5, 3) == []


def test_mmr_select_breaks_ties_by_lower_index():
    q = np.array([1.0, 0.0])
    same = np.tile([1.0, 0.0], (3, 1))
    assert mmr_select(q, same, [1.0, 1.0, 1.0], 0.5, 3) == [0, 1, 2]
    sym = np.array([[0.6, 0.8], [0.6, -0.8]])
    assert mmr_select(q, sym, sym @ q, 0.3, 2) == [0, 1]


def test_mmr_select_rejects_bad_input():
    q = np.array([1.0, 0.0])
    vecs = np.eye(2)
    with pytest.raises(InvalidInputError, match="lambda"):
        mmr_select(q, vecs, [1.0, 0.0], 2.0, 1)
    with pytest.raises(InvalidInputError, match="k must"):
        mmr_select(q, vecs, [1.0, 0.0], 0.5, 0)
    with pytest.raises(InvalidInputError, match="shape"):
        mmr_select(q, np.eye(3), [1.0, 0.0], 0.5, 1)
