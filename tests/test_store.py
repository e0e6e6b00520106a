"""MemoryStore end to end with the real text model, real Parquet files and real DuckDB."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import png_bytes

from aios_memory import EmbeddingProvider, MemoryStore, hookimpl
from aios_memory.errors import (
    EmptyContentError,
    InvalidInputError,
    MemoryNotFoundError,
    ModalityError,
    ModelNotInstalledError,
    ProviderMismatchError,
    ProviderNotFoundError,
    QueryError,
    StoreCorruptError,
    UnsupportedMediaError,
)
from aios_memory.plugins import register_plugin, unregister_plugin

FACTS = [
    "The user's cat is called Miso",
    "Stock markets fell sharply on Tuesday",
    "The flight to Tokyo leaves at 11:05",
    "Photosynthesis turns light into chemical energy",
]


def _snapshot(store: MemoryStore) -> tuple[int, list]:
    rows = store.sql("SELECT id, content, metadata FROM text_memories ORDER BY id").to_pylist()
    return store.version, rows


def test_add_get_search(store):
    ids = store.add_many(FACTS, namespace="agent", metadata={"origin": "test"})
    assert len(set(ids)) == 4
    m = store.get(ids[0])
    assert (m.content, m.modality, m.namespace, m.metadata) == (FACTS[0], "text", "agent", {"origin": "test"})
    assert m.provider == "minilm-l6-v2"
    hits = store.search("what pet does the user have?", k=2)
    assert hits[0].id == ids[0] and hits[0].score > hits[1].score
    assert store.search("when does my plane depart", k=1)[0].id == ids[2]


def test_add_many_is_one_atomic_commit(store):
    store.add("first", namespace="a")
    before = _snapshot(store)
    with pytest.raises(EmptyContentError):
        store.add_many(["good one", "another good one", "   "])
    assert _snapshot(store) == before  # nothing of the failed batch is visible
    store.add_many(["x1", "x2", "x3"])
    assert store.version == before[0] + 1
    assert store.sql("SELECT count(*) AS n FROM text_memories").column("n")[0].as_py() == 4


def test_round_trip_across_processes(store, model_home):
    ids = store.add_many(FACTS, metadata=[{"i": i} for i in range(4)])
    script = textwrap.dedent(
        f"""
        import json, sys
        from aios_memory import MemoryStore
        s = MemoryStore({str(store.path)!r})
        rows = s.sql("SELECT id, content, metadata FROM text_memories ORDER BY content").to_pylist()
        new = s.add("written by the child process", namespace="child")
        print(json.dumps({{"rows": rows, "new": new, "top": s.search("pet cat", k=1)[0].id}}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    assert sorted(r["id"] for r in got["rows"]) == sorted(ids)
    assert sorted(r["content"] for r in got["rows"]) == sorted(FACTS)
    assert got["top"] == ids[0]
    reopened = MemoryStore(store.path)
    assert reopened.get(got["new"]).namespace == "child"
    assert reopened.stats()["tables"]["text"]["memories"] == 5


def test_namespaces_are_isolated(store):
    a = store.add("Alice's password hint is her first dog's name", namespace="alice")
    b = store.add("Bob's password hint is his first dog's name", namespace="bob")
    assert [m.id for m in store.search("password hint", namespace="alice", k=10)] == [a]
    assert [m.id for m in store.search("password hint", namespace="bob", k=10)] == [b]
    assert {m.id for m in store.search("password hint", k=10)} == {a, b}
    assert store.search("password hint", namespace="carol") == []


def test_where_with_positional_and_named_parameters(store):
    for year, text in [
        (2019, "moved to Lisbon"),
        (2021, "adopted a cat"),
        (2023, "started learning Japanese"),
    ]:
        store.add(text, metadata={"year": year, "tag": "life"})
    pred = "CAST(json_extract(metadata, '$.year') AS INTEGER) >= ?"
    got = store.search("life events", k=10, where=pred, params=[2021])
    assert sorted(m.content for m in got) == ["adopted a cat", "started learning Japanese"]
    named = store.search(
        "life events",
        k=10,
        where="json_extract_string(metadata, '$.tag') = $tag AND "
        "CAST(json_extract(metadata, '$.year') AS INTEGER) < $y",
        params={"tag": "life", "y": 2020},
    )
    assert [m.content for m in named] == ["moved to Lisbon"]


def test_user_strings_are_values_never_sql(store):
    evil = "x'); DELETE FROM text_memories; --"
    store.add("a harmless memory", namespace="ns")
    mid = store.add(evil, namespace=evil, metadata={evil: evil})
    assert store.get(mid).content == evil and store.get(mid).namespace == evil
    assert [m.id for m in store.search(evil, namespace=evil)] == [mid]
    got = store.search("memory", k=10, where="content = ?", params=[evil])
    assert [m.id for m in got] == [mid]
    assert store.stats()["tables"]["text"]["memories"] == 2


def test_delete_and_update(store):
    ids = store.add_many(FACTS)
    assert store.delete(ids[1]) == 1
    with pytest.raises(MemoryNotFoundError):
        store.get(ids[1])
    before = _snapshot(store)
    with pytest.raises(MemoryNotFoundError, match="nothing was deleted"):
        store.delete([ids[0], "no-such-id"])
    assert _snapshot(store) == before
    updated = store.update(ids[0], "The user's dog is called Rex", metadata={"edited": True})
    assert updated.content == "The user's dog is called Rex" and updated.updated_at is not None
    assert updated.metadata == {"edited": True} and updated.created_at == store.get(ids[0]).created_at
    assert store.search("puppy named Rex", k=1)[0].id == ids[0]
    with pytest.raises(MemoryNotFoundError):
        store.update("no-such-id", "x")


def test_compact_keeps_every_memory(store):
    for fact in FACTS:
        store.add(fact)
    assert store.stats()["tables"]["text"]["fragments"] == 4
    before = sorted(store.sql("SELECT id, content FROM text_memories").to_pylist(), key=lambda r: r["id"])
    assert store.compact() == {"text": 4}
    assert store.stats()["tables"]["text"]["fragments"] == 1
    assert (
        sorted(store.sql("SELECT id, content FROM text_memories").to_pylist(), key=lambda r: r["id"])
        == before
    )
    assert store.verify()["ok"]
    assert store.compact() == {}  # nothing to merge: no new version
    old = store.version
    store.checkout(1)  # an older version is still readable
    assert store.stats()["tables"]["text"]["memories"] == 1
    store.checkout(None)
    assert store.version == old


def test_bad_input_is_rejected_and_changes_nothing(store):
    store.add_many(FACTS)
    before = _snapshot(store)
    cases = [
        (EmptyContentError, lambda: store.add("")),
        (EmptyContentError, lambda: store.add(" \n\t ")),
        (ModalityError, lambda: store.add("some text", modality="image")),
        (InvalidInputError, lambda: store.add("text", modality="smell")),
        (InvalidInputError, lambda: store.add(12345)),
        (InvalidInputError, lambda: store.add("text", metadata={"x": object()})),
        (InvalidInputError, lambda: store.add("text", metadata=["not", "a", "dict"])),
        (InvalidInputError, lambda: store.add("text", namespace="")),
        (UnsupportedMediaError, lambda: store.add(b"definitely not media")),
        (EmptyContentError, lambda: store.add(b"")),
        (
            ModelNotInstalledError,
            lambda: store.add(png_bytes(size=32)),
        ),  # CLIP registered, weights not installed
        (InvalidInputError, lambda: store.search("q", k=0)),
        (QueryError, lambda: store.search("q", where="no_such_column = 1")),
        (QueryError, lambda: store.search("q", where="1=1; DROP TABLE x")),
        (QueryError, lambda: store.sql("SELEC nonsense")),
        (QueryError, lambda: store.sql("DELETE FROM text_memories")),
        (QueryError, lambda: store.sql("SELECT 1; SELECT 2")),
        (MemoryNotFoundError, lambda: store.get("missing")),
        (ProviderNotFoundError, lambda: MemoryStore(store.path, providers={"text": "no-such"}).add("x")),
    ]
    for exc, call in cases:
        with pytest.raises(exc):
            call()
        assert _snapshot(store) == before


def test_damaged_manifest_is_reported_on_open(store):
    store.add("something")
    manifest = sorted((store.path / "_versions").glob("*.manifest.json"))[-1]
    manifest.write_text(manifest.read_text().replace("minilm", "minilX"))
    with pytest.raises(StoreCorruptError, match="manifest .* is damaged"):
        MemoryStore(store.path)


def test_missing_fragment_is_reported(store):
    store.add("something")
    next((store.path / "data" / "text").glob("*.parquet")).unlink()
    with pytest.raises(StoreCorruptError, match="missing or unreadable"):
        store.search("something")
    assert not store.verify()["ok"]


class _CharTrigrams(EmbeddingProvider):
    """A real (if simple) third text provider: hashed character trigrams."""

    name = "trigram-64"
    modality = "text"
    dim = 64

    def _embed(self, items):
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        for i, s in enumerate(items):
            s = f"  {s.lower()} "
            for j in range(len(s) - 2):
                out[i, hash(s[j : j + 3]) % self.dim] += 1
        return out


class _MeanColour(EmbeddingProvider):
    """A real (if simple) image provider: the mean RGB colour plus a constant."""

    name = "mean-colour-4"
    modality = "image"
    dim = 4

    def _embed(self, items):
        import io

        from PIL import Image

        return [[*np.asarray(Image.open(io.BytesIO(b)).convert("RGB")).mean((0, 1)), 1.0] for b in items]


class _TrigramPlugin:
    @hookimpl
    def register_embedding_providers(self, register):
        register(_CharTrigrams())
        register(_MeanColour())


@pytest.fixture()
def trigram_plugin():
    plugin = _TrigramPlugin()
    register_plugin(plugin, name="trigram-test")
    yield
    unregister_plugin(plugin)


def test_a_store_keeps_its_provider(store, trigram_plugin):
    store.add("built with MiniLM")
    with pytest.raises(ProviderMismatchError, match="were embedded with 'minilm-l6-v2'"):
        MemoryStore(store.path, providers={"text": "trigram-64"}).add("x")
    other = MemoryStore(store.path.parent / "tri", providers={"text": "trigram-64"})
    other.add("hello world")
    assert other.stats()["tables"]["text"]["dim"] == 64
    assert MemoryStore(other.path).provider_for("text").name == "trigram-64"  # reopened: table's own provider
    schema_meta = other.sql("SELECT * FROM text_memories").schema  # DuckDB view, vectors as FLOAT[64]
    assert "embedding" in schema_meta.names


def test_providers_listing(store):
    store.add("x")
    info = {p["name"]: p for p in store.providers()}
    assert info["minilm-l6-v2"]["tables"] == ["text"] and info["minilm-l6-v2"]["dim"] == 384


def test_concurrent_writer_processes_lose_nothing(store, model_home):
    """Three real processes append at once while this one reads: every memory lands exactly once."""
    script = textwrap.dedent(
        """
        import sys
        from aios_memory import MemoryStore
        s = MemoryStore(sys.argv[1])
        for i in range(15):
            s.add(f"writer {sys.argv[2]} memory {i}", namespace=f"w{sys.argv[2]}")
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(store.path), str(w)], stderr=subprocess.PIPE, text=True
        )
        for w in range(3)
    ]
    seen = []
    while any(p.poll() is None for p in procs):
        seen.append(store.sql("SELECT count(*) AS n FROM text_memories").column("n")[0].as_py())
    for p in procs:
        assert p.wait() == 0, p.stderr.read()
    rows = store.sql("SELECT content FROM text_memories").column("content").to_pylist()
    assert len(rows) == len(set(rows)) == 45
    assert seen == sorted(seen)  # a reader never sees the count go backwards
    ops = [store._storage.read_manifest(v).operation for v in store._storage.versions()]
    assert sum(op.startswith("add") for op in ops) == 45  # one commit per add
    assert all(op.startswith(("add", "compact")) for op in ops) and store.verify()["ok"]


def test_where_cannot_escape_its_namespace(store):
    """Even a predicate crafted to close the CTE and rebuild the query only sees the namespace's rows."""
    store.add("alice's note", namespace="alice")
    store.add("secret of bob", namespace="bob")
    escape = (
        "true)) SELECT * EXCLUDE (media, embedding), 1.0::DOUBLE AS score FROM text_memories "
        "WHERE CAST(? AS FLOAT[384]) IS NOT NULL OR ? IS NULL OR ? IS NULL LIMIT ? --"
    )
    try:
        got = [m.content for m in store.search("note", namespace="alice", where=escape)]
    except QueryError:
        got = []
    assert "secret of bob" not in got
    assert [
        m.content for m in store.search("x", namespace="alice", where="content LIKE ?", params=["%a;b%"])
    ] == []


def test_ids_keep_input_order_across_modalities(store, trigram_plugin):
    ids = store.add_many(["alpha", png_bytes(size=16), "beta", png_bytes("coffee", 16), "gamma"])
    got = [store.get(i) for i in ids]
    assert [m.modality for m in got] == ["text", "image", "text", "image", "text"]
    assert [m.content for m in got if m.modality == "text"] == ["alpha", "beta", "gamma"]
    assert got[1].provider == "mean-colour-4"  # CLIP has no weights here: the installed image provider


def test_search_after_deleting_everything(store):
    ids = store.add_many(["one", "two"])
    store.delete(ids)
    assert store.search("one") == []
    assert store.sql("SELECT count(*) AS n FROM text_memories").column("n")[0].as_py() == 0


def test_more_bad_input_is_typed_and_harmless(store):
    store.add("kept")
    before = _snapshot(store)
    for call in (
        lambda: store.add_many("hey"),
        lambda: store.delete(123),
        lambda: store.delete([1]),
        lambda: store.add((["a"], 16000)),
        lambda: store.add((np.zeros((2, 2, 2)), 16000)),
        lambda: store.add((np.zeros(10), 10**12)),
        lambda: store.add((np.full(10, np.nan), 16000)),
    ):
        with pytest.raises(InvalidInputError):
            call()
        assert _snapshot(store) == before


def test_a_cold_add_loads_only_what_it_needs(model_home, tmp_path):
    """Cold start: a fresh process that opens a store and adds one sentence imports neither DuckDB nor
    pyarrow's compute/dataset modules, a plain search needs no DuckDB either (SQL loads it), and a
    process that only embeds loads no store."""
    script = textwrap.dedent(
        f"""
        import json, sys
        # pyarrow imports pandas (and with it pyarrow.compute) on its first conversion whenever pandas
        # is installed (Ray Data and the export tests install it); aios-memory needs no pandas
        class NoPandas:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "pandas":
                    raise ModuleNotFoundError(name)
        sys.meta_path.insert(0, NoPandas())
        import aios_memory
        from aios_memory.plugins import get_provider
        get_provider("minilm-l6-v2").embed_batch(["a sentence"])
        embed_only = sorted(m for m in ("duckdb", "aios_memory.store") if m in sys.modules)
        store = aios_memory.MemoryStore({str(tmp_path / "s")!r})
        mid = store.add("The user's cat is called Miso")
        heavy = ("duckdb", "pyarrow.compute", "pyarrow.dataset", "usearch")
        after_add = sorted(m for m in heavy if m in sys.modules)
        hit = store.search("what is the cat called?", k=1)[0].id == mid
        after_search = "duckdb" in sys.modules  # vector search reads the sidecars, not SQL
        rows = store.sql("SELECT count(*) AS n FROM text_memories").to_pylist()
        print(json.dumps({{"embed_only": embed_only, "after_add": after_add, "hit": hit,
                          "after_search": after_search, "rows": rows, "sql": "duckdb" in sys.modules}}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {
        "embed_only": [],
        "after_add": [],
        "hit": True,
        "after_search": False,
        "rows": [{"n": 1}],
        "sql": True,
    }
