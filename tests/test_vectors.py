"""Vector sidecars and the exact search over them: same ranking as the SQL path, on real files.

Rows are committed through the store's own storage code (``Storage.write_fragment`` + ``commit``) with
chosen vectors, namespaces and times; queries go through ``MemoryStore.search`` with a registered
provider that embeds ``"seed:N"`` as a fixed random vector. The reference for every ranking is the
previous implementation: DuckDB's ``array_cosine_similarity`` over the Parquet fragments
(``query.search_sql``), run on the same store in the same test.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aios_memory import EmbeddingProvider, MemoryStore, hookimpl
from aios_memory.errors import QueryError
from aios_memory.plugins import get_providers, register_plugin
from aios_memory.query import run, search_sql
from aios_memory.schema import base_schema
from aios_memory.storage import Fragment, Manifest, Storage, TableState, plan_compaction
from aios_memory.vectors import TIME_SUFFIX, vector_suffix

DIM = 32
NAME = "seeded-vectors-32"


def seeded(text: str, dim: int = DIM) -> np.ndarray:
    """``"seed:N"`` -> a fixed standard-normal vector (any other text: seeded by its crc32)."""
    import zlib

    seed = int(text[5:]) if text.startswith("seed:") else zlib.crc32(text.encode())
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


class SeededVectors(EmbeddingProvider):
    name = NAME
    modality = "text"
    dim = DIM

    def _embed(self, items: list[str]) -> np.ndarray:
        return np.stack([seeded(s, self.dim) for s in items])


class _Plugin:
    @hookimpl
    def register_embedding_providers(self, register):  # type: ignore[no-untyped-def]
        register(SeededVectors())


def register() -> None:
    if NAME not in get_providers():
        register_plugin(_Plugin(), name="seeded-vectors-test")


def write_rows(
    store: MemoryStore,
    vectors: np.ndarray,
    *,
    namespaces: list[str] | None = None,
    created_at: list[dt.datetime] | None = None,
    metadata: list[dict] | None = None,
    contents: list[str] | None = None,
) -> list[str]:
    """Commit one fragment with these exact vectors through the store's storage code; returns the ids."""
    provider = store.provider_for("text")
    n, dim = vectors.shape
    now = dt.datetime.now(dt.timezone.utc)
    ids = [str(uuid.uuid4()) for _ in range(n)]
    cols = {
        "id": ids,
        "namespace": namespaces or ["default"] * n,
        "created_at": created_at or [now] * n,
        "updated_at": [None] * n,
        "source": [None] * n,
        "content": contents or [f"row {i}" for i in range(n)],
        "media": [None] * n,
        "media_type": [None] * n,
        "metadata": [json.dumps(m) for m in metadata] if metadata else ["{}"] * n,
        "provider": [provider.name] * n,
        "embedding": pa.FixedSizeListArray.from_arrays(
            pa.array(np.asarray(vectors, np.float32).reshape(-1), pa.float32()), dim
        ),
    }
    schema = base_schema("text", dim, provider.fingerprint())
    table = pa.table([cols[f.name] for f in schema], schema=schema)
    storage = store._storage

    def build(m: Manifest) -> Manifest:
        state = m.tables.setdefault(
            "text", TableState("text", provider.name, dim, provider.fingerprint(), [])
        )
        state.fragments.append(storage.write_fragment("text", table))
        return m

    storage.commit(f"add {n}", build)
    return ids


@pytest.fixture()
def vstore(tmp_path):
    register()
    return MemoryStore(tmp_path / "store", providers={"text": NAME})


def sql_ranking(store: MemoryStore, query: str, k: int, namespace=None, where=None, params=None) -> list[str]:
    """The previous implementation: DuckDB's cosine over the Parquet fragments, ties by id."""
    m = store._manifest()
    named = isinstance(params, dict)
    sql = search_sql("text", DIM, where, named)
    qv = store.provider_for("text").embed_query(query).astype("float32").tolist()
    if named:
        all_params = {**params, "aiosm_q": qv, "aiosm_ns": namespace, "aiosm_k": k}
    else:
        all_params = [*(params or []), qv, namespace, namespace, k]
    con = store._connect(m, namespace)
    try:
        return [r["id"] for r in run(con, sql, all_params).to_pylist()]
    finally:
        con.close()


