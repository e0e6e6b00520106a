"""``MemoryStore.scoped``: a scope is enforced by the store layer itself, on a real store with MiniLM.

Agent A's handle sees A and ``shared``; B's private memories are not there for it through search (with
and without a namespace, with crafted ``where`` predicates), ``sql`` (crafted SQL over the views), get,
history, stats, delete and update; writes outside the scope change nothing; without the media right the
SQL views have no media column, so no function (base64, to_base64, hex, casts) and no ``where`` test can
reach the stored bytes."""

from __future__ import annotations

import pytest
from conftest import png_bytes

from aios_memory import AccessDeniedError, MemoryNotFoundError, MemoryStore, QueryError
from aios_memory.scope import FULL, Scope


@pytest.fixture()
def stores(store: MemoryStore) -> dict[str, object]:
    ids = {
        "a": store.add("Agent A's cat is called Miso", namespace="agent-a"),
        "b": store.add("Agent B's secret: the vault code is 4711", namespace="agent-b"),
        "shared": store.add("The team meets on Mondays", namespace="shared"),
    }
    a = store.scoped(Scope.of(["agent-a", "shared"], label="a"))
    return {"full": store, "a": a, "ids": ids}


def test_search_sees_only_the_scope(stores):
    a, ids = stores["a"], stores["ids"]
    found = {m.id for m in a.search("vault code secret", k=10)}
    assert found == {ids["a"], ids["shared"]}
    assert {m.id for m in stores["full"].search("vault code secret", k=10)} == set(ids.values())
    with pytest.raises(AccessDeniedError):
        a.search("vault", namespace="agent-b")
    # a where predicate runs on views that hold only the scope's rows
    for where in ["namespace = 'agent-b'", "true", "id IN (SELECT id FROM text_memories)"]:
        assert ids["b"] not in {m.id for m in a.search("vault", k=10, where=where)}
    explain = a.explain_search("vault", k=10)
    assert explain["selected"] == 2  # only A's and shared rows were scored


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT content FROM text_memories",
        "SELECT content FROM text_memories WHERE namespace = 'agent-b'",
        "SELECT content FROM text_memories UNION ALL SELECT content FROM text_memories WHERE true",
        "SELECT content FROM (SELECT * FROM text_memories) t WHERE t.namespace LIKE '%b'",
        "SELECT string_agg(content, '|') AS content FROM text_memories",
        "WITH x AS (SELECT * FROM text_memories) SELECT content FROM x",
        "SELECT content FROM text_memories ORDER BY array_cosine_similarity(embedding, embed_text('vault')) DESC",
    ],
)
def test_crafted_sql_never_reaches_another_namespace(stores, sql):
    rows = stores["a"].sql(sql).to_pylist()
    assert "4711" not in repr(rows)
    assert "4711" in repr(
        stores["full"].sql("SELECT string_agg(content, '|') AS c FROM text_memories").to_pylist()
    )


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM duckdb_tables()",
        "SELECT * FROM duckdb_views()",
        "SELECT * FROM read_parquet('data/text/*.parquet')",
        "SELECT * FROM information_schema.tables",
    ],
)
def test_catalog_and_files_hold_nothing_of_other_namespaces(stores, sql):
    try:
        rows = stores["a"].sql(sql).to_pylist()
    except QueryError:
        return  # refused (no file access) is fine
    assert "4711" not in repr(rows) and "agent-b" not in repr(rows)


def test_get_history_stats_of_other_namespaces(stores):
    a, ids = stores["a"], stores["ids"]
    assert a.get(ids["a"]).content.startswith("Agent A")
    with pytest.raises(MemoryNotFoundError):
        a.get(ids["b"])
    with pytest.raises(MemoryNotFoundError):
        a.history(ids["b"])
    assert len(a.history(ids["a"])) == 1
    stats = a.stats()
    assert stats["namespaces"] == {"agent-a": 1, "shared": 1}
    assert stats["tables"]["text"]["memories"] == 2
    assert "fragments" not in stats["tables"]["text"]  # nothing about files or other rows


def test_writes_outside_the_scope_change_nothing(stores):
    full, a, ids = stores["full"], stores["a"], stores["ids"]
    version = full.version
    with pytest.raises(AccessDeniedError):
        a.add("sneaky", namespace="agent-b")
    with pytest.raises(MemoryNotFoundError):
        a.delete([ids["b"]])
    with pytest.raises(MemoryNotFoundError):
        a.delete([ids["a"], ids["b"]])  # all or nothing: A's memory stays too
    with pytest.raises(MemoryNotFoundError):
        a.update(ids["b"], "overwritten")
    assert a.delete([ids["b"]], missing_ok=True) == 0
    assert full.version == version
    assert full.get(ids["b"]).content.endswith("4711") and full.get(ids["a"]) is not None
    assert a.delete([ids["a"], ids["b"]], missing_ok=True) == 1  # only its own
    assert full.get(ids["b"]).content.endswith("4711")
    assert a.delete([ids["a"]], missing_ok=True) == 0  # idempotent: no new version
    for admin in (lambda: a.compact(), lambda: a.cleanup(), lambda: a.verify(), lambda: a.checkout(1)):
        with pytest.raises(AccessDeniedError):
            admin()


