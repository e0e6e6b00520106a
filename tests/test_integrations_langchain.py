"""The LangChain adapters against the real ``langchain-core`` and the real MiniLM weights."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.vectorstores import VectorStore, VectorStoreRetriever

from aios_memory import InvalidInputError, MemoryStore
from aios_memory.errors import ProviderMismatchError
from aios_memory.foreign import unregister_foreign
from aios_memory.integrations.langchain import AiosMemoryEmbeddings, AiosMemoryVectorStore

DOCS = [
    Document(id="cat", page_content="The user's cat is called Miso", metadata={"kind": "fact", "year": 2024}),
    Document(
        id="tokyo", page_content="Flight to Tokyo on April 3", metadata={"kind": "travel", "year": 2025}
    ),
    Document(
        page_content="Dentist appointment on March 14 at 10:30", metadata={"kind": "health", "year": 2025}
    ),
    Document(
        page_content="The user prefers green tea over coffee", metadata={"kind": "fact", "urgent": True}
    ),
    Document(
        page_content="Parquet is a columnar storage format", metadata={"kind": "note", "tags": "db, files"}
    ),
]
QUERIES = {
    "what pet does the user have?": "The user's cat is called Miso",
    "when is the trip to Japan?": "Flight to Tokyo on April 3",
    "teeth checkup": "Dentist appointment on March 14 at 10:30",
    "which hot drink does the user like?": "The user prefers green tea over coffee",
    "file formats for tables": "Parquet is a columnar storage format",
}


@pytest.fixture()
def vs(model_home, tmp_path) -> AiosMemoryVectorStore:
    store = AiosMemoryVectorStore(tmp_path / "store", namespace="alice")
    ids = store.add_documents(DOCS)
    assert ids[:2] == ["cat", "tokyo"] and len(set(ids)) == len(DOCS)
    return store


def test_is_a_langchain_vector_store(vs):
    assert isinstance(vs, VectorStore) and isinstance(vs.as_retriever(), VectorStoreRetriever)


def test_embeddings_equal_sentence_transformers(model_home, minilm_source):
    """LangChain code gets MiniLM vectors equal to the reference implementation's on the same weights."""
    from sentence_transformers import SentenceTransformer

    texts = [d.page_content for d in DOCS] + list(QUERIES)
    ref = SentenceTransformer(str(minilm_source), device="cpu").encode(texts, normalize_embeddings=True)
    emb = AiosMemoryEmbeddings()
    ours = np.array(emb.embed_documents(texts))
    query = np.array(emb.embed_query(texts[-1]))
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    print(f"AiosMemoryEmbeddings vs sentence-transformers: min cosine {cos.min():.8f}, "
          f"max abs err {np.abs(ours - ref).max():.2e}")  # fmt: skip
    assert cos.min() >= 0.99999 and ours.shape == (len(texts), 384)
    assert np.abs(query - ours[-1]).max() < 1e-6


def test_similarity_search_ranks_the_right_document_first(vs):
    emb = vs.embeddings
    doc_vecs = np.array(emb.embed_documents([d.page_content for d in DOCS]))
    for query, expected in QUERIES.items():
        hits = vs.similarity_search_with_score(query, k=len(DOCS))
        assert hits[0][0].page_content == expected, (query, hits[0])
        # scores are the cosine similarities of the query and document embeddings, best first
        cos = doc_vecs @ np.array(emb.embed_query(query))
        by_text = {d.page_content: c for d, c in zip(DOCS, cos, strict=True)}
        assert np.allclose([s for _, s in hits], [by_text[d.page_content] for d, _ in hits], atol=1e-5)
        assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
        assert [d.page_content for d in vs.similarity_search(query, k=1)] == [expected]
    top = vs.similarity_search("what pet does the user have?", k=1)[0]
    assert top.id == "cat" and top.metadata == {"kind": "fact", "year": 2024}