def _random(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def test_every_fragment_gets_sidecars_equal_to_its_parquet_columns(vstore):
    when = [dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(days=i) for i in range(50)]
    vecs = _random(50, 1)
    write_rows(vstore, vecs, created_at=when)
    frag = vstore._manifest().tables["text"].fragments[0]
    assert set(frag.sidecars) == {vector_suffix("embedding"), TIME_SUFFIX, "content.blake2b"}
    raw = np.fromfile(vstore.path / frag.sidecar_path("embedding.f32"), dtype="<f4")
    assert raw.size == 50 * (DIM + 1)
    col = pq.read_table(vstore.path / frag.path, columns=["embedding"]).column("embedding")
    assert np.array_equal(raw[: 50 * DIM].reshape(50, DIM), np.stack(col.to_pylist()).astype(np.float32))
    assert np.allclose(raw[50 * DIM :], np.linalg.norm(vecs, axis=1), rtol=1e-6)
    us = np.fromfile(vstore.path / frag.sidecar_path(TIME_SUFFIX), dtype="<i8")
    assert [dt.datetime.fromtimestamp(u / 1e6, dt.timezone.utc) for u in us] == when
    # every writer goes through write_fragment: delete and compact leave sidecars too
    ids = vstore.add_many(["alpha", "beta", "gamma"])
    vstore.delete(ids[0])
    vstore.compact()
    for f in vstore._manifest().tables["text"].fragments:
        assert f.sidecars and all((vstore.path / p).exists() for p in f.files())
    assert vstore.verify()["ok"]


def test_ranking_equals_the_sql_ranking(vstore):
    rng = np.random.default_rng(7)
    names = ["a", "b", "c"]
    for part in range(4):
        n = 300
        ns = [names[i % 3] for i in rng.integers(0, 3, n)]
        meta = [{"year": int(y)} for y in rng.integers(2000, 2025, n)]
        write_rows(vstore, _random(n, 100 + part), namespaces=ns, metadata=meta)
    dup = _random(1, 5)
    write_rows(vstore, np.repeat(dup, 4, axis=0))  # exact ties: ordered by id
    cases = [
        dict(),
        dict(namespace="b"),
        dict(where="CAST(json_extract(metadata, '$.year') AS INTEGER) >= ?", params=[2015]),
        dict(namespace="a", where="CAST(metadata->>'$.year' AS INTEGER) < $y", params={"y": 2010}),
    ]
    for seed in range(5):
        for case in cases:
            for k in (1, 10, 57):
                got = [m.id for m in vstore.search(f"seed:{seed}", k=k, **case)]
                assert got == sql_ranking(vstore, f"seed:{seed}", k, **case), (seed, case, k)
    q = seeded("seed:5")
    hits = vstore.search("seed:5", k=4)
    assert [h.id for h in hits] == sorted(h.id for h in hits)  # the 4 identical rows, by id
    expect = float(dup[0] @ q / np.linalg.norm(dup[0]) / np.linalg.norm(q))
    assert all(h.score == pytest.approx(expect, abs=1e-6) for h in hits)


def test_filters_score_only_the_rows_they_select(vstore):
    n = 2000
    ns = ["rare" if i % 100 == 0 else "common" for i in range(n)]
    write_rows(vstore, _random(n, 3), namespaces=ns, metadata=[{"i": i} for i in range(n)])
    write_rows(vstore, _random(500, 4), namespaces=["common"] * 500, metadata=[{"i": -1}] * 500)
    full = vstore.explain_search("seed:1", k=5)
    assert (full["path"], full["rows"], full["scored"]) == ("exact", 2500, 2500)
    rare = vstore.explain_search("seed:1", k=5, namespace="rare")
    assert rare["selected"] == rare["scored"] == 20
    assert {m.namespace for m in rare["results"]} == {"rare"}
    where = vstore.explain_search(
        "seed:1", k=5, where="CAST(metadata->>'$.i' AS INTEGER) BETWEEN ? AND ?", params=[10, 34]
    )
    assert where["selected"] == where["scored"] == 25
    both = vstore.explain_search(
        "seed:1", k=50, namespace="rare", where="CAST(metadata->>'$.i' AS INTEGER) < ?", params=[1000]
    )
    assert both["selected"] == both["scored"] == 10 and len(both["results"]) == 10
    assert all(e["manifest_reads"] == 1 for e in (full, rare, where, both))


def test_where_keeps_where_semantics_and_its_sandbox(vstore, tmp_path):
    write_rows(vstore, _random(30, 9), namespaces=["x"] * 15 + ["y"] * 15)
    with pytest.raises(QueryError):
        vstore.search("seed:1", where="count(*) > 0")  # an aggregate is no row predicate
    with pytest.raises(QueryError):
        vstore.search("seed:1", where="row_number() OVER () < 3")
    with pytest.raises(QueryError):
        vstore.search(
            "seed:1", where=f"1 = (SELECT count(*) FROM read_parquet('{vstore.path}/data/text/*.parquet'))"
        )
    got = vstore.search("seed:1", k=30, namespace="x", where="id IN (SELECT id FROM text_memories)")
    assert len(got) == 15 and {m.namespace for m in got} == {"x"}


def test_fragments_without_sidecars_still_search(vstore):
    """A store written before sidecars: its manifest's fragments name none; search reads the column."""
    write_rows(vstore, _random(40, 11))
    storage = vstore._storage
    old = storage.read_manifest()
    frag = old.tables["text"].fragments[0]

    def strip(m: Manifest) -> Manifest:
        m.tables["text"].fragments = [Fragment(frag.path, frag.rows, frag.nbytes)]
        return m

    storage.commit("as before sidecars", strip)
    raw = json.loads(storage.backend.read_bytes(f"_versions/{storage.latest_version():020d}.manifest.json"))
    assert raw["tables"]["text"]["fragments"][0]["sidecars"] == []
    for s in frag.sidecars:
        os.remove(vstore.path / frag.sidecar_path(s))
    explain = vstore.explain_search("seed:2", k=7)
    assert explain["parquet_fallback"] == 1
    assert [m.id for m in explain["results"]] == sql_ranking(vstore, "seed:2", 7)
    assert vstore.verify()["ok"]


def test_verify_and_cleanup_know_the_sidecars(vstore):
    write_rows(vstore, _random(20, 12))
    frag = vstore._manifest().tables["text"].fragments[0]
    orphan = vstore._storage.write_fragment("text", pq.read_table(vstore.path / frag.path))
    assert vstore.verify()["ok"]
    assert set(vstore.verify()["orphans"]) == set(orphan.files())
    side = vstore.path / frag.sidecar_path("embedding.f32")
    good = side.read_bytes()
    side.write_bytes(good[:-4])
    report = vstore.verify()
    assert not report["ok"] and "sidecar holds" in report["problems"][0]
    # a damaged sidecar is not trusted: the search ranks that fragment from its Parquet column instead
    explain = MemoryStore(vstore.path, providers={"text": NAME}).explain_search("seed:1", k=5)
    assert explain["parquet_fallback"] == 1
    assert [m.id for m in explain["results"]] == sql_ranking(vstore, "seed:1", 5)
    side.write_bytes(good)
    old = time.time() - 7200
    for p in orphan.files():
        os.utime(vstore.path / p, (old, old))
    assert vstore.cleanup(older_than=3600)["files_removed"] == 1  # a fragment and its sidecars
    assert not any((vstore.path / p).exists() for p in orphan.files())
    assert all((vstore.path / p).exists() for p in frag.files())
    after = vstore.verify()
    assert after["ok"] and after["orphans"] == []


def test_nearest_matches_brute_force(vstore):
    vecs = _random(300, 13)
    ids = write_rows(vstore, vecs, namespaces=["n1"] * 200 + ["n2"] * 100)
    queries = _random(6, 14)
    got_ids, got = vstore._nearest("text", queries, "n2")
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    qs = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = qs @ unit[200:].T
    assert got_ids == [ids[200 + j] for j in sims.argmax(axis=1)]
    assert np.allclose(got, sims.max(axis=1), atol=1e-6)
    none_ids, none = vstore._nearest("text", queries, "nobody")
    assert none_ids == [None] * 6 and np.all(none == -np.inf)


def test_store_open_maps_nothing(vstore):
    write_rows(vstore, _random(100, 15))
    from aios_memory.vectors import CACHE

    CACHE.clear()
    reopened = MemoryStore(vstore.path, providers={"text": NAME})
    assert len(CACHE._items) == 0  # opening reads the manifest only
    reopened.search("seed:3", k=2)
    assert any(kind == "vec" for _path, kind in CACHE._items)


def _frag(rows: int, i: int) -> Fragment:
    return Fragment(f"data/text/{i:032x}.parquet", rows, rows * 100)


def test_plan_compaction_merges_runs_of_small_fragments():
    assert plan_compaction([_frag(10, i) for i in range(5)]) == []  # few fragments: nothing to do
    small = [_frag(10, i) for i in range(20)]
    plan = plan_compaction(small)
    assert [len(g) for g in plan] == [20]
    big = _frag(10_000_000, 99)
    mixed = [*small[:10], big, *small[10:]]
    plan = plan_compaction(mixed)
    assert all(big not in g for g in plan)  # a big fragment is never rewritten to absorb small ones
    assert sum(len(g) for g in plan) == 20 and all(len(g) >= 2 for g in plan)
    merged = {f.path for g in plan for f in g}
    assert len(merged) == 20


def test_storage_without_vectors_has_no_sidecars(tmp_path):
    s = Storage(tmp_path / "s")
    frag = s.write_fragment("text", pa.table({"id": ["a", "b"]}))
    assert frag.sidecars == () and frag.files() == [frag.path]


def test_where_positions_follow_scan_order_across_row_groups(vstore):
    """The where mask is read back in scan order: over fragments of several row groups (and threads),
    every returned row satisfies the predicate and every selected row is returned."""
    for part in range(3):
        n = 5000  # five row groups per fragment
        write_rows(
            vstore,
            _random(n, 40 + part),
            namespaces=["m" if i % 3 else "o" for i in range(n)],
            metadata=[{"i": part * n + i} for i in range(n)],
        )
    where = "CAST(metadata->>'$.i' AS INTEGER) % 7 = ?"
    e = vstore.explain_search("seed:1", k=10_000, namespace="m", where=where, params=[3])
    want = {i for i in range(15_000) if i % 7 == 3 and (i % 5000) % 3}
    assert e["selected"] == e["scored"] == len(want)
    assert {m.metadata["i"] for m in e["results"]} == want
    assert [m.id for m in e["results"][:25]] == sql_ranking(
        vstore, "seed:1", 25, namespace="m", where=where, params=[3]
    )


def test_plan_compaction_is_tiered_bounded_files_and_rewrites():
    """2,000 single adds of 1 KB under the policy: few files at every moment, each byte rewritten only
    a logarithmic number of times (not once per commit, as merging everything each time would)."""
    frags: list[Fragment] = []
    written = rewritten = 0
    most = 0
    for i in range(2000):
        frags.append(Fragment(f"data/text/{i:032x}.parquet", 1, 1000))
        written += 1000
        for group in plan_compaction(frags):
            size = sum(f.nbytes for f in group)
            rewritten += size
            gone = {f.path for f in group}
            frags = [f for f in frags if f.path not in gone]
            frags.append(Fragment(f"data/text/m{i:031x}.parquet", sum(f.rows for f in group), size))
        most = max(most, len(frags))
    assert sum(f.rows for f in frags) == 2000
    assert most <= 4 * 9  # at most max_per_tier + 1 per tier, a handful of tiers
    assert rewritten <= 4 * written  # about one rewrite per tier crossed


def _open_into(root) -> tuple[int, list[str]]:
    """(descriptors of this process open on files under ``root``, those whose file was deleted)."""
    fds, deleted = 0, []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(root)):
            fds += 1
            if target.endswith(" (deleted)"):
                deleted.append(target)
    return fds, deleted


