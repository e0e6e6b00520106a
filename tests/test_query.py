"""SQL over the memory views: read-only, parameterised, with embed_text() inside SQL."""

from __future__ import annotations

import math
import threading
import time

import duckdb
import pytest
from conftest import run_cli

from aios_memory.errors import EmptyContentError, InvalidInputError, QueryError, QueryTimeoutError
from aios_memory.query import Deadline, run, truncated

RUNAWAY = "SELECT count(*) AS n FROM range(1000000000000000)"  # 1e15 rows: hours of work
HUGE = "SELECT * FROM range(1000000000000)"  # 1e12 rows: terabytes if it were ever built


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


def test_cli_refusal_of_a_write_speaks_the_cli_user_s_language(model_home, tmp_path):
    s = ["--store", str(tmp_path / "st")]
    run_cli(*s, "add", "The cat sleeps on the sofa")
    bad = run_cli(*s, "sql", "DELETE FROM text_memories", check=False)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "SQL is read-only: DELETE statements are not allowed (SELECT or EXPLAIN only)" in bad.stderr
    assert "store." not in bad.stderr and "()" not in bad.stderr


def test_explicit_connection_can_write_files_but_not_memories(filled, tmp_path):
    con = filled.connection()
    try:
        with pytest.raises(duckdb.PermissionException, match="disabled by configuration"):
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


def _snapshot(store):
    return store.version, store.sql("SELECT id, content, metadata FROM text_memories ORDER BY id").to_pylist()


@pytest.mark.parametrize("params", [None, [10**15]])
def test_timeout_stops_a_runaway_query_and_leaves_nothing_behind(filled, params):
    before, threads = _snapshot(filled), threading.active_count()
    sql = RUNAWAY if params is None else "SELECT count(*) AS n FROM range(?)"
    start = time.monotonic()
    with pytest.raises(QueryTimeoutError, match=r"time limit of 0\.5 s.*raise the timeout") as info:
        filled.sql(sql, params, timeout=0.5)
    elapsed = time.monotonic() - start
    assert 0.5 <= elapsed < 3, elapsed
    assert isinstance(info.value, QueryError)  # callers catching QueryError keep working
    assert threading.active_count() == threads  # the timer thread is joined, not left running
    assert _snapshot(filled) == before
    # the same store, no timeout, a small query: fine; a generous timeout does not get in the way
    assert filled.sql("SELECT count(*) AS n FROM text_memories").column("n")[0].as_py() == 4
    assert filled.sql("SELECT count(*) AS n FROM range(1000)", timeout=30).column("n")[0].as_py() == 1000
    assert threading.active_count() == threads


def test_search_timeout_stops_a_runaway_where_predicate(filled):
    """search(timeout=): the caller's where predicate runs in DuckDB and is interrupted like sql()."""
    threads = threading.active_count()
    slow = "(SELECT count(*) FROM range(1000000000000000)) > ?"
    start = time.monotonic()
    with pytest.raises(QueryTimeoutError, match=r"time limit of 0\.5 s.*raise the timeout"):
        filled.search("a memory", k=2, where=slow, params=[0], timeout=0.5)
    assert time.monotonic() - start < 3
    assert threading.active_count() == threads
    assert len(filled.search("a memory", k=2, timeout=30)) == 2  # a fast search under a limit is unaffected


def test_timeout_also_bounds_a_streamed_query(filled):
    threads = threading.active_count()
    start = time.monotonic()
    with pytest.raises(QueryTimeoutError):  # the sort must finish before a first row exists
        filled.sql("SELECT range AS r FROM range(1000000000000) ORDER BY r DESC", timeout=0.5, max_rows=3)
    assert time.monotonic() - start < 3
    assert threading.active_count() == threads