def test_read_only_and_no_sql(stores):
    full, ids = stores["full"], stores["ids"]
    ro = full.scoped(Scope.of(["agent-a"], write=False, sql=False, label="reader"))
    with pytest.raises(AccessDeniedError, match="read-only"):
        ro.add("x", namespace="agent-a")
    with pytest.raises(AccessDeniedError):
        ro.delete([ids["a"]])
    with pytest.raises(AccessDeniedError, match="SQL"):
        ro.sql("SELECT 1")
    assert [m.id for m in ro.search("cat", k=5)] == [ids["a"]]
    # narrowing never widens: a read-only handle scoped again with full rights stays read-only
    assert ro.scoped(FULL).scope.write is False and ro.scoped(FULL).scope.namespaces == frozenset({"agent-a"})


MEDIA_EXPRS = [
    "base64(media)",
    "to_base64(media)",
    "hex(media)",
    "CAST(media AS VARCHAR)",
    "media::BLOB",
    "octet_length(media)",
]
MEDIA_SCRIPT = """
import json, sys
from aios_memory import MemoryStore, QueryError
from aios_memory.scope import Scope
store = MemoryStore(sys.argv[1])
store.add(open(sys.argv[2], "rb").read(), namespace="agent-a")
no_media = store.scoped(Scope.of(["agent-a"], media=False))
out = {"refused": {}, "full": {}}
for expr in json.loads(sys.argv[3]):
    try:
        out["refused"][expr] = repr(no_media.sql(f"SELECT {expr} AS x FROM image_memories").to_pylist())[:80]
    except QueryError as exc:
        out["refused"][expr] = True
    out["full"][expr] = store.sql(f"SELECT {expr} AS x FROM image_memories").num_rows
out["columns"] = no_media.sql("SELECT * FROM image_memories").column_names
try:
    no_media.search("a photo", modality="image", where="octet_length(media) > 10")
    out["where"] = "ran"
except QueryError:
    out["where"] = True
print(json.dumps(out))
"""


def test_no_media_bytes_without_the_media_right(model_home, tmp_path):
    """Images through a seeded tiny CLIP (its own model home, in a subprocess)."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    from aios_memory_converters.clip import convert_clip
    from test_clip_model import TINY, make_clip_folder

    home = tmp_path / "home"
    shutil.copytree(model_home / "models" / "text", home / "models" / "text")
    make_clip_folder(tmp_path / "hf", TINY, seed=5)
    convert_clip(tmp_path / "hf", home / "models" / "clip")
    (tmp_path / "photo.png").write_bytes(png_bytes(size=64))
    env = {**os.environ, "AIOS_MEMORY_HOME": str(home)}
    args = [str(tmp_path / "s"), str(tmp_path / "photo.png"), json.dumps(MEDIA_EXPRS)]
    run = subprocess.run([sys.executable, "-c", MEDIA_SCRIPT, *args], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["refused"] == dict.fromkeys(MEDIA_EXPRS, True)  # every function: no such column
    assert out["full"] == dict.fromkeys(MEDIA_EXPRS, 1)  # the full handle does see the bytes
    assert "media" not in out["columns"] and "media_type" in out["columns"]
    assert out["where"] is True  # nor as a yes/no oracle in a search's where


def test_media_column_gone_from_text_views_too(stores):
    no_media = stores["full"].scoped(Scope(media=False))
    assert "media" not in no_media.sql("SELECT * FROM text_memories").column_names
    assert len(no_media.search("cat", k=3)) == 3  # searches work without the column


def test_recent_lists_the_scope_without_the_sql_right(stores):
    full, ids = stores["full"], stores["ids"]
    lister = full.scoped(Scope.of(["agent-a", "shared"], sql=False, media=False))
    got = lister.recent(10)
    assert {m.id for m in got} == {ids["a"], ids["shared"]}
    assert all(m.media is None for m in got)
    assert [m.id for m in full.recent(1)] == [ids["shared"]]  # newest first
    assert lister.recent(10, modality="image") == []
    with pytest.raises(AccessDeniedError):
        lister.sql("SELECT 1")