def test_search_by_vector_equals_search_by_text(vs):
    query = "when is the trip to Japan?"
    by_text = vs.similarity_search_with_score(query, k=3)
    by_vec = vs.similarity_search_with_score_by_vector(vs.embeddings.embed_query(query), k=3)
    assert [d.id for d, _ in by_vec] == [d.id for d, _ in by_text]
    assert np.allclose([s for _, s in by_vec], [s for _, s in by_text], atol=1e-5)
    assert vs.similarity_search_by_vector(vs.embeddings.embed_query(query), k=1)[0].id == "tokyo"
    with pytest.raises(InvalidInputError, match="384"):
        vs.similarity_search_by_vector([0.1] * 10)


def test_filters(vs):
    def found(filter, query="anything at all", k=10):
        return sorted(d.page_content.split()[0] for d in vs.similarity_search(query, k=k, filter=filter))

    assert found({"kind": "fact"}) == ["The", "The"]
    assert found({"kind": "travel"}) == ["Flight"]
    assert found({"year": {"$gte": 2025}}) == ["Dentist", "Flight"]
    assert found({"year": {"$lt": 2025}}) == ["The"]
    assert found({"year": 2025, "kind": "health"}) == ["Dentist"]
    assert found({"$or": [{"kind": "travel"}, {"urgent": True}]}) == ["Flight", "The"]
    assert found({"kind": {"$in": ["note", "health"]}}) == ["Dentist", "Parquet"]
    assert found({"kind": {"$nin": ["fact", "travel", "health"]}}) == ["Parquet"]
    assert found({"year": {"$ne": 2025}}) == ["Parquet", "The", "The"]  # a missing key is "not equal"
    assert found({"$not": {"kind": "fact"}}) == ["Dentist", "Flight", "Parquet"]
    assert found({"tags": {"$like": "files"}}) == ["Parquet"]
    # types are kept: the string "2024" is not the number 2024, True is not 1
    assert found({"year": "2024"}) == [] and found({"urgent": 1}) == []
    # values are parameters: a quote in a value is just a value
    assert found({"kind": "fact' OR '1'='1"}) == []
    # the best match within a filter
    assert vs.similarity_search("what pet does the user have?", k=1, filter={"kind": "fact"})[0].id == "cat"
    for bad in ({"kind') OR TRUE --": "x"}, {"kind": {"$regex": "x"}}, {"$nor": []}, {"kind": {"$in": []}}):
        with pytest.raises(InvalidInputError):
            vs.similarity_search("x", filter=bad)


def test_ids_get_upsert_delete(vs):
    got = vs.get_by_ids(["cat", "tokyo", "no-such-id"])
    assert sorted(d.id for d in got) == ["cat", "tokyo"]
    assert {d.id: d.page_content for d in got}["tokyo"] == "Flight to Tokyo on April 3"
    # documents added without an id get the store's id, which works as well
    dentist = vs.similarity_search("teeth checkup", k=1)[0]
    assert dentist.id not in ("cat", "tokyo") and vs.get_by_ids([dentist.id])[0].page_content.startswith(
        "Dentist"
    )
    # adding with an existing id replaces that document
    assert vs.add_texts(["The user's cat is now called Tom"], [{"kind": "fact"}], ids=["cat"]) == ["cat"]
    assert [d.page_content for d in vs.get_by_ids(["cat"])] == ["The user's cat is now called Tom"]
    assert len(vs.similarity_search("cat", k=10)) == len(DOCS)
    assert vs.delete(["cat", dentist.id, "no-such-id"]) is True
    assert vs.get_by_ids(["cat", dentist.id]) == []
    assert len(vs.similarity_search("cat", k=10)) == len(DOCS) - 2
    with pytest.raises(ValueError):
        vs.add_texts(["a", "b"], ids=["only-one"])


def test_namespaces_are_separate(vs, tmp_path):
    bob = AiosMemoryVectorStore(vs.store, namespace="bob")
    bob.add_texts(["Bob's dog is called Rex"], ids=["cat"])  # the same id in another namespace
    assert [d.page_content for d in bob.similarity_search("what pet does the user have?", k=10)] == [
        "Bob's dog is called Rex"
    ]
    assert "Rex" not in " ".join(d.page_content for d in vs.similarity_search("dog", k=10))
    assert vs.get_by_ids(["cat"])[0].page_content == "The user's cat is called Miso"
    assert bob.delete() is True  # everything of bob's namespace, nothing of alice's
    assert bob.similarity_search("dog", k=10) == [] and len(vs.similarity_search("dog", k=10)) == len(DOCS)
    assert MemoryStore(tmp_path / "store").stats()["namespaces"] == {"alice": len(DOCS)}