def test_cache_lets_go_of_superseded_and_deleted_files(vstore):
    """Issue finding: the per-process cache kept a handle or map of every fragment it ever touched, so a
    long-running server hit EMFILE and deleted files stayed allocated."""
    from aios_memory.vectors import CACHE

    root = vstore._storage.root
    for i in range(12):  # 12 single commits: 12 fragments (auto-compaction merges some)
        write_rows(vstore, _random(3, 40 + i))
        assert len(vstore.search(f"seed:{i}", k=3)) == 3
    vstore.search("seed:1", k=3, half_life=60.0)  # maps the created_at sidecars too
    before = {k for k in CACHE._items if k[0].startswith(str(root))}
    assert before
    vstore.compact()
    vstore.search("seed:2", k=3)  # a new version: entries of files it no longer names are released
    live = {str(root / p) for p in vstore._manifest().fragment_paths()}
    assert {k[0] for k in CACHE._items if k[0].startswith(str(root))} <= live
    report = vstore.cleanup(older_than=0)
    assert report["files_removed"] >= 1
    fds, deleted = _open_into(root)
    assert deleted == [], deleted  # nothing deleted stays allocated by this process
    assert fds <= 3 * len(vstore._manifest().tables["text"].fragments) + 2


def test_cache_bounds_open_handles_and_stays_correct(vstore, monkeypatch):
    from aios_memory.vectors import CACHE

    monkeypatch.setattr(CACHE, "max_handles", 6)
    vecs = []
    for i in range(9):  # nine fragments under the compaction threshold, each searched
        v = _random(4, 60 + i)
        vecs.append(v)
        write_rows(vstore, v)
    allv = np.concatenate(vecs)
    for i in range(5):
        got = vstore.search(f"seed:{i}", k=5)
        assert [m.id for m in got] == sql_ranking(vstore, f"seed:{i}", 5)
        assert CACHE.stats()["handles"] <= 6
    fds, _ = _open_into(vstore._storage.root)
    assert fds <= 6 + 1  # the capped handles, plus the writers' lock file at most
    assert allv.shape == (36, DIM)
