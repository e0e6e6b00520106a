"""The daemon's HTTP transport (``daemon --http``) from the outside: a real daemon process, real HTTP,
the SDK's streamable-HTTP client with bearer tokens made by the real CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from conftest import run_cli
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from aios_memory import MemoryStore

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def served(model_home: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    store = tmp_path / "store"
    seed = MemoryStore(store)
    ids = {
        "a": seed.add("Agent A's cat is called Miso", namespace="agent-a"),
        "b": seed.add("Agent B's vault code is 4711", namespace="agent-b"),
        "shared": seed.add("The team meets on Mondays", namespace="shared"),
    }
    rt = Path(tempfile.mkdtemp(prefix="aiosrt-h"))
    env = {**os.environ, "AIOS_MEMORY_HOME": str(model_home), "AIOS_MEMORY_RUNTIME_DIR": str(rt)}
    env["TOKENIZERS_PARALLELISM"] = "false"

    def token(*args: str) -> dict[str, Any]:
        return json.loads(run_cli("--store", str(store), "token", "create", *args, env=env).stdout)

    tokens = {
        "a": token("--name", "agent-a", "--namespace", "agent-a", "--namespace", "shared"),
        "reader": token("--name", "reader", "--namespace", "agent-a", "--read-only", "--no-sql"),
    }
    port, ui_port = _free_port(), _free_port()
    log = (tmp_path / "daemon.log").open("w")
    command = ["daemon", "--http", "--port", str(port), "--ui-port", str(ui_port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "aios_memory", "--store", str(store), *command],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx2.post(url, json=INIT, headers=HEADERS, timeout=2)
            break
        except httpx2.TransportError:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "daemon.log").read_text()
            time.sleep(0.1)
    try:
        yield {
            "url": url,
            "page": f"http://127.0.0.1:{ui_port}/",
            "ids": ids,
            "tokens": tokens,
            "store": store,
            "env": env,
            "proc": proc,
        }
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
        shutil.rmtree(rt, ignore_errors=True)


@contextlib.asynccontextmanager
async def client(url: str, token: str) -> AsyncIterator[ClientSession]:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=120)
    async with http, streamable_http_client(url, http_client=http) as (read, write, *_):
        async with ClientSession(read, write) as s:
            await s.initialize()
            yield s


def _post(url: str, auth: str | None) -> httpx2.Response:
    headers = dict(HEADERS, **({"authorization": auth} if auth is not None else {}))
    return httpx2.post(url, json=INIT, headers=headers, timeout=10)


def test_missing_wrong_and_revoked_tokens_get_401(served):
    url, good = served["url"], served["tokens"]["a"]["token"]
    for auth in [
        None,
        "",
        "Bearer",
        "Bearer  x",
        f"Basic {good}",
        f"Bearer {good}x",
        "Bearer aiosm_00000000_" + "A" * 43,
    ]:
        r = _post(url, auth)
        assert r.status_code == 401, (auth, r.status_code)
        assert r.headers["www-authenticate"].startswith("Bearer") and "4711" not in r.text
    assert _post(url, f"Bearer {good}").status_code == 200
    assert _post(url.replace("/mcp", "/anything"), None).status_code == 401  # every path, not just /mcp
    run_cli(
        "--store", str(served["store"]), "token", "revoke", served["tokens"]["a"]["id"], env=served["env"]
    )
    assert _post(url, f"Bearer {good}").status_code == 401  # from the next request on, no restart


def test_a_token_for_a_gets_nothing_of_b(served):
    ids = served["ids"]

    async def main() -> dict[str, Any]:
        async with client(served["url"], served["tokens"]["a"]["token"]) as s:
            out: dict[str, Any] = {}
            out["recall"] = (await s.call_tool("recall", {"query": "vault code", "k": 10})).structured_content
            out["recall_b"] = await s.call_tool("recall", {"query": "vault", "namespace": "agent-b"})
            out["sql"] = (
                await s.call_tool("sql", {"query": "SELECT namespace, content FROM text_memories"})
            ).structured_content
            out["sql_crafted"] = (
                await s.call_tool(
                    "sql",
                    {
                        "query": "SELECT count(*) AS n FROM text_memories WHERE namespace = ?",
                        "params": ["agent-b"],
                    },
                )
            ).structured_content
            out["write_b"] = await s.call_tool("remember", {"content": "x", "namespace": "agent-b"})
            out["write_a"] = (
                await s.call_tool("remember", {"content": "A again", "namespace": "agent-a"})
            ).structured_content
            out["forget_b"] = (await s.call_tool("forget", {"ids": [ids["b"]]})).structured_content
            out["history_b"] = await s.call_tool("history", {"id": ids["b"]})
            out["stats"] = json.loads((await s.read_resource("memory://stats")).contents[0].text)
            out["recent"] = json.loads((await s.read_resource("memory://recent")).contents[0].text)
            try:
                await s.read_resource(f"memory://{ids['b']}")
                out["one_b"] = "read"
            except MCPError as exc:
                out["one_b"] = str(exc)
        return out

    out = asyncio.run(main())
    text = json.dumps({k: v for k, v in out.items() if isinstance(v, (dict, list, str))})
    assert "4711" not in text and ids["b"] not in json.dumps(out["recall"]) + json.dumps(out["recent"])
    assert {m["namespace"] for m in out["recall"]["memories"]} == {"agent-a", "shared"}
    assert out["recall_b"].is_error and "may not read" in out["recall_b"].content[0].text
    assert {r["namespace"] for r in out["sql"]["rows"]} == {"agent-a", "shared"}
    assert out["sql_crafted"]["rows"] == [{"n": 0}]
    assert out["write_b"].is_error and "may not write" in out["write_b"].content[0].text
    assert out["write_a"]["ids"]
    assert out["forget_b"] == {"deleted": 0, "not_found": [ids["b"]]}
    assert out["history_b"].is_error
    assert set(out["stats"]["namespaces"]) == {"agent-a", "shared"} and "path" not in out["stats"]
    assert f"no memory with id {ids['b']!r}" in out["one_b"]  # B's memory is not found, as an unknown id
    still = MemoryStore(served["store"])
    assert still.get(ids["b"]).content.endswith("4711")  # nothing of B changed


def test_read_only_no_sql_token(served):
    async def main() -> dict[str, Any]:
        async with client(served["url"], served["tokens"]["reader"]["token"]) as s:
            return {
                "recall": (await s.call_tool("recall", {"query": "cat", "k": 5})).structured_content,
                "write": await s.call_tool("remember", {"content": "x", "namespace": "agent-a"}),
                "forget": await s.call_tool("forget", {"ids": [served["ids"]["a"]]}),
                "sql": await s.call_tool("sql", {"query": "SELECT 1 AS one"}),
                "recent": json.loads((await s.read_resource("memory://recent")).contents[0].text),
            }

    out = asyncio.run(main())
    assert [m["id"] for m in out["recall"]["memories"]] == [served["ids"]["a"]]
    for refused in ("write", "forget", "sql"):
        assert out[refused].is_error, refused
    assert "read-only" in out["write"].content[0].text and "SQL" in out["sql"].content[0].text
    assert [m["id"] for m in out["recent"]] == [served["ids"]["a"]]  # listing needs no SQL right
    assert MemoryStore(served["store"]).get(served["ids"]["a"]) is not None


def test_the_daemon_serves_the_page_with_the_same_tokens_and_models(served):
    page, token = served["page"], served["tokens"]["a"]["token"]
    assert httpx2.get(page + "api/stats", timeout=10).status_code == 401  # no owner token in a daemon
    auth = {"Authorization": f"Bearer {token}"}
    stats = httpx2.get(page + "api/stats", headers=auth, timeout=10).json()
    assert set(stats["namespaces"]) == {"agent-a", "shared"}
    found = httpx2.post(page + "api/search", json={"query": "vault code", "k": 10}, headers=auth, timeout=60)
    assert found.status_code == 200 and "4711" not in found.text
    signed_in = httpx2.get(page, params={"token": token}, timeout=10)
    assert signed_in.status_code == 303 and "httponly" in signed_in.headers["set-cookie"].lower()


def test_a_session_belongs_to_its_token_and_uploads_reach_the_tool(served):
    """Review findings: another token's requests on a session are answered as if it did not exist; a body
    above the SDK's 4 MiB default (a base64 upload under the tools' 64 MiB) reaches the tool."""
    import base64

    url, a, other = served["url"], served["tokens"]["a"]["token"], served["tokens"]["reader"]["token"]
    opened = _post(url, f"Bearer {a}")
    sid = opened.headers["mcp-session-id"]
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    as_other = dict(HEADERS, authorization=f"Bearer {other}", **{"mcp-session-id": sid})
    assert httpx2.post(url, json=listing, headers=as_other, timeout=10).status_code == 404
    assert httpx2.delete(url, headers=as_other, timeout=10).status_code == 404
    as_owner = dict(HEADERS, authorization=f"Bearer {a}", **{"mcp-session-id": sid})
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert httpx2.post(url, json=note, headers=as_owner, timeout=10).status_code == 202  # still A's

    async def upload() -> Any:
        async with client(url, a) as s:
            return await s.call_tool("remember", {"data": base64.b64encode(os.urandom(6 << 20)).decode()})

    result = asyncio.run(upload())  # 8 MiB of JSON: the transport takes it, the tool judges the bytes
    assert result.is_error and "UnsupportedMediaError: content is neither" in result.content[0].text
