"""The ``aios-memory serve`` proxy: no heavy imports, a daemon killed mid-write (real ``kill -9``), a cold
start's ``initialize``, and the options a running daemon was started with. Real processes throughout."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from typing import Any

import daemon_helpers
from daemon_helpers import _gone, _pids, call, daemon_pid, session
from mcp.shared.exceptions import MCPError

from aios_memory import MemoryStore

rt = daemon_helpers.rt  # the fixture: a private runtime directory per test


def test_proxy_imports_neither_torch_nor_the_mcp_sdk():
    code = "import sys, aios_memory.cli, aios_memory.service.proxy; print(sorted(m for m in ('torch', 'mcp', 'duckdb', 'pyarrow', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.replace("'", '"')) == []


def test_serve_finds_the_store_without_loading_pyarrow_or_numpy(tmp_path):
    """What ``serve`` runs before the proxy (the store's existence, its models directory) stays light:
    a proxy that imported pyarrow and numpy held 30-44 MiB of PSS instead of 12-15 (bench_daemon)."""
    MemoryStore(tmp_path / "store")
    code = (
        "import sys, click\n"
        "from aios_memory.service.commands import _store_path\n"
        "ctx = click.Context(click.Command('serve'), obj={'store': sys.argv[1]})\n"
        "print(_store_path(ctx, None).name)\n"
        "print(sorted(m for m in ('torch', 'mcp', 'duckdb', 'pyarrow', 'numpy') if m in sys.modules))\n"
        "try:\n    _store_path(ctx, sys.argv[2])\nexcept click.ClickException as e:\n    print(e.message)\n"
    )
    args = [str(tmp_path / "store"), str(tmp_path / "none")]
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    name, heavy, refused = out.stdout.splitlines()
    assert name == "store" and heavy == "[]"
    assert (
        refused.startswith("StoreNotFoundError: no store at") and "aios-memory --store PATH init" in refused
    )


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


def test_a_proxy_says_when_the_running_daemon_has_other_options(rt, tmp_path):
    """The daemon's options hold for every client: a second host's --allow-read is not silently dropped."""
    store, allowed = tmp_path / "store", tmp_path / "photos"
    allowed.mkdir()

    async def first() -> None:
        async with session(rt, store) as s:  # starts the daemon, without --allow-read
            await call(s, "recall", query="x", k=1)
            serve = [
                sys.executable,
                "-m",
                "aios_memory",
                "serve",
                "--store",
                str(store),
                "--allow-read",
                str(allowed),
            ]
            second = subprocess.run(
                serve, env=rt["env"], input="", capture_output=True, text=True, timeout=60
            )
            assert second.returncode == 0
            assert "started with other options" in second.stderr and str(allowed) in second.stderr

    asyncio.run(first())
