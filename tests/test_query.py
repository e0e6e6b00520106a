"""SQL over the memory views: read-only, parameterised, with embed_text() inside SQL."""

from __future__ import annotations

import pytest

from aios_memory.errors import EmptyContentError, QueryError


@pytest.fixture()
def filled(store):
    store.add_many(
        ["The cat sleeps on the sofa", "Interest rates rose again", "A kitten plays with yarn"],
        namespace="a",
        metadata=[{"n": 1}, {"n": 2}, {"n": 3}],
    )
    store.add("Dogs bark at the postman", namespace="b")
    return store


def test_views_and_types(filled):
    t = filled.sql("SELECT * FROM text_memories")
    assert t.num_rows == 4
    vec = t.schema.field("embedding").type
    assert vec.list_size == 384 and vec.value_type == "float"
    desc = {r["column_name"]: r["column_type"] for r in filled.sql("DESCRIBE text_memories").to_pylist()}
    assert desc["embedding"] == "FLOAT[384]" and desc["created_at"] == "TIMESTAMP WITH TIME ZONE"
    assert filled.sql("SELECT count(*) AS n FROM image_memories").column("n")[0].as_py() == 0
    assert filled.sql("SELECT count(*) AS n FROM audio_memories").column("n")[0].as_py() == 0


def test_embed_text_inside_sql_ranks_by_meaning(filled):
    rows = (
        filled.sql(
            "SELECT content FROM text_memories ORDER BY array_cosine_similarity(embedding, embed_text(?)) DESC LIMIT 2",
            ["feline"],
        )
        .column("content")
        .to_pylist()
    )
    assert set(rows) == {"The cat sleeps on the sofa", "A kitten plays with yarn"}
    same = filled.sql("SELECT array_cosine_similarity(embed_text(?), embed_text(?)) AS s", ["x y", "x y"])
    assert same.column("s")[0].as_py() == pytest.approx(1.0, abs=1e-6)
    # a column argument: one embedding per row, equal to the stored one
    sims = filled.sql(
        "SELECT array_cosine_similarity(embedding, embed_text(content)) AS s FROM text_memories"
    )
    assert min(sims.column("s").to_pylist()) > 0.99999


def test_embed_text_rejects_empty(filled):
    with pytest.raises((EmptyContentError, QueryError)):
        filled.sql("SELECT embed_text(?)", [""])


def test_parameters_and_json_metadata(filled):
    rows = filled.sql(
        "SELECT content FROM text_memories WHERE namespace = ? AND CAST(metadata->>'$.n' AS INT) >= ? ORDER BY 1",
        ["a", 2],
    )
    assert rows.column("content").to_pylist() == ["A kitten plays with yarn", "Interest rates rose again"]
    named = filled.sql("SELECT count(*) AS n FROM text_memories WHERE namespace = $ns", {"ns": "b"})
    assert named.column("n")[0].as_py() == 1


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM text_memories",
        "DROP VIEW text_memories",
        "COPY (SELECT * FROM text_memories) TO '/tmp/aios_memory_exfil.csv'",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_parquet('/etc/hostname')",
        "ATTACH '/tmp/aios_memory_evil.db' AS evil",
        "INSTALL httpfs",
        "SET enable_external_access = true",
        "SELECT 1; SELECT 2",
        "not sql at all",
        "",
    ],
)
def test_sql_cannot_write_or_escape(filled, sql, tmp_path):
    before = filled.sql("SELECT id, content FROM text_memories ORDER BY id").to_pylist()
    version = filled.version
    with pytest.raises(QueryError):
        filled.sql(sql)
    assert filled.sql("SELECT id, content FROM text_memories ORDER BY id").to_pylist() == before
    assert filled.version == version


def test_only_queries_are_accepted(filled):
    for sql in ("CREATE TEMP TABLE scratch AS SELECT 1 AS x", "PRAGMA version", "INSERT INTO t VALUES (1)"):
        with pytest.raises(QueryError, match="read-only"):
            filled.sql(sql)
    assert filled.sql("EXPLAIN SELECT * FROM text_memories").num_rows >= 1
    assert filled.sql("DESCRIBE text_memories").num_rows == 11


def test_explicit_connection_can_write_files_but_not_memories(filled, tmp_path):
    con = filled.connection()
    try:
        with pytest.raises(Exception, match="disabled by configuration"):
            con.execute(f"COPY (SELECT content FROM text_memories) TO '{tmp_path / 'blocked.csv'}'")
    finally:
        con.close()
    before = filled.sql("SELECT id, content FROM text_memories ORDER BY id").to_pylist()
    con = filled.connection(allow_file_access=True)  # asked for explicitly
    try:
        out = tmp_path / "export.csv"
        con.execute(f"COPY (SELECT content FROM text_memories ORDER BY content) TO '{out}' (HEADER false)")
        assert out.read_text().splitlines()[0] == "A kitten plays with yarn"
        con.execute("DROP VIEW text_memories")  # only this connection's view goes
    finally:
        con.close()
    assert filled.sql("SELECT id, content FROM text_memories ORDER BY id").to_pylist() == before


def test_no_pickle_anywhere_in_the_code():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    offenders = []
    for path in [
        *root.glob("aios_memory/**/*.py"),
        *root.glob("plugins/**/*.py"),
        *root.glob("converters/**/*.py"),
    ]:
        text = path.read_text()
        if "import pickle" in text or "pickle.load" in text:
            offenders.append(str(path))
        for line in text.splitlines():
            if "torch.load(" in line and "weights_only=True" not in line:
                offenders.append(f"{path}: {line.strip()}")
    assert offenders == []
