"""``search(where=...)``: the predicate selects exactly the rows it names, whatever shape it takes.

A predicate with a subquery (``id IN (SELECT ...)``, ``EXISTS``, a join) makes DuckDB reorder rows; the
selection must still be the predicate's rows, checked against brute force over the same vectors.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_vectors import NAME, register, seeded, write_rows

from aios_memory import MemoryStore
from aios_memory.errors import QueryError


@pytest.fixture()
def rows(tmp_path):
    """900 rows over three fragments and two namespaces; metadata ``{"n": i, "tag": ...}``."""
    register()
    store = MemoryStore(tmp_path / "store", providers={"text": NAME})
    rng = np.random.default_rng(7)
    out = []
    for part in range(3):
        vecs = rng.standard_normal((300, 32)).astype(np.float32)
        meta = [
            {"n": part * 300 + i, "tag": ["red", "green", "blue"][(part * 300 + i) % 3]} for i in range(300)
        ]
        ns = ["p" if i % 2 else "q" for i in range(300)]
        ids = write_rows(store, vecs, metadata=meta, namespaces=ns)
        out += list(zip(ids, vecs, meta, ns, strict=True))
    return store, out


def _brute(rows, query: str, keep, k: int) -> list[str]:
    q = seeded(query)
    q = q / np.linalg.norm(q)
    scored = [(float(v @ q / np.linalg.norm(v)), i) for i, v, meta, ns in rows if keep(i, meta, ns)]
    return [i for _, i in sorted(scored, reverse=True)[:k]]


PREDICATES = [
    ("plain", "CAST(json_extract(metadata, '$.n') AS INTEGER) % 7 = 0", lambda m: m["n"] % 7 == 0),
    (
        "in-subquery",
        "id IN (SELECT id FROM text_memories WHERE CAST(json_extract(metadata, '$.n') AS INTEGER) < ?)",
        lambda m: m["n"] < 400,
    ),
    (
        "exists",
        "EXISTS (SELECT 1 FROM text_memories t2 WHERE t2.id = text_memories.id "
        "AND json_extract_string(t2.metadata, '$.tag') = 'blue')",
        lambda m: m["tag"] == "blue",
    ),
    (
        "join-in-subquery",
        "id IN (SELECT a.id FROM text_memories a JOIN text_memories b ON a.id = b.id "
        "WHERE json_extract_string(a.metadata, '$.tag') <> 'red' ORDER BY random())",
        lambda m: m["tag"] != "red",
    ),
]


@pytest.mark.parametrize(("name", "where", "keep"), PREDICATES, ids=[p[0] for p in PREDICATES])
def test_where_selects_exactly_its_rows(rows, name, where, keep):
    store, data = rows
    params = [400] if "?" in where else None
    for query in ("a small boat", "lunch at noon"):
        got = store.search(query, k=50, where=where, params=params)
        want = _brute(data, query, lambda i, m, ns: keep(m), 50)
        assert [h.id for h in got] == want, name
        assert all(keep(h.metadata) for h in got)


def test_where_with_namespace(rows):
    store, data = rows
    where = "id IN (SELECT id FROM text_memories WHERE json_extract_string(metadata, '$.tag') = 'green')"
    got = store.search("a tree", k=40, where=where, namespace="p")
    want = _brute(data, "a tree", lambda i, m, ns: m["tag"] == "green" and ns == "p", 40)
    assert [h.id for h in got] == want
    assert {h.namespace for h in got} == {"p"}


def test_where_selecting_nothing_and_everything(rows):
    store, data = rows
    assert store.search("x", k=10, where="false") == []
    got = store.search("x", k=10, where="id IN (SELECT id FROM text_memories)")
    assert [h.id for h in got] == _brute(data, "x", lambda *a: True, 10)


def test_aggregate_predicate_is_refused_and_changes_nothing(rows):
    store, _ = rows
    before = store.version
    with pytest.raises(QueryError):
        store.search("x", k=10, where="count(*) > 0")
    assert store.version == before
    assert json.loads(json.dumps(store.stats()))  # the store still reads