def test_retriever_and_relevance_scores(vs):
    retriever = vs.as_retriever(search_kwargs={"k": 1})
    assert [d.id for d in retriever.invoke("what pet does the user have?")] == ["cat"]
    filtered = vs.as_retriever(search_kwargs={"k": 2, "filter": {"kind": "travel"}})
    assert [d.id for d in filtered.invoke("what pet does the user have?")] == ["tokyo"]
    thresholded = vs.as_retriever(
        search_type="similarity_score_threshold", search_kwargs={"k": 5, "score_threshold": 0.4}
    )
    assert [d.id for d in thresholded.invoke("what pet does the user have?")] == ["cat"]
    rel = vs.similarity_search_with_relevance_scores("what pet does the user have?", k=5)
    assert all(0.0 <= s <= 1.0 for _, s in rel) and rel[0][0].id == "cat"
    mmr_free = asyncio.run(vs.asimilarity_search("when is the trip to Japan?", k=1))
    assert [d.id for d in mmr_free] == ["tokyo"]


def test_from_texts(model_home, tmp_path):
    vs = AiosMemoryVectorStore.from_texts(
        ["Paris is the capital of France", "The mitochondria is the powerhouse of the cell"],
        AiosMemoryEmbeddings(),
        metadatas=[{"topic": "geo"}, {"topic": "bio"}],
        store=tmp_path / "s",
        namespace="quiz",
    )
    assert vs.similarity_search("biology of cells", k=1)[0].metadata == {"topic": "bio"}
    # another model of the same dimension (the suite's fake one, wrapped as a foreign provider) is refused
    # by the MiniLM table's fingerprint, before anything is written
    version = MemoryStore(tmp_path / "s").version
    with pytest.raises(ProviderMismatchError, match="minilm-l6-v2"):
        AiosMemoryVectorStore.from_texts(["x"], DeterministicFakeEmbedding(size=384), store=tmp_path / "s")
    assert MemoryStore(tmp_path / "s").version == version
    assert unregister_foreign("foreign:langchain_core.embeddings.fake.DeterministicFakeEmbedding")
    with pytest.raises(ValueError, match="store="):
        AiosMemoryVectorStore.from_texts(["x"], AiosMemoryEmbeddings())


def test_documents_keep_their_ids_in_a_deduplicating_store(model_home, tmp_path):
    """The adapter identifies documents by id, so it never lets the store fold one into another."""
    vs = AiosMemoryVectorStore(MemoryStore(tmp_path / "s", dedupe=0.9), namespace="n")
    assert vs.add_texts(["The cat is called Miso.", "The cat is called Miso!"], ids=["a", "b"]) == ["a", "b"]
    assert sorted(d.id for d in vs.get_by_ids(["a", "b"])) == ["a", "b"]


