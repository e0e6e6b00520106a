"""Time-aware recall: ``half_life`` decay, ``order="newest"`` and ``min_score``, against brute force."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from test_vectors import NAME, register, seeded, write_rows

from aios_memory import MemoryStore
from aios_memory.errors import InvalidInputError

DAY = 86_400.0


@pytest.fixture()
def timed(tmp_path):
    """600 rows whose ages run from 0 to ~3 years, over three fragments and two namespaces."""
    register()
    store = MemoryStore(tmp_path / "store", providers={"text": NAME})
    rng = np.random.default_rng(21)
    now = dt.datetime.now(dt.timezone.utc)
    rows = []
    for _part in range(3):
        vecs = rng.standard_normal((200, 32)).astype(np.float32)
        ages = rng.uniform(0, 1100, 200)
        when = [now - dt.timedelta(days=float(a)) for a in ages]
        ns = ["p" if i % 2 else "q" for i in range(200)]
        ids = write_rows(store, vecs, created_at=when, namespaces=ns)
        rows += list(zip(ids, vecs, when, ns, strict=True))
    return store, rows


def _brute(rows, query: str, k: int, half_life=None, namespace=None):
    q = seeded(query)
    q = q / np.linalg.norm(q)
    now = dt.datetime.now(dt.timezone.utc)
    scored = []
    for id_, v, when, ns in rows:
        if namespace is not None and ns != namespace:
            continue
        s = float(v @ q / np.linalg.norm(v))
        if half_life is not None:
            s *= 0.5 ** ((now - when).total_seconds() / half_life)
        scored.append((-s, id_))
    return [(id_, -s) for s, id_ in sorted(scored)[:k]]


def test_half_life_ranks_by_decayed_score_over_every_row(timed):
    store, rows = timed
    for seed in range(4):
        query = f"seed:{seed}"
        plain = [m.id for m in store.search(query, k=10)]
        want = _brute(rows, query, 10, half_life=30 * DAY)
        got = store.explain_search(query, k=10, half_life=30 * DAY)
        assert [m.id for m in got["results"]] == [i for i, _ in want]
        assert [m.score for m in got["results"]] == pytest.approx([s for _, s in want], abs=1e-6)
        assert got["scored"] == 600  # every row was ranked with its decay, not just the plain top-k
        # the decayed top-10 reaches outside the undecayed top-10 (the case a re-rank would get wrong)
        assert set(i for i, _ in want) - set(plain)
        ns = store.search(query, k=5, half_life=30 * DAY, namespace="p")
        assert [m.id for m in ns] == [i for i, _ in _brute(rows, query, 5, half_life=30 * DAY, namespace="p")]


def test_order_newest_returns_the_top_k_by_score_newest_first(timed):
    store, rows = timed
    top = store.search("seed:9", k=8)
    newest = store.search("seed:9", k=8, order="newest")
    assert {m.id for m in newest} == {m.id for m in top}
    assert [m.created_at for m in newest] == sorted((m.created_at for m in top), reverse=True)


def test_min_score_drops_results_below_it(timed):
    store, rows = timed
    want = _brute(rows, "seed:4", 600)
    cut = (want[12][1] + want[13][1]) / 2  # between two scores: no rounding question at the boundary
    got = store.search("seed:4", k=100, min_score=cut)
    assert [m.id for m in got] == [i for i, s in want if s >= cut]
    assert all(m.score >= cut for m in got)
    assert store.search("seed:4", k=10, min_score=1.5) == []
    decayed = store.search("seed:4", k=100, half_life=DAY, min_score=0.05)
    assert all(m.score >= 0.05 for m in decayed)


def test_bad_time_arguments_are_refused(timed):
    store, _ = timed
    for kwargs in (
        {"half_life": 0},
        {"half_life": -5.0},
        {"half_life": float("inf")},
        {"half_life": "1d"},
        {"order": "oldest"},
        {"min_score": float("nan")},
        {"min_score": "0.5"},
        {"exact": "yes"},
    ):
        with pytest.raises(InvalidInputError):
            store.search("seed:1", **kwargs)
