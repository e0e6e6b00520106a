"""One daemon per store, many clients: real ``aios-memory serve`` proxies, real daemons, the SDK's real
client, real ``kill -9``; MiniLM for text. Each test has its own runtime directory and stops its daemons."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError

from aios_memory import MemoryStore
from aios_memory.service import runtime


@pytest.fixture()
def rt(model_home: Path) -> Iterator[dict[str, Any]]:
    """A private runtime dir (short: socket paths are limited) and the env every process of a test gets."""
    d = Path(tempfile.mkdtemp(prefix="aiosrt-"))
    env = {
        **os.environ,
        "AIOS_MEMORY_RUNTIME_DIR": str(d),
        "AIOS_MEMORY_HOME": str(model_home),
        "TOKENIZERS_PARALLELISM": "false",
    }
    info: dict[str, Any] = {"dir": d, "env": env, "stores": []}
    yield info
    for store in info["stores"]:  # stop what the test started, and be sure nothing is left
        subprocess.run(
            [sys.executable, "-m", "aios_memory", "--store", str(store), "daemon", "--stop"],
            env=env,
            capture_output=True,
            timeout=60,
        )
    for pid in _pids("daemon", str(d)):
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(d, ignore_errors=True)


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _environ(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _pids(command: str, runtime_dir: str, store: Path | None = None) -> list[int]:
    """Live processes running ``aios-memory ... <command>`` in ``runtime_dir`` (for ``store``)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        cmd = _cmdline(int(entry.name))
        if command in cmd and "aios_memory" in cmd and runtime_dir in _environ(int(entry.name)):
            if store is None or any(
                os.path.realpath(store) == os.path.realpath(a) for a in cmd if a.startswith("/")
            ):
                if Path(f"/proc/{entry.name}/status").read_text().find("State:\tZ") < 0:
                    out.append(int(entry.name))
    return out


def _gone(runtime_dir: str, store: Path | None = None, wait: float = 30.0) -> bool:
    """Whether every daemon of ``runtime_dir`` has exited (a stopped one finishes its exit shortly after
    it lets go of its lock)."""
    deadline = time.monotonic() + wait
    while _pids("daemon", runtime_dir, store):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def daemon_pid(rt: dict[str, Any], store: Path) -> int:
    with runtime_lock(rt, store) as info:
        return int(info["pid"])


@contextlib.contextmanager
def runtime_lock(rt: dict[str, Any], store: Path) -> Iterator[dict[str, Any]]:
    old = os.environ.get(runtime.ENV_DIR)
    os.environ[runtime.ENV_DIR] = str(rt["dir"])
    try:
        yield json.loads(runtime.lock_path(store).read_text())
    finally:
        if old is None:
            os.environ.pop(runtime.ENV_DIR)
        else:
            os.environ[runtime.ENV_DIR] = old


@contextlib.asynccontextmanager
async def session(
    rt: dict[str, Any], store: Path, *options: str, env: dict[str, str] | None = None
) -> AsyncIterator[ClientSession]:
    if store not in rt["stores"]:
        rt["stores"].append(store)
    args = ["-m", "aios_memory", "serve", "--store", str(store), *options]
    params = StdioServerParameters(command=sys.executable, args=args, env=env or rt["env"])
    with (rt["dir"] / f"serve-{os.getpid()}-{time.monotonic_ns()}.log").open("w") as err:
        async with stdio_client(params, errlog=err) as (read, write):
            async with ClientSession(read, write, read_timeout_seconds=120) as s:
                s.init = await s.initialize()  # type: ignore[attr-defined]
                yield s


async def call(s: ClientSession, tool: str, **args: Any) -> Any:
    result = await s.call_tool(tool, args)
    assert not result.is_error, f"{tool} failed: {result.content[0].text}"
    return result.structured_content


def maps_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


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


def test_proxy_imports_neither_torch_nor_the_mcp_sdk():
    code = "import sys, aios_memory.cli, aios_memory.service.proxy; print(sorted(m for m in ('torch', 'mcp', 'duckdb', 'pyarrow', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.replace("'", '"')) == []


def test_kill_9_mid_write_loses_nothing_committed_and_the_next_call_restarts_it(rt, tmp_path):
    store = tmp_path / "store"

    async def main() -> dict[str, Any]:
        acked: list[str] = []
        errors: list[str] = []
        async with session(rt, store) as s:
            await call(s, "remember", content="warm-up", namespace="k")
            first = daemon_pid(rt, store)

            async def writer() -> None:
                for j in range(200):
                    try:
                        got = await call(
                            s, "remember", content=f"write {j} about a red bicycle", namespace="k"
                        )
                        acked.extend(got["ids"])
                    except MCPError as exc:
                        errors.append(str(exc))
                        return

            task = asyncio.create_task(writer())
            while len(acked) < 5:
                await asyncio.sleep(0.01)
            os.kill(first, signal.SIGKILL)
            await task
            got = await call(s, "remember", content="after the crash", namespace="k")  # restarts the daemon
            found = await call(s, "recall", query="red bicycle", namespace="k", k=3)
            second = daemon_pid(rt, store)
        return {
            "acked": acked,
            "errors": errors,
            "first": first,
            "second": second,
            "after": got["ids"],
            "found": found,
        }

    out = asyncio.run(main())
    assert out["errors"] and "daemon stopped" in out["errors"][0]  # the in-flight call is answered, not hung
    assert out["second"] != out["first"]
    assert out["found"]["memories"]
    s = MemoryStore(store)
    for id_ in out["acked"] + out["after"]:
        assert s.get(id_) is not None  # every acknowledged write survived the kill
    assert s.verify()["ok"]


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


def test_a_cold_start_answers_initialize_as_the_daemon_did(rt, tmp_path):
    """The first proxy of a store waits for its daemon; later cold starts answer ``initialize`` from the
    daemon's earlier answer while the daemon starts, then relay as usual (the daemon's answer is dropped)."""
    store = tmp_path / "store"

    async def one() -> tuple[Any, Any, bool]:
        async with session(rt, store) as s:
            found = await call(s, "recall", query="anything", k=1)
            return s.init, found, bool(_pids("daemon", str(rt["dir"]), store))

    stop = [sys.executable, "-m", "aios_memory", "--store", str(store), "daemon", "--stop"]
    first, found1, up1 = asyncio.run(one())
    assert len(list(rt["dir"].glob("*.init.json"))) == 1  # the daemon's answer, kept by the proxy
    subprocess.run(stop, env=rt["env"], check=True, capture_output=True, timeout=60)
    assert _gone(str(rt["dir"]), store)
    second, found2, up2 = asyncio.run(one())
    assert up1 and up2 and found1 == found2 == {"memories": []}
    assert second.model_dump() == first.model_dump()  # what the host sees does not depend on the cache
    assert second.server_info.name == "aios-memory"