def test_without_langchain_the_import_says_what_to_install():
    code = (
        "import sys; sys.modules['langchain_core'] = None\n"  # as if langchain-core were not installed
        "import aios_memory.integrations.langchain\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and 'pip install "aios-memory[langchain]"' in proc.stderr


PETS = [
    Document(id="p-1", page_content="The user's cat is called Miso"),
    Document(id="p-2", page_content="The user has a cat named Miso"),
    Document(id="p-3", page_content="Miso is the name of the user's cat"),
    Document(id="p-4", page_content="The user's cat's name is Miso"),
    Document(id="p-5", page_content="The user adopted a beagle puppy last spring", metadata={"kind": "dog"}),
    Document(id="p-6", page_content="The user keeps tropical fish in an aquarium"),
    Document(id="p-7", page_content="Flight to Tokyo on April 3"),
]
CATS = {"p-1", "p-2", "p-3", "p-4"}


def test_mmr_retriever_returns_the_store_mmr_selection(model_home, tmp_path):
    vs = AiosMemoryVectorStore(tmp_path / "store", namespace="pets")
    vs.add_documents(PETS)
    query = "what is the name of the user's cat?"
    lc_id = {m.id: m.metadata["lc_id"] for m in vs.store.search(query, k=len(PETS), namespace="pets")}

    def store_mmr(k, fetch_k, lam):
        return [lc_id[m.id] for m in vs.store.search(query, k=k, namespace="pets", mmr=lam, fetch_k=fetch_k)]

    plain = [d.id for d in vs.similarity_search(query, k=3)]
    assert len(CATS.intersection(plain)) == 3
    for lam in (0.0, 0.5, 1.0):
        want = store_mmr(3, 6, lam)
        kwargs = {"k": 3, "fetch_k": 6, "lambda_mult": lam}
        retriever = vs.as_retriever(search_type="mmr", search_kwargs=kwargs)
        assert [d.id for d in retriever.invoke(query)] == want
        assert [d.id for d in asyncio.run(retriever.ainvoke(query))] == want
        assert [d.id for d in vs.max_marginal_relevance_search(query, **kwargs)] == want
        vec = vs.embeddings.embed_query(query)
        assert [d.id for d in vs.max_marginal_relevance_search_by_vector(vec, **kwargs)] == want
        by_vec = asyncio.run(vs.amax_marginal_relevance_search_by_vector(vec, **kwargs))
        assert [d.id for d in by_vec] == want
    assert store_mmr(3, 6, 1.0) == plain
    diverse = [d.id for d in vs.as_retriever(search_type="mmr", search_kwargs={"k": 3}).invoke(query)]
    assert diverse == store_mmr(3, 20, 0.5) and len(CATS.intersection(diverse)) < 3  # LangChain's defaults
    # k above LangChain's default pool of 20: the pool is k, not an error
    assert len(vs.max_marginal_relevance_search(query, k=25)) == len(PETS)
    assert [d.id for d in vs.max_marginal_relevance_search(query, k=3, filter={"kind": "dog"})] == ["p-5"]
    with pytest.raises(InvalidInputError, match="lambda"):
        vs.max_marginal_relevance_search(query, k=3, lambda_mult=2.0)
    with pytest.raises(InvalidInputError, match="fetch_k"):
        vs.max_marginal_relevance_search(query, k=3, fetch_k="6")
    with pytest.raises(InvalidInputError, match="384"):
        vs.max_marginal_relevance_search_by_vector([0.5] * 8, k=3)


def test_concurrent_upserts_of_one_id_leave_one_document(vs):
    """Six threads add_texts(..., ids=["same"]) at once: one atomic upsert each, one document after."""
    from threads import run_concurrently

    def writer(i: int) -> None:
        for j in range(3):
            vs.add_texts([f"version {i}.{j} of the shared note"], [{"writer": i}], ids=["same"])

    assert run_concurrently(6, writer) == []
    docs = vs.get_by_ids(["same"])
    assert len(docs) == 1 and docs[0].page_content.startswith("version ")
    held = vs.store.sql("SELECT count(*) AS n FROM text_memories WHERE content LIKE 'version %'")
    assert held["n"][0].as_py() == 1


def test_ids_of_collections_whose_names_hold_colons_do_not_collide(tmp_path):
    """Review regression: ("team:eng", "c") and ("team", "eng:c") made one memory id."""
    from aios_memory import MemoryStore

    store = MemoryStore(tmp_path / "s")
    eng = AiosMemoryVectorStore(store, namespace="team:eng")
    team = AiosMemoryVectorStore(store, namespace="team")
    eng.add_texts(["the build server is in rack 4"], ids=["c"])
    team.add_texts(["lunch is at noon on Fridays"], ids=["eng:c"])
    assert [d.page_content for d in eng.get_by_ids(["c"])] == ["the build server is in rack 4"]
    assert [d.page_content for d in team.get_by_ids(["eng:c"])] == ["lunch is at noon on Fridays"]
