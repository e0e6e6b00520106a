"""Regressions from an outside review of the service (issue 15): each test here demonstrates a bug that
the review reproduced with real processes; each is marked ``xfail(strict=True)`` until it is fixed (then
the mark comes off). Real MiniLM, real stores, a real daemon and the real ``serve`` proxy where needed."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from aios_memory import MemoryStore, QueryError
from aios_memory.scope import Scope


# --- REVIEW BUG 1: the SQL sandbox reads files under <cwd>/.tmp ------------------------------------------
@pytest.mark.xfail(
    strict=True,
    reason="REVIEW BUG: DuckDB adds its default temp_directory (<cwd>/.tmp) to allowed_directories, so "
    "SQL (sql, and recall's where for a --no-sql token) reads files there (query.connect)",
)
def test_sql_cannot_read_files_under_the_working_directory_tmp(store, tmp_path, monkeypatch):
    store.add("alpha", namespace="A")
    work = tmp_path / "work"
    (work / ".tmp").mkdir(parents=True)
    (work / ".tmp" / "secret.txt").write_text("SERVER FILE")
    monkeypatch.chdir(work)  # a daemon's working directory is whatever its starter's was
    scoped = store.scoped(Scope.of(["A"], sql=False, write=False, media=False, label="t"))
    leaked = None
    try:  # recall's where predicate, for a read-only token without the SQL right
        scoped.search("alpha", where="error((SELECT content FROM read_text('.tmp/secret.txt'))) IS NULL")
    except QueryError as exc:
        leaked = str(exc)
    assert leaked is None or "SERVER FILE" not in leaked
    with pytest.raises(QueryError):
        store.scoped(Scope.of(["A"], label="t")).sql("SELECT content FROM read_text('.tmp/secret.txt')")


# --- REVIEW BUG 2: a scoped search with the ANN index is shadowed by another namespace's rows ------------
@pytest.mark.xfail(
    strict=True,
    reason="REVIEW BUG: ann_search post-filters a fixed pool of max(4k,128) graph candidates; when they all "
    "belong to another namespace a scoped recall returns nothing (and so reveals B's content)",
)
def test_scoped_ann_search_is_not_shadowed_by_another_namespace(store):
    store.add_many([f"alpha note {i}" for i in range(300)], namespace="A")
    store.add_many([f"bravo secret launch code {i}" for i in range(300)], namespace="B")
    store.create_index("text")
    a = store.scoped(Scope.of(["A"], label="a"))
    assert len(a.search("alpha note 7", k=5)) == 5
    exact = a.search("bravo secret launch code", k=5, exact=True)
    assert len(exact) == 5  # A has 300 memories: five nearest ones exist
    assert [m.id for m in a.search("bravo secret launch code", k=5)] == [m.id for m in exact]


# --- REVIEW BUG 3: forgetting another namespace's id rewrites its fragment --------------------------------
@pytest.mark.xfail(
    strict=True,
    reason="REVIEW BUG: writes.delete rewrites every fragment holding a wanted id, even when the scope "
    "hides every hit (an orphan copy of B's fragment per call; a commit rewrites B's fragment)",
)
def test_forget_outside_the_scope_writes_no_file(store):
    store.add("alpha", namespace="A")
    b_id = store.add("bravo", namespace="B")
    a = store.scoped(Scope.of(["A"], label="a"))
    files = sorted(p.name for p in (store.path / "data").rglob("*") if p.is_file())
    before = [f.path for f in store._manifest().tables["text"].fragments]
    for _ in range(3):
        assert a.delete([b_id], missing_ok=True) == 0
    assert sorted(p.name for p in (store.path / "data").rglob("*") if p.is_file()) == files
    assert [f.path for f in store._manifest().tables["text"].fragments] == before


# --- REVIEW BUG 4: the SQL time limit does not bound embed_text ------------------------------------------
@pytest.mark.xfail(
    strict=True,
    reason="REVIEW BUG: the embed_text UDF embeds a whole 2048-row chunk before DuckDB can be interrupted, "
    "so a query runs far past sql_timeout (query._register_embedder)",
)
def test_sql_timeout_bounds_embed_text(store):
    from aios_memory import QueryTimeoutError

    store.add("alpha", namespace="A")
    store.sql("SELECT embed_text('warm up')")
    start = time.monotonic()
    with pytest.raises(QueryTimeoutError):
        store.sql(
            "SELECT count(embed_text(i::VARCHAR || repeat('word ', 2000))) FROM range(256) t(i)",
            timeout=0.5,
        )
    assert time.monotonic() - start < 3.0


# --- REVIEW BUG 5: a revoked token keeps its socket session ----------------------------------------------
def _line(sock: socket.socket) -> dict:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        buf += chunk
    return json.loads(buf)


@pytest.mark.xfail(
    strict=True,
    reason="REVIEW BUG: the daemon checks a socket client's token only in the hello; after "
    "`token revoke` the open session (a serve proxy's) keeps reading and writing (daemon._session)",
)
def test_revoked_token_is_refused_on_an_open_socket_session(model_home, tmp_path):
    store_dir = tmp_path / "store"
    MemoryStore(store_dir).add("alpha", namespace="A")
    rt = Path(tempfile.mkdtemp(prefix="aiosrv-"))
    env = {**os.environ, "AIOS_MEMORY_RUNTIME_DIR": str(rt), "AIOS_MEMORY_HOME": str(model_home)}
    cli = [sys.executable, "-m", "aios_memory", "--store", str(store_dir)]
    made = json.loads(
        subprocess.run(
            [*cli, "token", "create", "--name", "t", "-n", "A"], env=env, capture_output=True, check=True
        ).stdout
    )
    daemon = subprocess.Popen([*cli, "daemon"], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not list(rt.glob("*.sock")):
            assert time.monotonic() < deadline and daemon.poll() is None
            time.sleep(0.05)
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(60)
        sock.connect(str(next(rt.glob("*.sock"))))

        def rpc(i: int, method: str, params: dict) -> dict:
            sock.sendall(
                (json.dumps({"jsonrpc": "2.0", "id": i, "method": method, "params": params}) + "\n").encode()
            )
            return _line(sock)

        sock.sendall((json.dumps({"aios_memory": "hello", "token": made["token"]}) + "\n").encode())
        assert _line(sock)["ok"]
        rpc(
            0,
            "initialize",
            {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "x", "version": "1"},
            },
        )
        sock.sendall(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        write = {"name": "remember", "arguments": {"content": "before", "namespace": "A"}}
        assert not rpc(1, "tools/call", write)["result"]["isError"]
        subprocess.run([*cli, "token", "revoke", made["id"]], env=env, capture_output=True, check=True)
        write["arguments"]["content"] = "after revocation"
        try:
            answer = rpc(2, "tools/call", write)
        except (OSError, ValueError):
            answer = None  # the connection closed: refused
        assert answer is None or "error" in answer or answer["result"]["isError"]
        assert "after revocation" not in repr(
            MemoryStore(store_dir).sql("SELECT content FROM text_memories").to_pylist()
        )
    finally:
        subprocess.run([*cli, "daemon", "--stop"], env=env, capture_output=True, timeout=60)
        if daemon.poll() is None:
            daemon.kill()
        daemon.wait(30)
        shutil.rmtree(rt, ignore_errors=True)
