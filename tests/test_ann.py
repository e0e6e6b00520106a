"""The optional HNSW index: recall against exact search, persisted in the manifest, extended incrementally,
never hiding rows committed after it nor returning rows deleted since."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from test_vectors import NAME, register, write_rows

from aios_memory import MemoryStore
from aios_memory.errors import QueryError

pytest.importorskip("usearch", reason='usearch is not installed: pip install -e ".[test]"')


def clustered(n: int, seed: int, centres: int = 40, dim: int = 32) -> np.ndarray:
    """Vectors around random centres: neighbourhood structure an ANN index can find (uniform noise has none)."""
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(0).standard_normal((centres, dim))
    return (c[rng.integers(0, centres, n)] + 0.35 * rng.standard_normal((n, dim))).astype(np.float32)


@pytest.fixture()
def indexed(tmp_path):
    register()
    store = MemoryStore(tmp_path / "store", providers={"text": NAME})
    for part in range(3):
        write_rows(store, clustered(1000, part), namespaces=["a" if part else "b"] * 1000)
    info = store.create_index("text")
    assert info["committed"] and info["rows"] == 3000
    return store


def _queries(n: int) -> list[str]:
    return [f"seed:{1000 + i}" for i in range(n)]


def test_recall_against_exact_and_exact_scores(indexed):
    hits = total = 0
    for q in _queries(40):
        ann = indexed.explain_search(q, k=10)
        assert ann["path"] == "ann" and ann["index"] == "hnsw" and ann["scored"] < 3000
        exact = indexed.explain_search(q, k=10, exact=True)
        assert exact["path"] == "exact" and exact["scored"] == 3000
        truth = {m.id: m.score for m in exact["results"]}
        got = [m.id for m in ann["results"]]
        hits += len(set(got) & set(truth))
        total += 10
        for m in ann["results"]:  # candidates are rescored exactly
            if m.id in truth:
                assert m.score == pytest.approx(truth[m.id], abs=1e-9)
    recall = hits / total
    print(f"\nrecall@10 of the HNSW index vs exact over 40 queries, 3000 rows: {recall:.3f}")
    assert recall >= 0.95


def test_index_is_extended_and_never_stale(indexed):
    store = indexed
    first = store._manifest().tables["text"].index
    new_ids = write_rows(store, clustered(200, 7))  # after the index: ranked exactly until re-indexed
    ids_before = {m.id for m in store.search("seed:5", k=3200)}
    assert set(new_ids) <= ids_before
    info = store.create_index("text")
    second = store._manifest().tables["text"].index
    assert info["rows"] == 3200 and second.path != first.path
    assert [c[0] for c in second.covers[:3]] == [c[0] for c in first.covers]  # extended, not rebuilt
    assert [c[1] for c in second.covers] == [0, 1000, 2000, 3000]
    victim = new_ids[0]
    store.delete(victim)  # rewrites that fragment: the index's rows of the old one are skipped
    found = 0
    for q in _queries(10):
        got = [m.id for m in store.search(q, k=20)]
        assert victim not in got
        found += len(set(got[:5]) & {m.id for m in store.search(q, k=5, exact=True)})
    # approximate: the graph is built on threads, so a near-tie at rank 5 may differ from run to run
    assert found / 50 >= 0.95
    assert store.verify()["ok"]


def test_selective_filters_rank_exactly_and_explain_why(indexed):
    e = indexed.explain_search("seed:3", k=5, namespace="b")  # 1/3 of the rows: the index is used
    assert e["path"] == "ann-selected" and {m.namespace for m in e["results"]} == {"b"}
    small = indexed.explain_search("seed:3", k=5, where="content IN (?, ?)", params=["row 1", "row 2"])
    assert small["path"] == "exact-selected" and small["scored"] == small["selected"] == 6
    assert "exactly is cheaper" in small["index_not_used"]
    timed = indexed.explain_search("seed:3", k=5, half_life=3600.0)
    assert timed["path"] == "exact" and "time-decayed" in timed["index_not_used"]


def test_exact_false_needs_an_index(tmp_path):
    register()
    store = MemoryStore(tmp_path / "s", providers={"text": NAME})
    write_rows(store, clustered(50, 1))
    with pytest.raises(QueryError, match="no usable ANN index"):
        store.search("seed:1", exact=False)


def test_index_file_is_kept_by_cleanup_and_checked_by_verify(indexed):
    store = indexed
    index = store._manifest().tables["text"].index
    path = store.path / index.path
    old = time.time() - 7200
    os.utime(path, (old, old))
    store.cleanup(older_than=3600)
    assert path.exists() and store.verify()["ok"]
    reopened = MemoryStore(store.path, providers={"text": NAME})
    assert reopened.explain_search("seed:1", k=3)["path"] == "ann"  # persisted with the store
    path.unlink()
    assert not reopened.verify()["ok"]


def test_search_depth_extends_but_graph_shape_rebuilds(indexed):
    store = indexed
    first = store._manifest().tables["text"].index
    write_rows(store, clustered(100, 9))
    store.create_index("text", expansion_search=2048)  # a search-time parameter: the graph is extended
    deeper = store._manifest().tables["text"].index
    assert deeper.params["expansion_search"] == 2048 and deeper.rows == 3100
    assert [c[1] for c in deeper.covers] == [0, 1000, 2000, 3000]
    assert deeper.covers[:3] == first.covers
    store.create_index("text", connectivity=8)  # the graph's shape changed: rebuilt from scratch
    rebuilt = store._manifest().tables["text"].index
    assert rebuilt.params["connectivity"] == 8 and rebuilt.rows == 3100 and rebuilt.path != deeper.path
    from usearch.index import Index

    assert Index.restore(str(store.path / deeper.path)).connectivity == 16  # extended: the old graph
    assert Index.restore(str(store.path / rebuilt.path)).connectivity == 8
    hits = sum(
        len({m.id for m in store.search(q, k=10)} & {m.id for m in store.search(q, k=10, exact=True)})
        for q in _queries(20)
    )
    assert hits / 200 >= 0.9


def test_filtered_ann_returns_only_selected_rows_with_exact_scores(indexed):
    for q in _queries(10):
        e = indexed.explain_search(q, k=10, namespace="a")  # 2/3 of the rows: the index is used
        assert e["path"] == "ann-selected" and len(e["results"]) == 10
        exact = {m.id: m.score for m in indexed.search(q, k=50, namespace="a", exact=True)}
        for m in e["results"]:
            assert m.namespace == "a" and m.id in exact and m.score == pytest.approx(exact[m.id], abs=1e-9)
        assert len({m.id for m in e["results"]} & set(list(exact)[:10])) >= 8


def test_the_indexs_search_depth_is_the_one_searches_use(indexed):
    """``expansion_search`` is a speed-for-recall knob in both directions, floored only at twice the
    candidates a search must return."""
    from aios_memory.storage.ann import CANDIDATES, _open

    store = indexed
    for asked, used in ((64, 2 * CANDIDATES), (300, 300), (2048, 2048)):
        store.create_index("text", expansion_search=asked)
        index = store._manifest().tables["text"].index
        store.search(_queries(1)[0], k=10)
        assert _open(store._storage, index).expansion_search == used, asked