def test_max_rows_reads_only_what_it_returns(filled):
    start = time.monotonic()
    head = filled.sql(HUGE, max_rows=5)
    # building the whole result would take hours (and run out of memory): any small bound proves the point
    assert time.monotonic() - start < 2
    assert head.column(0).to_pylist() == [0, 1, 2, 3, 4] and truncated(head)
    odd = filled.sql("SELECT range AS r FROM range(?) WHERE range % 7 = 3", [10**12], max_rows=4)
    assert odd.column("r").to_pylist() == [3, 10, 17, 24] and truncated(odd)
    first = filled.sql("SELECT content FROM text_memories ORDER BY content", max_rows=2)
    assert first.column("content").to_pylist() == ["A kitten plays with yarn", "Dogs bark at the postman"]
    assert truncated(first) and not truncated(filled.sql("SELECT content FROM text_memories"))
    # exactly max_rows rows, or fewer, is not truncated; one more is (2048 rows is one DuckDB chunk)
    for n, limit, cut in [
        (3, 5, False),
        (5, 5, False),
        (6, 5, True),
        (4096, 4096, False),
        (4097, 4096, True),
    ]:
        got = filled.sql("SELECT * FROM range(?)", [n], max_rows=limit)
        assert got.num_rows == min(n, limit) and truncated(got) is cut, (n, limit)
    empty = filled.sql("SELECT id, content FROM text_memories", max_rows=0)
    assert empty.num_rows == 0 and empty.column_names == ["id", "content"] and truncated(empty)
    assert filled.sql("EXPLAIN SELECT * FROM text_memories", max_rows=10).num_rows >= 1
    with pytest.raises((EmptyContentError, QueryError)):  # a SQL function's error, through the stream
        filled.sql("SELECT embed_text(?)", [""], max_rows=5)
    assert filled.sql("SELECT 42 AS x", max_rows=1).to_pylist() == [{"x": 42}]


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, True, "1"])
def test_timeout_must_be_positive_seconds(filled, bad):
    with pytest.raises(InvalidInputError, match="timeout"):
        filled.sql("SELECT 1", timeout=bad)


@pytest.mark.parametrize("bad", [-1, True, 2.5, "5"])
def test_max_rows_must_be_a_count(filled, bad):
    with pytest.raises(QueryError, match="max_rows"):
        filled.sql("SELECT 1", max_rows=bad)


def test_deadline_is_shared_across_steps(filled):
    unlimited = Deadline.start(None)
    unlimited.check("anything")
    assert unlimited.remaining() is None and not unlimited.expired()
    deadline = Deadline.start(0.2, hint="ask for less")
    assert 0 < deadline.remaining() <= 0.2
    con = filled.connection()
    try:
        assert run(con, "SELECT 1 AS x", timeout=deadline).to_pylist() == [{"x": 1}]
        time.sleep(0.3)
        assert deadline.expired() and deadline.remaining() == 0
        with pytest.raises(
            QueryTimeoutError, match=r"the search ran past its time limit of 0\.2 s.*ask for less"
        ):
            deadline.check("the search")
        with pytest.raises(QueryTimeoutError, match="the query"):  # spent before this step began
            run(con, "SELECT 1", timeout=deadline)
        assert run(con, "SELECT 2 AS x", timeout=5, max_rows=1).to_pylist() == [{"x": 2}]
    finally:
        con.close()


def test_cli_sql_timeout(filled):
    base = ("--store", str(filled.path), "sql")
    proc = run_cli(*base, RUNAWAY, "--timeout", "0.5", check=False)
    assert proc.returncode == 1
    assert "QueryTimeoutError" in proc.stderr and "0.5 s" in proc.stderr
    assert "(1 row;" in run_cli(*base, "SELECT count(*) AS n FROM text_memories", "--timeout", "30").stdout
    bad = run_cli(*base, "SELECT 1", "--timeout", "0", check=False)
    assert bad.returncode == 2 and "--timeout" in bad.stderr


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


def test_a_placeholder_without_a_value_is_named_in_plain_words(model_home, tmp_path):
    store = tmp_path / "store"
    run_cli("--store", str(store), "add", "a memory")
    proc = run_cli(
        "--store", str(store), "sql", "SELECT 1 FROM text_memories WHERE content = ? AND namespace = ?",
        "--param", "x", check=False,
    )  # fmt: skip
    line = proc.stderr.strip()
    assert proc.returncode == 1 and "? placeholders without a value (number 2)" in line
    assert "InvalidInputException" not in line and "Traceback" not in proc.stderr
    more = run_cli("--store", str(store), "sql", "SELECT 1", "--param", "x", check=False)
    assert more.returncode == 1 and "more parameters than ? placeholders" in more.stderr
    nope = run_cli("--store", str(store), "sql", "SELECT * FROM nope", check=False)
    assert (
        "nope does not exist" in nope.stderr
        and "text_memories, image_memories, audio_memories" in nope.stderr
    )
