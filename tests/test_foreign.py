"""aios_memory.foreign: embedding functions aios-memory did not make (a LangChain ``Embeddings``, a LlamaIndex
``BaseEmbedding``, a plain callable) as text providers, registered by name, refused on another model's table.

The wrapped models are real, deterministic functions (hashed character trigrams, LangChain's own
``DeterministicFakeEmbedding``); stores are real directories in ``tmp_path``; a fresh process reopens one.
"""

from __future__ import annotations

import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings
from llama_index.core.base.embeddings.base import BaseEmbedding

from aios_memory import MemoryStore
from aios_memory.errors import InvalidInputError, ProviderError, ProviderMismatchError, ProviderNotFoundError
from aios_memory.foreign import (
    ForeignEmbeddingProvider,
    register_foreign,
    registered_foreign,
    unregister_foreign,
)
from aios_memory.plugins import get_provider

TEXTS = ["The cat is called Miso", "Paris is the capital of France", "Rust has no garbage collector"]


def trigrams(text: str, dim: int = 32) -> list[float]:
    out = [0.0] * dim
    s = f"  {text.lower()} "
    for j in range(len(s) - 2):
        out[zlib.crc32(s[j : j + 3].encode()) % dim] += 1.0
    return out


class TrigramEmbeddings(Embeddings):
    """A LangChain model: documents and queries embedded alike; counts its query calls."""

    model = "trigram-lc"

    def __init__(self) -> None:
        self.query_calls = 0

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [trigrams(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        self.query_calls += 1
        return trigrams(text)


class TrigramLlama(BaseEmbedding):
    """A LlamaIndex model over the same trigrams."""

    def _get_query_embedding(self, query: str) -> list[float]:
        return trigrams(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return trigrams(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return trigrams(text)


def char_counts(texts: list[str]) -> np.ndarray:
    """A plain callable: letter counts a-z (26-d)."""
    return np.array([[t.lower().count(c) + 0.01 for c in "abcdefghijklmnopqrstuvwxyz"] for t in texts])


@pytest.fixture(autouse=True)
def _forget_foreign() -> Iterator[None]:
    yield
    for name in registered_foreign():
        unregister_foreign(name)


def _vectors(store: MemoryStore) -> dict[str, np.ndarray]:
    rows = store.sql("SELECT content, embedding FROM text_memories").to_pylist()
    return {r["content"]: np.asarray(r["embedding"], dtype=np.float32) for r in rows}


def _unit(v: list[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return (a / np.linalg.norm(a)).astype(np.float32)


@pytest.mark.parametrize(
    ("make", "name", "dim"),
    [
        (TrigramEmbeddings, "foreign:test_foreign.TrigramEmbeddings:trigram-lc", 32),
        (lambda: TrigramLlama(model_name="tri-li"), "foreign:test_foreign.TrigramLlama:tri-li", 32),
        (lambda: char_counts, "foreign:test_foreign.char_counts", 26),
    ],
    ids=["langchain", "llama_index", "callable"],
)
def test_each_kind_embeds_a_store(tmp_path: Path, make, name: str, dim: int) -> None:
    embedder = make()
    provider = register_foreign(embedder)
    assert (provider.name, provider.dim, provider.modality) == (name, dim, "text")  # dim from one probe
    fp = provider.fingerprint()
    assert fp["class"] == name.split(":")[1] and fp["dim"] == dim and fp["provider"] == name
    assert get_provider(name) is provider
    store = MemoryStore(tmp_path / "s", providers={"text": name})
    store.add_many(TEXTS)
    stored = _vectors(store)
    reference = char_counts(TEXTS) if provider.kind == "callable" else [trigrams(t) for t in TEXTS]
    for text, ref in zip(TEXTS, reference, strict=True):
        np.testing.assert_allclose(stored[text], _unit(list(ref)), rtol=1e-6, atol=1e-7)
    hit = store.search("capital of France", k=1)[0]
    assert hit.content == "Paris is the capital of France"
    assert store.provider_for("text") is provider


def test_queries_go_through_the_models_query_function(tmp_path: Path) -> None:
    lc = TrigramEmbeddings()
    provider = register_foreign(lc)
    store = MemoryStore(tmp_path / "s", providers={"text": provider.name})
    store.add_many(TEXTS)
    assert lc.query_calls == 0
    assert store.search("Miso the cat", k=1)[0].content == "The cat is called Miso"
    assert lc.query_calls == 1


def test_reopen_in_this_process_with_and_without_registration(tmp_path: Path) -> None:
    provider = register_foreign(DeterministicFakeEmbedding(size=16))
    assert provider.name == "foreign:langchain_core.embeddings.fake.DeterministicFakeEmbedding"
    MemoryStore(tmp_path / "s", providers={"text": provider.name}).add_many(TEXTS)
    assert unregister_foreign(provider.name)
    with pytest.raises(ProviderNotFoundError, match="not registered in this process.*register_foreign"):
        MemoryStore(tmp_path / "s").search("Miso", k=1)
    register_foreign(
        DeterministicFakeEmbedding(size=16)
    )  # the same model again: a new wrapper serves the name
    hits = MemoryStore(tmp_path / "s").search("The cat is called Miso", k=1)
    assert hits[0].content == "The cat is called Miso" and hits[0].score == pytest.approx(1.0, abs=1e-5)


REOPEN = """
import sys
from langchain_core.embeddings import DeterministicFakeEmbedding
from aios_memory import MemoryStore
from aios_memory.errors import ProviderNotFoundError
try:
    MemoryStore(sys.argv[1]).search("Miso", k=1)
except ProviderNotFoundError as exc:
    print("refused:", exc)
from aios_memory.foreign import register_foreign
register_foreign(DeterministicFakeEmbedding(size=16))
print("hit:", MemoryStore(sys.argv[1]).search("The cat is called Miso", k=1)[0].content)
"""


def test_a_fresh_process_is_told_how_to_register_then_reads_after_registering(tmp_path: Path) -> None:
    provider = register_foreign(DeterministicFakeEmbedding(size=16))
    MemoryStore(tmp_path / "s", providers={"text": provider.name}).add_many(TEXTS)
    out = subprocess.run(
        [sys.executable, "-c", REOPEN, str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "refused:" in out and "DeterministicFakeEmbedding" in out and "register_foreign" in out
    assert "hit: The cat is called Miso" in out


def test_another_model_of_the_same_dim_is_refused(tmp_path: Path) -> None:
    first = register_foreign(TrigramEmbeddings())
    MemoryStore(tmp_path / "s", providers={"text": first.name}).add_many(TEXTS)
    other = register_foreign(TrigramLlama(model_name="tri-li"))  # also 32-d
    assert other.dim == first.dim
    with pytest.raises(ProviderMismatchError, match="TrigramEmbeddings"):
        MemoryStore(tmp_path / "s", providers={"text": other.name}).add("x")
    # the same name given to another model: refused at registration in one process ...
    with pytest.raises(ProviderMismatchError, match="registered already with another model"):
        register_foreign(TrigramLlama(model_name="tri-li"), name=first.name)
    # ... and by the table's fingerprint in a process where that name means another model
    unregister_foreign(first.name)
    register_foreign(TrigramLlama(model_name="tri-li"), name=first.name)
    store = MemoryStore(tmp_path / "s")
    with pytest.raises(ProviderMismatchError, match="class"):
        store.search("Miso", k=1)
    with pytest.raises(ProviderMismatchError):
        store.add("x")
    assert len(store.sql("SELECT id FROM text_memories")) == len(TEXTS)


def test_a_name_taken_by_a_provider_that_is_not_foreign_is_refused() -> None:
    with pytest.raises(ProviderError, match="taken"):
        register_foreign(char_counts, name="minilm-l6-v2")
    assert not isinstance(get_provider("minilm-l6-v2"), ForeignEmbeddingProvider)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (lambda texts: [[float("nan")] * 4 for _ in texts], "NaN"),
        (lambda texts: [[0.0] * 4 for _ in texts], "all-zero"),
        (lambda texts: [[1.0] * 3 for _ in texts], "shape"),
        (lambda texts: [[1.0] * 4] * (len(texts) + 1), "shape"),  # a vector too many
        (lambda texts: [["a", "b", "c", "d"] for _ in texts], "not numeric"),
        (lambda texts: 1 / 0, "ZeroDivisionError"),
    ],
    ids=["nan", "zero", "dim", "rows", "strings", "raises"],
)
def test_bad_outputs_are_typed_errors_and_nothing_is_written(tmp_path: Path, bad, match: str) -> None:
    good = lambda texts: [[1.0, 2.0, 3.0, 4.0] for _ in texts]  # noqa: E731
    mode = {"fn": good}
    provider = register_foreign(lambda texts: mode["fn"](texts), name="switchable", dim=4)
    store = MemoryStore(tmp_path / "s", providers={"text": provider.name})
    store.add_many(TEXTS[:1])
    version = store.version
    mode["fn"] = bad
    with pytest.raises(ProviderError, match=match):
        store.add_many(TEXTS[1:])
    with pytest.raises(ProviderError, match=match):
        store.search("Paris", k=1)
    assert store.version == version
    assert [r["content"] for r in store.sql("SELECT content FROM text_memories").to_pylist()] == TEXTS[:1]


@pytest.mark.parametrize(
    ("fn", "match"),
    [
        (lambda texts: [1.0, 2.0], r"shape \(2,\)"),
        (lambda texts: [[]], "shape"),
        (lambda texts: "no", "numeric"),
    ],
)
def test_a_bad_probe_is_refused_at_construction(fn, match: str) -> None:
    with pytest.raises(ProviderError, match=match):
        ForeignEmbeddingProvider(fn)
    assert registered_foreign() == []


def test_not_an_embedding_function_is_refused() -> None:
    with pytest.raises(ProviderError, match="LangChain Embeddings"):
        register_foreign(object())
    with pytest.raises(ProviderError, match="positive integer"):
        register_foreign(char_counts, dim=0)


def test_llama_index_store_with_a_foreign_embedding(tmp_path: Path) -> None:
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.schema import TextNode

    from aios_memory.integrations.llama_index import AiosMemoryVectorStore

    embed = TrigramLlama(model_name="tri-li")
    vector_store = AiosMemoryVectorStore(tmp_path / "s", namespace="li", embed_model=embed)
    nodes = [TextNode(text=t, id_=f"n{i}") for i, t in enumerate(TEXTS)]
    index = VectorStoreIndex(
        nodes, storage_context=StorageContext.from_defaults(vector_store=vector_store), embed_model=embed
    )
    hits = index.as_retriever(similarity_top_k=1).retrieve("capital of France")
    assert [h.node.node_id for h in hits] == ["n1"]
    assert hits[0].score == pytest.approx(
        float(_unit(trigrams("capital of France")) @ _unit(trigrams(TEXTS[1]))), abs=1e-5
    )
    provider = vector_store.client.provider_for("text")
    assert provider.name == "foreign:test_foreign.TrigramLlama:tri-li"
    # another model on this table is refused before anything is written
    with pytest.raises(ProviderMismatchError):
        AiosMemoryVectorStore(tmp_path / "s", namespace="li", embed_model=TrigramLlama(model_name="other"))


def test_the_langchain_adapter_binds_an_open_handle(tmp_path: Path) -> None:
    from aios_memory.integrations.langchain import AiosMemoryVectorStore

    store = MemoryStore(tmp_path / "s")
    vs = AiosMemoryVectorStore(store, namespace="n", embedding=TrigramEmbeddings())
    assert vs.add_texts(TEXTS, ids=["a", "b", "c"]) == ["a", "b", "c"]
    assert store.provider_for("text").name == "foreign:test_foreign.TrigramEmbeddings:trigram-lc"
    assert isinstance(vs.embeddings, TrigramEmbeddings)  # the caller's own model, for vectors
    by_vector = vs.similarity_search_by_vector(vs.embeddings.embed_query("capital of France"), k=1)
    assert [d.id for d in by_vector] == ["b"]
    # a handle opened for another text model is refused, and left as it was
    other = MemoryStore(tmp_path / "o", providers={"text": "minilm-l6-v2"})
    with pytest.raises(InvalidInputError, match="minilm-l6-v2"):
        AiosMemoryVectorStore(other, embedding=TrigramEmbeddings())
    assert other.provider_for("text").name == "minilm-l6-v2"
    # an open handle on a table of another model: refused, and the handle not bound to the new model
    fresh = MemoryStore(tmp_path / "s")
    with pytest.raises(ProviderMismatchError):
        AiosMemoryVectorStore(fresh, embedding=TrigramLlama(model_name="tri-li"))
    assert fresh.provider_for("text").name == "foreign:test_foreign.TrigramEmbeddings:trigram-lc"


def test_a_registered_foreign_model_is_never_a_default(tmp_path, monkeypatch) -> None:
    """A store that names no text provider gets the bundled default (or another installed plugin), never
    a foreign model some adapter registered in this process, even when MiniLM's weights are missing."""
    from aios_memory import MemoryStore
    from aios_memory.foreign import register_foreign, unregister_foreign

    monkeypatch.setenv("AIOS_MEMORY_HOME", str(tmp_path / "empty-home"))  # no weights installed here
    provider = register_foreign(lambda texts: [[1.0, float(len(t))] for t in texts], name="foreign:first")
    try:
        chosen = MemoryStore(tmp_path / "s").provider_for("text")
        assert chosen.name != provider.name
    finally:
        unregister_foreign(provider.name)
