"""Vectors computed elsewhere: ``add_many(items, embeddings=...)``, ``search(vector=...)`` (aios_memory.given).

With real MiniLM: vectors the caller computed with the same model give the same store and the same
ranking as letting the store embed. Bad vectors (shape, dtype, NaN, zero rows, wrong dimension, the
wrong provider, mixed or audio items) are typed errors that commit nothing.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from conftest import png_bytes, wav_bytes
from test_vectors import NAME, register, seeded

from aios_memory import MemoryStore
from aios_memory.errors import InvalidInputError, ProviderMismatchError, ProviderNotFoundError

TEXTS = [
    "The cat sleeps on the warm windowsill.",
    "Quarterly revenue grew by twelve percent.",
    "A storm knocked out power across the valley.",
    "She planted tomatoes and basil in the garden.",
    "The train to Berlin leaves at seven.",
    "Photosynthesis turns light into chemical energy.",
]


def _vectors(store: MemoryStore, table: str = "text") -> dict[str, np.ndarray]:
    t = store.sql(f"SELECT id, embedding FROM {table}_memories")  # noqa: S608 - a fixed table name
    return {
        i: np.asarray(v, np.float32)
        for i, v in zip(t["id"].to_pylist(), t["embedding"].to_pylist(), strict=True)
    }


def test_given_vectors_equal_the_store_embedding(store, tmp_path):
    provider = store.provider_for("text")
    vecs = np.asarray(provider.embed_batch(TEXTS), np.float64) * 3.5  # any scale: stored as unit rows
    ids = store.add_many(TEXTS, embeddings=vecs, provider=provider.name, metadata={"src": "ray"})
    own = MemoryStore(tmp_path / "own")
    own_ids = own.add_many(TEXTS, metadata={"src": "ray"})
    a, b = _vectors(store), _vectors(own)
    for i, j in zip(ids, own_ids, strict=True):
        assert float(a[i] @ b[j]) >= 0.99999
        assert abs(float(np.linalg.norm(a[i])) - 1.0) < 1e-6
    for query in ("a sleeping pet", "power outage", "when does the train go"):
        got = [store.get(h.id).content for h in store.search(query, k=3)]
        assert got == [own.get(h.id).content for h in own.search(query, k=3)]
        q = provider.embed_query(query)
        by_vector = store.search(vector=q * 7.0, k=3)
        assert [h.content for h in by_vector] == got
        assert [round(h.score, 5) for h in by_vector] == [round(h.score, 5) for h in store.search(query, k=3)]
    assert store.get(ids[0]).metadata == {"src": "ray"}
    assert store.explain_search(vector=provider.embed_query("garden"), k=1)["results"][0].id == ids[3]


def test_given_vectors_as_arrow_and_lists(tmp_path):
    register()
    store = MemoryStore(tmp_path / "s", providers={"text": NAME})
    vecs = np.stack([seeded(f"seed:{i}") for i in range(4)])
    arrow = pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), 32)
    ids = store.add_many([f"a{i}" for i in range(4)], embeddings=arrow)
    ids += store.add_many([f"b{i}" for i in range(4)], embeddings=vecs.astype(np.float16).tolist())
    ids += store.add_many([f"c{i}" for i in range(4)], embeddings=(vecs * 100).astype(np.int32))
    got = _vectors(store)
    for k, i in enumerate(ids):
        want = vecs[k % 4] / np.linalg.norm(vecs[k % 4])
        assert float(got[i] @ want) >= 0.999  # float16 and int32 inputs round, then normalise
    assert store.search(vector=vecs[2], k=1)[0].content == "a2"


def test_exact_dedupe_applies_to_given_vectors(tmp_path):
    register()
    store = MemoryStore(tmp_path / "s", providers={"text": NAME})
    vecs = np.stack([seeded(f"seed:{i}") for i in range(3)])
    first = store.add_many(["x", "y", "x"], embeddings=vecs)
    assert first[0] == first[2] and len(set(first)) == 2
    assert store.add_many(["y"], embeddings=vecs[:1]) == [first[1]]
    assert store.sql("SELECT count(*) AS n FROM text_memories")["n"][0].as_py() == 2


def _held(tmp_path) -> tuple[MemoryStore, int]:
    """A seeded-vector store holding one memory, and its version."""
    register()
    store = MemoryStore(tmp_path / "s", providers={"text": NAME})
    store.add("kept")
    return store, store.version


BAD = [
    ("rows", lambda v: v[:2], InvalidInputError, "2 rows for 3 items"),
    ("dim", lambda v: v[:, :16], InvalidInputError, "16 dimensions"),
    ("1d", lambda v: v[0], InvalidInputError, "2-D"),
    ("nan", lambda v: np.where(np.arange(32) == 3, np.nan, v), InvalidInputError, "NaN"),
    ("inf", lambda v: np.where(np.arange(32) == 3, np.inf, v), InvalidInputError, "infinite"),
    ("zero", lambda v: np.vstack([v[:2], np.zeros((1, 32))]), InvalidInputError, "row 2 is all zeros"),
    ("str", lambda v: v.astype(str), InvalidInputError, "real numbers"),
    ("bool", lambda v: v > 0, InvalidInputError, "real numbers"),
    ("complex", lambda v: v.astype(np.complex64), InvalidInputError, "real numbers"),
    ("ragged", lambda v: [list(v[0]), list(v[1][:5]), list(v[2])], InvalidInputError, "rectangular"),
    ("null", lambda v: pa.array([list(v[0]), None, list(v[2])], pa.list_(pa.float32(), 32)), InvalidInputError, "nulls"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "bad", "error", "says"), BAD, ids=[b[0] for b in BAD])
def test_bad_vectors_are_refused_and_nothing_is_written(tmp_path, name, bad, error, says):
    store, before = _held(tmp_path)
    vecs = np.stack([seeded(f"seed:{i}") for i in range(3)])
    with pytest.raises(error, match=says):
        store.add_many(["p", "q", "r"], embeddings=bad(vecs))
    assert store.version == before
    if name in ("dim", "nan", "zero", "str", "1d"):
        with pytest.raises(InvalidInputError):
            store.search(vector=bad(vecs)[-1] if name != "1d" else bad(vecs)[:0])


def test_provider_and_modality_checks(tmp_path):
    store, before = _held(tmp_path)
    vecs = np.stack([seeded(f"seed:{i}") for i in range(2)])
    with pytest.raises(ProviderMismatchError, match=NAME):
        store.add_many(["p", "q"], embeddings=vecs, provider="minilm-l6-v2")
    with pytest.raises(ProviderNotFoundError):
        store.add_many(["p", "q"], embeddings=vecs, provider="no-such-provider")
    with pytest.raises(InvalidInputError, match="pass embeddings= too"):
        store.add_many(["p", "q"], provider=NAME)
    with pytest.raises(InvalidInputError, match="one modality"):
        store.add_many(["p", png_bytes()], embeddings=vecs)
    with pytest.raises(InvalidInputError, match="transcript"):
        store.add_many([wav_bytes(), wav_bytes(0.7)], embeddings=vecs)
    with pytest.raises(InvalidInputError, match="not both"):
        store.search("p", vector=vecs[0])
    with pytest.raises(InvalidInputError, match="a query or a vector"):
        store.search()
    with pytest.raises(InvalidInputError, match="unknown search arguments"):
        store.explain_search(vector=vecs[0], nope=1)
    assert store.version == before
    assert store.add_many(["p", "q"], embeddings=vecs, provider=NAME)


def test_extreme_magnitudes_and_the_handles_provider(tmp_path):
    """Review regressions: float32 rows whose norm overflows float32 were stored as zeros; a float64 row
    too large to normalise is named as such; provider= cannot override the handle's own choice."""
    register()
    store = MemoryStore(tmp_path / "s", providers={"text": NAME})
    huge = np.full((1, 32), 1e38, np.float32)
    tiny = np.full((1, 32), 1e-40, np.float32)
    ids = store.add_many(["huge", "tiny"], embeddings=np.vstack([huge, tiny]))
    got = _vectors(store)
    for i in ids:
        assert abs(float(np.linalg.norm(got[i])) - 1.0) < 1e-6
    assert store.search(vector=huge[0], k=1)[0].content in ("huge", "tiny")  # both point the same way
    with pytest.raises(InvalidInputError, match="too large to normalise"):
        store.add_many(["x"], embeddings=np.full((1, 32), 1e200))
    with pytest.raises(ProviderMismatchError, match="this handle embeds text"):
        MemoryStore(tmp_path / "t", providers={"text": NAME}).add_many(
            ["x"], embeddings=np.ones((1, 384)), provider="minilm-l6-v2"
        )


def test_a_new_table_of_a_converted_model_needs_its_weights_installed(tmp_path, monkeypatch):
    """Given vectors for MiniLM where its weights are not installed: a new table could not record which
    weights they are for (and would then accept any), so it is refused; nothing is written."""
    from aios_memory.errors import ModelNotInstalledError

    monkeypatch.setenv("AIOS_MEMORY_HOME", str(tmp_path / "no-models"))
    store = MemoryStore(tmp_path / "s", providers={"text": "minilm-l6-v2"})
    with pytest.raises(ModelNotInstalledError, match="record which weights"):
        store.add_many(["a"], embeddings=np.ones((1, 384), np.float32), provider="minilm-l6-v2")
    assert store.version == 0 and "text" not in store._storage.read_manifest().tables
