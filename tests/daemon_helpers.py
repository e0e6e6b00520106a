"""What the daemon and proxy tests share: a private runtime directory per test (the fixture stops the
daemons it saw), sessions of the SDK's real stdio client through `aios-memory serve`, and /proc probes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

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
    """A client session through ``aios-memory serve``; the store is created first when it does not exist
    yet (``serve`` refuses a location that holds no store)."""
    if store not in rt["stores"]:
        rt["stores"].append(store)
    if not store.exists():
        MemoryStore(store)
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
