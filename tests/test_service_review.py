"""Regressions from an outside review of the service (issue 15): each test here demonstrates a bug that
the review reproduced with real processes, fixed since; they keep it fixed. Real MiniLM, real stores, a
real daemon and the real ``serve`` proxy where needed."""

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
from aios_memory.errors import AccessDeniedError
from aios_memory.scope import Scope


# --- REVIEW BUG 1: the SQL sandbox reads files under <cwd>/.tmp ------------------------------------------
def test_sql_cannot_read_files_under_the_working_directory_tmp(store, tmp_path, monkeypatch):
    store.add("alpha", namespace="A")
    work = tmp_path / "work"
    (work / ".tmp").mkdir(parents=True)
    (work / ".tmp" / "secret.txt").write_text("SERVER FILE")
    monkeypatch.chdir(work)  # a daemon's working directory is whatever its starter's was
    scoped = store.scoped(Scope.of(["A"], sql=False, write=False, media=False, label="t"))
    # recall's where predicate, for a read-only token without the SQL right: a where is SQL, refused
    with pytest.raises(AccessDeniedError) as refused:
        scoped.search("alpha", where="error((SELECT content FROM read_text('.tmp/secret.txt'))) IS NULL")
    assert "SERVER FILE" not in str(refused.value)
    with pytest.raises(QueryError):  # with the SQL right: the file is still out of reach
        store.scoped(Scope.of(["A"], label="t")).search(
            "alpha", where="error((SELECT content FROM read_text('.tmp/secret.txt'))) IS NULL"
        )
    with pytest.raises(QueryError):
        store.scoped(Scope.of(["A"], label="t")).sql("SELECT content FROM read_text('.tmp/secret.txt')")


# --- REVIEW BUG 2: a scoped search with the ANN index is shadowed by another namespace's rows ------------
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


def _one_memory_store(model_home: Path, tmp_path: Path) -> tuple[Path, Path, dict, list[str]]:
    """A store holding one memory of namespace A, a private runtime dir, the env and the CLI for both."""
    store_dir = tmp_path / "store"
    MemoryStore(store_dir).add("alpha", namespace="A")
    rt = Path(tempfile.mkdtemp(prefix="aiosrv-"))
    env = {**os.environ, "AIOS_MEMORY_RUNTIME_DIR": str(rt), "AIOS_MEMORY_HOME": str(model_home)}
    return store_dir, rt, env, [sys.executable, "-m", "aios_memory", "--store", str(store_dir)]


def _wait_for_socket(rt: Path, daemon: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while not list(rt.glob("*.sock")):
        assert time.monotonic() < deadline and daemon.poll() is None
        time.sleep(0.05)


def test_revoked_token_is_refused_on_an_open_socket_session(model_home, tmp_path):
    store_dir, rt, env, cli = _one_memory_store(model_home, tmp_path)
    made = json.loads(
        subprocess.run(
            [*cli, "token", "create", "--name", "t", "-n", "A"], env=env, capture_output=True, check=True
        ).stdout
    )
    daemon = subprocess.Popen([*cli, "daemon"], env=env, stderr=subprocess.DEVNULL)
    try:
        _wait_for_socket(rt, daemon)
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


# --- REVIEW 9 and 10: server paths in duckdb_settings(); the version and others' tables in stats ---------
def test_sql_settings_name_no_server_directory_and_stats_say_nothing_of_others(store, tmp_path, monkeypatch):
    store.add("alpha", namespace="A")
    store.add("bravo", namespace="B")
    monkeypatch.chdir(tmp_path)
    scoped = store.scoped(Scope.of(["A"], label="t"))
    values = [str(v) for v in scoped.sql("SELECT value FROM duckdb_settings()").column("value").to_pylist()]
    for path in (str(tmp_path), os.path.expanduser("~"), str(store.path)):
        assert not [v for v in values if path in v], path
    stats = scoped.stats()
    assert "version" not in stats and stats["namespaces"] == {"A": 1}
    only_b = store.scoped(Scope.of(["nobody"], label="t")).stats()
    assert only_b["tables"] == {} and only_b["namespaces"] == {}  # no table only others use


# --- REVIEW 6, 11: a malformed hello is answered; SIGTERM during a query still stops the daemon --------
def test_malformed_hello_is_answered_and_sigterm_stops_a_busy_daemon(model_home, tmp_path):
    store_dir, rt, env, cli = _one_memory_store(model_home, tmp_path)
    daemon = subprocess.Popen([*cli, "daemon", "--sql-timeout", "0"], env=env, stderr=subprocess.DEVNULL)
    try:
        _wait_for_socket(rt, daemon)
        path = str(next(rt.glob("*.sock")))
        for bad in [b"[" * 60_000 + b"\n", b"not json\n", b'{"aios_memory": "nope"}\n', b"\xff\xfe\n"]:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(30)
                s.connect(path)
                s.sendall(bad)
                assert _line(s) == {"ok": False, "error": "expected a hello line first"}
        busy = socket.socket(socket.AF_UNIX)  # a client whose query would run for hours
        busy.settimeout(60)
        busy.connect(path)
        busy.sendall(b'{"aios_memory": "hello"}\n')
        assert _line(busy)["ok"]
        init = {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "x", "version": "1"},
        }
        busy.sendall(
            (json.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init}) + "\n").encode()
        )
        _line(busy)
        busy.sendall(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        endless = "SELECT count(*) AS n FROM range(1000000000000) t(i) WHERE i % 7 = 3"
        call = {"name": "sql", "arguments": {"query": endless}}
        busy.sendall(
            (json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": call}) + "\n").encode()
        )
        time.sleep(1.0)
        daemon.terminate()
        start = time.monotonic()
        daemon.wait(timeout=30)
        assert time.monotonic() - start < 15  # STOP_GRACE (5 s), not the hours the query would take
        assert not list(rt.glob("*.sock"))  # and it took its socket with it
        busy.close()
    finally:
        if daemon.poll() is None:
            daemon.kill()
        daemon.wait(30)
        shutil.rmtree(rt, ignore_errors=True)
