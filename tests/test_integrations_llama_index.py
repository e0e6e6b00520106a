"""The LlamaIndex adapters against the real ``llama-index-core`` and the real MiniLM weights, with every
network connection refused: nothing may download (no OpenAI default, no NLTK or tiktoken fetch)."""

from __future__ import annotations

import socket
import subprocess
import sys

import numpy as np
import pytest
from llama_index.core import Document, Settings, StorageContext, VectorStoreIndex
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import (
    ExactMatchFilter,
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)

from aios_memory import InvalidInputError
from aios_memory.integrations.llama_index import AiosMemoryEmbedding, AiosMemoryVectorStore

NODES = [
    ("n-cat", "The user's cat is called Miso", {"kind": "fact", "year": 2024}, "doc-profile"),
    ("n-tea", "The user prefers green tea over coffee", {"kind": "fact", "year": 2023}, "doc-profile"),
    ("n-tokyo", "Flight to Tokyo on April 3", {"kind": "travel", "year": 2025}, "doc-calendar"),
    (
        "n-dentist",
        "Dentist appointment on March 14 at 10:30",
        {"kind": "health", "year": 2025},
        "doc-calendar",
    ),
    ("n-parquet", "Parquet is a columnar storage format", {"kind": "note", "source": "wiki"}, "doc-notes"),
]
QUERIES = {
    "what pet does the user have?": "n-cat",
    "which hot drink does the user like?": "n-tea",
    "when is the trip to Japan?": "n-tokyo",
    "teeth checkup": "n-dentist",
    "file formats for tables": "n-parquet",
}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test.

    The guard refuses the connection (an ``AssertionError`` inside the library's call) and records it: a
    library that catches the error (``except Exception``) and carries on would hide the attempt, so the
    fixture's teardown fails the test for any attempt recorded, whatever the call did with the error.
    """
    attempts: list[object] = []

    def refuse(self, address, *args, **kwargs):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            raise AssertionError(f"network connection attempted to {address!r}")
        return real_connect(self, address, *args, **kwargs)

    real_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    yield attempts
    if attempts:
        pytest.fail(f"network connection attempted during the test (refused): {attempts!r}")


def _nodes() -> list[TextNode]:
    return [
        TextNode(
            id_=node_id,
            text=text,
            metadata=meta,
            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=doc)},
        )
        for node_id, text, meta, doc in NODES
    ]


@pytest.fixture()
def index(model_home, tmp_path):
    vector_store = AiosMemoryVectorStore(tmp_path / "store", namespace="agent-1")
    index = VectorStoreIndex(
        _nodes(),
        storage_context=StorageContext.from_defaults(vector_store=vector_store),
        embed_model=AiosMemoryEmbedding(),
    )
    return index


def test_retriever_ranks_the_right_node_first_with_cosine_scores(index):
    emb = AiosMemoryEmbedding()
    texts = {node_id: text for node_id, text, _, _ in NODES}
    vecs = dict(zip(texts, np.array(emb.get_text_embedding_batch(list(texts.values()))), strict=True))
    retriever = index.as_retriever(similarity_top_k=len(NODES))
    for query, expected in QUERIES.items():
        hits = retriever.retrieve(query)
        assert hits[0].node.node_id == expected, (query, [h.node.node_id for h in hits])
        q = np.array(emb.get_query_embedding(query))
        assert np.allclose([h.score for h in hits], [vecs[h.node.node_id] @ q for h in hits], atol=1e-5)
    assert Settings._embed_model is None and Settings._llm is None  # the global defaults never resolved


def test_nodes_round_trip(index):
    vector_store = index.vector_store
    got = {n.node_id: n for n in vector_store.get_nodes()}
    assert set(got) == {node_id for node_id, *_ in NODES}
    for node_id, text, meta, doc in NODES:
        node = got[node_id]
        assert type(node) is TextNode and node.text == text and node.metadata == meta
        assert node.ref_doc_id == doc and node.source_node.node_id == doc
    assert [n.node_id for n in vector_store.get_nodes(node_ids=["n-tea"])] == ["n-tea"]


def test_metadata_filters(index):
    def ids(*filters, condition=FilterCondition.AND, query="anything"):
        f = MetadataFilters(filters=list(filters), condition=condition)
        return sorted(
            h.node.node_id for h in index.as_retriever(similarity_top_k=10, filters=f).retrieve(query)
        )

    assert ids(ExactMatchFilter(key="kind", value="fact")) == ["n-cat", "n-tea"]
    assert ids(MetadataFilter(key="year", value=2025, operator=FilterOperator.GTE)) == [
        "n-dentist",
        "n-tokyo",
    ]
    assert ids(MetadataFilter(key="year", value=2024, operator=FilterOperator.LT)) == ["n-tea"]
    assert ids(MetadataFilter(key="kind", value=["note", "health"], operator=FilterOperator.IN)) == [
        "n-dentist",
        "n-parquet",
    ]
    assert ids(MetadataFilter(key="kind", value="fact", operator=FilterOperator.NE)) == [
        "n-dentist",
        "n-parquet",
        "n-tokyo",
    ]
    assert ids(MetadataFilter(key="source", value="wik", operator=FilterOperator.TEXT_MATCH)) == ["n-parquet"]
    assert ids(
        ExactMatchFilter(key="kind", value="travel"),
        ExactMatchFilter(key="kind", value="note"),
        condition="or",
    ) == ["n-parquet", "n-tokyo"]
    nested = MetadataFilters(
        filters=[
            ExactMatchFilter(key="kind", value="fact"),
            MetadataFilters(
                filters=[MetadataFilter(key="year", value=2024, operator=FilterOperator.GTE)], condition="and"
            ),
        ],
        condition="and",
    )
    assert [h.node.node_id for h in index.as_retriever(filters=nested, similarity_top_k=5).retrieve("x")] == [
        "n-cat"
    ]
    assert ids(ExactMatchFilter(key="year", value="2024")) == []  # a string is not the number 2024
    hits = index.as_retriever(
        similarity_top_k=1, filters=MetadataFilters(filters=[ExactMatchFilter(key="kind", value="fact")])
    ).retrieve("which hot drink does the user like?")
    assert [h.node.node_id for h in hits] == ["n-tea"]
    with pytest.raises(InvalidInputError, match="not supported"):
        ids(MetadataFilter(key="kind", value=["a"], operator=FilterOperator.ANY))
    with pytest.raises(InvalidInputError):
        ids(ExactMatchFilter(key="kind') OR TRUE --", value="x"))


def test_delete_by_document_nodes_and_clear(index):
    vector_store = index.vector_store
    index.delete_ref_doc("doc-calendar")
    assert sorted(n.node_id for n in vector_store.get_nodes()) == ["n-cat", "n-parquet", "n-tea"]
    assert (
        index.as_retriever(similarity_top_k=1).retrieve("when is the trip to Japan?")[0].node.node_id
        != "n-tokyo"
    )
    vector_store.delete_nodes(node_ids=["n-tea"])
    assert sorted(n.node_id for n in vector_store.get_nodes()) == ["n-cat", "n-parquet"]
    vector_store.delete_nodes(filters=MetadataFilters(filters=[ExactMatchFilter(key="kind", value="note")]))
    assert [n.node_id for n in vector_store.get_nodes()] == ["n-cat"]
    vector_store.clear()
    assert vector_store.get_nodes() == []


def test_upsert_namespaces_and_query_forms(index, tmp_path):
    vector_store = index.vector_store
    # the same node id again replaces the node
    vector_store.add(
        [TextNode(id_="n-cat", text="The user's cat is now called Tom", metadata={"kind": "fact"})]
    )
    cats = vector_store.get_nodes(node_ids=["n-cat"])
    assert [n.text for n in cats] == ["The user's cat is now called Tom"]
    # another namespace of the same store sees none of these nodes
    other = AiosMemoryVectorStore(vector_store.client, namespace="agent-2")
    assert other.get_nodes() == []
    other.add([TextNode(id_="n-x", text="Agent two remembers the rocket launch")])
    assert [n.node_id for n in other.get_nodes()] == ["n-x"] and len(vector_store.get_nodes()) == len(NODES)
    # a query by text alone (no embedding) and by embedding give the same result
    emb = AiosMemoryEmbedding()
    by_text = vector_store.query(
        VectorStoreQuery(query_str="what pet does the user have?", similarity_top_k=2)
    )
    by_vec = vector_store.query(
        VectorStoreQuery(
            query_embedding=emb.get_query_embedding("what pet does the user have?"), similarity_top_k=2
        )
    )
    assert by_text.ids == by_vec.ids and by_text.ids[0] == "n-cat"
    assert np.allclose(by_text.similarities, by_vec.similarities, atol=1e-5)
    assert vector_store.query(
        VectorStoreQuery(query_str="x", similarity_top_k=3, doc_ids=["doc-notes"])
    ).ids == ["n-parquet"]
    with pytest.raises(InvalidInputError, match="384"):
        vector_store.query(VectorStoreQuery(query_embedding=[0.5] * 8, similarity_top_k=1))
    with pytest.raises(InvalidInputError, match="mode"):
        vector_store.query(VectorStoreQuery(query_str="x", mode=VectorStoreQueryMode.SPARSE))
    with pytest.raises(InvalidInputError, match="'hybrid'"):
        vector_store.query(VectorStoreQuery(query_str="x", mode="hybrid"))


def test_from_documents_offline(model_home, tmp_path):
    """The default node parser (SentenceSplitter, tiktoken) runs offline; documents keep their ids."""
    vector_store = AiosMemoryVectorStore(tmp_path / "store")
    index = VectorStoreIndex.from_documents(
        [
            Document(text="Paris is the capital of France. It lies on the Seine.", id_="geo"),
            Document(text="The mitochondria is the powerhouse of the cell.", id_="bio"),
        ],
        storage_context=StorageContext.from_defaults(vector_store=vector_store),
        embed_model=AiosMemoryEmbedding(),
    )
    hit = index.as_retriever(similarity_top_k=1).retrieve("biology of cells")[0]
    assert hit.node.ref_doc_id == "bio" and "mitochondria" in hit.node.text


def test_the_network_guard_refuses_connections(no_network):
    with pytest.raises(AssertionError, match="network connection attempted"):
        socket.create_connection(("127.0.0.1", 9), timeout=1)
    assert no_network == [("127.0.0.1", 9)]
    no_network.clear()  # this attempt was the test's own


def test_the_network_guard_sees_attempts_a_library_swallows(no_network):
    """A library's ``except Exception`` around a connection cannot hide it: the attempt is recorded, and
    the fixture's teardown fails any test that leaves one there."""
    try:
        socket.create_connection(("127.0.0.1", 9), timeout=1)
    except Exception:  # what a library that swallows errors does
        pass
    assert no_network == [("127.0.0.1", 9)]
    no_network.clear()  # this attempt was the test's own


def test_without_llama_index_the_import_says_what_to_install():
    code = (
        "import sys; sys.modules['llama_index'] = None\n"  # as if llama-index-core were not installed
        "import aios_memory.integrations.llama_index\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and 'pip install "aios-memory[llama-index]"' in proc.stderr


PARAPHRASES = [
    ("p-1", "The user's cat is called Miso"),
    ("p-2", "The user has a cat named Miso"),
    ("p-3", "Miso is the name of the user's cat"),
    ("p-4", "The user's cat's name is Miso"),
    ("p-5", "The user adopted a beagle puppy last spring"),
    ("p-6", "The user keeps tropical fish in an aquarium"),
    ("p-7", "Flight to Tokyo on April 3"),
]


def test_mmr_mode_returns_the_store_mmr_selection(model_home, tmp_path):
    vector_store = AiosMemoryVectorStore(tmp_path / "store", namespace="pets")
    index = VectorStoreIndex(
        [TextNode(id_=i, text=t) for i, t in PARAPHRASES],
        storage_context=StorageContext.from_defaults(vector_store=vector_store),
        embed_model=AiosMemoryEmbedding(),
    )
    store, query = vector_store.client, "what is the name of the user's cat?"
    by_id = {m.id: m.metadata["node_id"] for m in store.search(query, k=len(PARAPHRASES), namespace="pets")}
    plain = vector_store.query(VectorStoreQuery(query_str=query, similarity_top_k=3))
    for lam in (0.2, 0.5, 1.0):
        expected = store.search(query, k=3, namespace="pets", mmr=lam, fetch_k=6)
        want = [by_id[m.id] for m in expected]
        mmr = vector_store.query(
            VectorStoreQuery(query_str=query, similarity_top_k=3, mode="mmr", mmr_threshold=lam),
            mmr_prefetch_k=6,
        )
        assert mmr.ids == want
        assert mmr.similarities == pytest.approx([m.score for m in expected], abs=1e-12)
        by_vec = vector_store.query(
            VectorStoreQuery(
                query_embedding=AiosMemoryEmbedding().get_query_embedding(query),
                similarity_top_k=3,
                mode=VectorStoreQueryMode.MMR,
            ),
            mmr_threshold=lam,  # the way LlamaIndex's own SimpleVectorStore takes it
            mmr_prefetch_factor=2,
        )
        assert by_vec.ids == want
    assert sum(i in {"p-1", "p-2", "p-3", "p-4"} for i in plain.ids) == 3
    retriever = index.as_retriever(
        similarity_top_k=3, vector_store_query_mode="mmr", vector_store_kwargs={"mmr_threshold": 0.5}
    )
    diverse = [h.node.node_id for h in retriever.retrieve(query)]
    assert diverse == [by_id[m.id] for m in store.search(query, k=3, namespace="pets", mmr=0.5)]
    assert sum(i in {"p-1", "p-2", "p-3", "p-4"} for i in diverse) < 3
    with pytest.raises(InvalidInputError, match="lambda"):
        vector_store.query(VectorStoreQuery(query_str=query, mode="mmr", mmr_threshold=1.5))
    with pytest.raises(InvalidInputError, match="mmr_prefetch_factor"):
        vector_store.query(VectorStoreQuery(query_str=query, mode="mmr"), mmr_prefetch_factor=0.5)


def test_concurrent_adds_of_one_node_id_leave_one_node(tmp_path):
    """Six threads add() the same node id at once: one atomic upsert each, one node after."""

    from threads import run_concurrently

    vector_store = AiosMemoryVectorStore(tmp_path / "store", namespace="race")

    def writer(i: int) -> None:
        for j in range(3):
            vector_store.add([TextNode(id_="n-same", text=f"version {i}.{j} of the shared node")])

    assert run_concurrently(6, writer) == []
    nodes = vector_store.get_nodes(node_ids=["n-same"])
    assert len(nodes) == 1 and nodes[0].text.startswith("version ")
    assert len(vector_store.get_nodes()) == 1
