"""One daemon per store, many clients: real ``aios-memory serve`` proxies, real daemons, the SDK's real
client; MiniLM for text. Each test has its own runtime directory and stops its daemons (``daemon_helpers``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import daemon_helpers
from conftest import run_cli
from daemon_helpers import _gone, _pids, call, daemon_pid, maps_torch, rss_mib, runtime_lock, session
from mcp import ClientSession

from aios_memory import MemoryStore
from aios_memory.service import runtime

rt = daemon_helpers.rt  # the fixture: a private runtime directory per test


def test_four_sdk_clients_share_one_daemon_and_one_copy_of_the_model(rt, tmp_path):
    store = tmp_path / "store"

    async def agent(i: int, s: ClientSession) -> list[str]:
        ids = []
        for j in range(4):
            got = await call(
                s,
                "remember",
                content=f"agent {i} note {j}: the cat of agent {i} is called Miso-{i}",
                namespace=f"agent-{i}",
            )
            ids += got["ids"]
            found = await call(s, "recall", query=f"cat of agent {i}", namespace=f"agent-{i}", k=3)
            assert found["memories"] and all(m["namespace"] == f"agent-{i}" for m in found["memories"])
        return ids

    async def main() -> dict[str, Any]:
        async with contextlib.AsyncExitStack() as stack:
            sessions = [await stack.enter_async_context(session(rt, store)) for _ in range(4)]
            ids = await asyncio.gather(*(agent(i, s) for i, s in enumerate(sessions)))
            daemons = _pids("daemon", str(rt["dir"]), store)
            proxies = _pids("serve", str(rt["dir"]), store)
            shared = {"daemon": sum(rss_mib(p) for p in daemons), "proxies": sum(rss_mib(p) for p in proxies)}
            torch_in = {p: maps_torch(p) for p in daemons + proxies}
            out = {"ids": ids, "daemons": daemons, "proxies": proxies, "rss": shared, "torch": torch_in}
        async with contextlib.AsyncExitStack() as stack:  # the same work, one standalone server per client
            solo_store = tmp_path / "solo"
            sessions = [
                await stack.enter_async_context(session(rt, solo_store, "--standalone")) for _ in range(4)
            ]
            await asyncio.gather(*(agent(i, s) for i, s in enumerate(sessions)))
            solos = _pids("serve", str(rt["dir"]), solo_store)
            out["standalone"] = {"servers": len(solos), "rss": sum(rss_mib(p) for p in solos)}
        return out

    out = asyncio.run(main())
    assert len(out["daemons"]) == 1 and len(out["proxies"]) == 4
    assert out["standalone"]["servers"] == 4
    (daemon,) = out["daemons"]
    assert out["torch"][daemon] is True  # the model lives in the daemon...
    assert not any(out["torch"][p] for p in out["proxies"])  # ...and in no proxy
    shared = out["rss"]["daemon"] + out["rss"]["proxies"]
    print(
        f"\nRSS, 4 clients: daemon {out['rss']['daemon']:.0f} MiB + 4 proxies {out['rss']['proxies']:.0f} MiB "
        f"= {shared:.0f} MiB; 4 standalone servers {out['standalone']['rss']:.0f} MiB "
        f"({out['standalone']['rss'] / shared:.1f}x)"
    )
    assert shared < out["standalone"]["rss"] / 2
    everything = MemoryStore(store)
    assert sorted(m for ids in out["ids"] for m in ids) == sorted(
        everything.sql("SELECT id FROM text_memories").column("id").to_pylist()
    )


def test_socket_is_private_and_tokens_narrow_a_socket_client(rt, tmp_path):
    store = tmp_path / "store"
    seed = MemoryStore(store)
    seed.add("Agent A's cat is called Miso", namespace="agent-a")
    seed.add("Agent B's vault code is 4711", namespace="agent-b")
    token = json.loads(
        run_cli(
            "--store", str(store), "token", "create", "--name", "a", "--namespace", "agent-a", env=rt["env"]
        ).stdout
    )["token"]

    async def main() -> dict[str, Any]:
        async with session(rt, store) as owner, session(rt, store, "--token", token) as a:
            everything = await call(owner, "recall", query="vault code", k=5)
            mine = await call(a, "recall", query="vault code", k=5)
            sql = await call(a, "sql", query="SELECT namespace, content FROM text_memories")
            refused = await a.call_tool("remember", {"content": "x", "namespace": "agent-b"})
        return {"all": everything, "mine": mine, "sql": sql, "refused": refused}

    out = asyncio.run(main())
    assert {m["namespace"] for m in out["all"]["memories"]} == {"agent-a", "agent-b"}
    assert {m["namespace"] for m in out["mine"]["memories"]} == {"agent-a"}
    assert "4711" not in json.dumps(out["sql"]) and out["sql"]["row_count"] == 1
    assert out["refused"].is_error and "may not write" in out["refused"].content[0].text
    with runtime_lock(rt, store) as info:
        sock = Path(info["socket"])
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    bad = subprocess.run(
        [sys.executable, "-m", "aios_memory", "serve", "--store", str(store), "--token", token + "x"],
        env=rt["env"],
        capture_output=True,
        text=True,
        timeout=60,
        input="",
    )
    assert bad.returncode == 1 and "refused" in bad.stderr and "4711" not in bad.stderr


def test_a_runtime_directory_others_can_enter_is_one_line_error_with_the_chmod_fix(tmp_path):
    rt_dir = tmp_path / "rt"
    rt_dir.mkdir(mode=0o755)
    rt_dir.chmod(0o755)
    store = tmp_path / "store"
    env = {"AIOS_MEMORY_RUNTIME_DIR": str(rt_dir), "AIOS_MEMORY_HOME": str(tmp_path / "home")}
    run_cli("--store", str(store), "init", env=env)
    for args in (["daemon", "--stop"], ["serve"]):
        got = run_cli("--store", str(store), *args, env=env, check=False, input="")
        assert got.returncode == 1, got
        assert "Traceback" not in got.stderr and got.stderr.strip().count("\n") == 0, got.stderr
        assert got.stderr.startswith("Error: RuntimeDirError: "), got.stderr
        assert (
            f"chmod 700 {rt_dir}" in got.stderr and "point $AIOS_MEMORY_RUNTIME_DIR elsewhere" in got.stderr
        )
    assert stat.S_IMODE(rt_dir.stat().st_mode) == 0o755  # reported, never changed behind the user's back


def test_a_second_daemon_exits_and_two_daemons_on_one_store_keep_every_write(rt, tmp_path):
    store = tmp_path / "store"
    other = dict(rt["env"], AIOS_MEMORY_RUNTIME_DIR=tempfile.mkdtemp(prefix="aiosrt2-"))

    async def writer(env: dict[str, str], tag: str) -> list[str]:
        ids: list[str] = []
        async with session(rt, store, env=env) as s:
            for j in range(15):
                ids += (await call(s, "remember", content=f"{tag} note {j}", namespace=tag))["ids"]
        return ids

    async def main() -> list[list[str]]:
        return await asyncio.gather(writer(rt["env"], "one"), writer(other, "two"))

    try:
        ids = asyncio.run(main())
        again = subprocess.run(
            [sys.executable, "-m", "aios_memory", "--store", str(store), "daemon"],
            env=rt["env"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert again.returncode == 1 and "already serves" in again.stderr
    finally:
        subprocess.run(
            [sys.executable, "-m", "aios_memory", "--store", str(store), "daemon", "--stop"],
            env=other,
            capture_output=True,
            timeout=60,
        )
    assert _gone(other["AIOS_MEMORY_RUNTIME_DIR"])
    s = MemoryStore(store)
    assert sorted(ids[0] + ids[1]) == sorted(s.sql("SELECT id FROM text_memories").column("id").to_pylist())
    assert s.stats()["namespaces"] == {"one": 15, "two": 15}


def test_idle_daemon_unloads_its_model_and_exits(rt, tmp_path):
    store = tmp_path / "store"

    async def main() -> dict[str, Any]:
        async with session(rt, store, "--unload-after=1", "--idle-exit=2") as s:
            await call(s, "remember", content="a note about tea", namespace="n")
            pid = daemon_pid(rt, store)
            loaded = rss_mib(pid)
            deadline = time.monotonic() + 30
            with runtime_lock(rt, store):
                log_file = runtime.log_path(store)
            while "unloaded minilm" not in log_file.read_text() and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            unloaded = rss_mib(pid)
            found = await call(s, "recall", query="tea", k=1)  # loads it again
        return {
            "pid": pid,
            "loaded": loaded,
            "unloaded": unloaded,
            "log": log_file.read_text(),
            "found": found,
        }

    out = asyncio.run(main())
    assert "unloaded minilm-l6-v2" in out["log"]
    assert out["found"]["memories"][0]["content"] == "a note about tea"
    print(
        f"\ndaemon RSS with MiniLM loaded {out['loaded']:.0f} MiB, after unloading {out['unloaded']:.0f} MiB"
    )
    assert _gone(str(rt["dir"]), store), "the auto-started daemon did not exit when idle"


def test_daemon_answers_are_byte_identical_to_a_standalone_server_and_the_store(rt, tmp_path):
    from aios_memory.mcp_server import _jsonable, memory_dict

    store = tmp_path / "store"
    seed = MemoryStore(store)
    seed.add_many(
        [
            f"fact {i}: the {c} bicycle is parked at dock {i}"
            for i, c in enumerate(["red", "blue", "green"] * 4)
        ],
        namespace="n",
    )
    calls = [
        ("recall", {"query": "where is the red bicycle", "k": 5}),
        (
            "recall",
            {
                "query": "blue bicycle",
                "k": 3,
                "namespace": "n",
                "where": "content LIKE ?",
                "params": ["%dock 1%"],
            },
        ),
        ("sql", {"query": "SELECT id, content, created_at FROM text_memories ORDER BY id"}),
        (
            "sql",
            {
                "query": "SELECT array_cosine_similarity(embedding, embed_text(?)) AS s FROM text_memories ORDER BY id",
                "params": ["bike"],
            },
        ),
    ]

    async def texts(*options: str) -> list[str]:
        async with session(rt, store, *options) as s:
            out = []
            for tool, args in calls:
                result = await s.call_tool(tool, args)
                assert not result.is_error, result.content[0].text
                out.append(result.content[0].text)
            return out

    via_daemon, standalone = asyncio.run(texts()), asyncio.run(texts("--standalone"))
    assert via_daemon == standalone  # the same bytes
    in_process = [memory_dict(m) for m in seed.search("where is the red bicycle", k=5)]
    assert [(m["id"], m["score"]) for m in json.loads(via_daemon[0])["memories"]] == [
        (m["id"], m["score"]) for m in in_process
    ]
    table = seed.sql(calls[3][1]["query"], ["bike"])
    assert json.loads(via_daemon[3])["rows"] == _jsonable(table.to_pylist())


def test_a_long_lived_daemon_cleans_up_old_versions(rt, tmp_path):
    """Without cleanup a daemon that takes one commit per remember keeps every version for ever (a
    20,000-remember soak left 22,500); it removes those past the retention period on a timer."""
    store = tmp_path / "store"
    cli = [sys.executable, "-m", "aios_memory", "--store", str(store)]
    rt["stores"].append(store)
    daemon = subprocess.Popen([*cli, "daemon", "--cleanup-every", "1", "--retention", "0"], env=rt["env"])
    try:
        deadline = time.monotonic() + 60  # serving before the session's proxy would start one of its own
        while not list(rt["dir"].glob("*.sock")) and daemon.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert daemon.poll() is None and list(rt["dir"].glob("*.sock"))

        async def main() -> None:
            async with session(rt, store) as s:
                for j in range(12):
                    await call(s, "remember", content=f"note {j}", namespace="n")

        asyncio.run(main())
        deadline = time.monotonic() + 30
        versions = lambda: len(list((store / "_versions").glob("*.manifest.json")))  # noqa: E731
        while versions() > 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert versions() <= 2
        assert MemoryStore(store).stats()["tables"]["text"]["memories"] == 12
    finally:
        daemon.terminate()
        daemon.wait(60)


def test_the_daemon_keeps_a_bounded_number_of_built_servers(rt, tmp_path):
    """Over weeks tokens come and go: one MCP server per scope in use, the least recent let go."""
    from aios_memory.scope import Scope
    from aios_memory.service.daemon import MAX_SERVERS, Daemon, DaemonConfig

    daemon = Daemon(DaemonConfig(store=tmp_path / "store", socket=rt["dir"] / "unused.sock"))
    first = daemon.server_for(Scope.of(["a0"], label="t0"))
    assert daemon.server_for(Scope.of(["a0"], label="t0")) is first  # built once per scope
    for i in range(1, 3 * MAX_SERVERS):
        daemon.server_for(Scope.of([f"a{i}"], label=f"t{i}"))
    assert len(daemon._servers) == MAX_SERVERS
    assert daemon.server_for(Scope.of(["a0"], label="t0")) is not first  # let go, built again on demand
