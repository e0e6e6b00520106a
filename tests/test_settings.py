"""A store remembers where its models were installed (aios_memory.settings), so that a process given only
``--store`` (an MCP host launching ``serve`` without custom environment variables) finds them."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import run_cli

from aios_memory.settings import SETTINGS, read


def bare_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """What an MCP host passes: no AIOS_MEMORY_* variables, a home whose default cache has no models."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOS_MEMORY_")}
    home = tmp_path / "bare-home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), TOKENIZERS_PARALLELISM="false", **extra)
    return env


def cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "aios_memory", *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert not check or proc.returncode == 0, proc.stderr
    return proc


def test_the_store_records_its_models_and_a_bare_process_uses_them(model_home, tmp_path):
    store = tmp_path / "st"
    run_cli("--store", str(store), "add", "The spare key is under the blue pot")
    assert read(store)["models_dir"] == str(model_home / "models")
    env = bare_env(tmp_path)
    hit = cli(env, "--store", str(store), "search", "where is the key", "-k", "1", "--json")
    assert "blue pot" in json.loads(hit.stdout)[0]["content"]
    # with no record (a store from before settings), the same process has no models: the record did it
    (store / SETTINGS).unlink()
    miss = cli(env, "--store", str(store), "search", "where is the key", check=False)
    assert miss.returncode == 1 and "ModelNotInstalledError" in miss.stderr
    # the environment still wins over the record
    (store / SETTINGS).write_text(json.dumps({"models_dir": str(tmp_path / "elsewhere")}))
    (tmp_path / "elsewhere").mkdir()
    listed = cli({**env, "AIOS_MEMORY_HOME": str(model_home)}, "--store", str(store), "models", "list")
    assert json.loads(listed.stdout)["models_dir"] == str(model_home / "models")
    listed = cli(env, "--store", str(store), "models", "list")
    assert json.loads(listed.stdout)["models_dir"] == str(tmp_path / "elsewhere")


def test_a_damaged_or_foreign_settings_file_is_ignored(model_home, tmp_path):
    store = tmp_path / "st"
    run_cli("--store", str(store), "init")
    for junk in ("{not json", "[1, 2]", json.dumps({"models_dir": 5}), json.dumps({"models_dir": "/nope/x"})):
        (store / SETTINGS).write_text(junk)
        listed = cli(bare_env(tmp_path), "--store", str(store), "models", "list")
        assert json.loads(listed.stdout)["models_dir"] == str(
            tmp_path / "bare-home/.cache/aios-memory/models"
        )


async def _recall(args: list[str], env: dict[str, str], query: str) -> dict:
    from mcp import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(command=sys.executable, args=args, env=env)
    with open(os.devnull, "w") as err:
        async with stdio_client(params, errlog=err) as (read_, write):
            async with ClientSession(read_, write, read_timeout_seconds=120) as session:
                await session.initialize()
                result = await session.call_tool("recall", {"query": query, "k": 1})
                assert not result.is_error, result.content[0].text
                return result.structured_content


@pytest.mark.parametrize("how", ["recorded", "--models"])
def test_serve_started_like_an_mcp_host_finds_the_models(model_home, tmp_path, how):
    """``serve --store S`` through its daemon, from an environment without AIOS_MEMORY_HOME: the models
    come from the store's record, or from ``--models`` for a store without one."""
    pytest.importorskip("mcp", reason="mcp is not installed: pip install 'aios-memory[mcp]'")
    store = tmp_path / "st"
    run_cli("--store", str(store), "add", "The wifi password is on the fridge")
    args = ["-m", "aios_memory", "serve", "--store", str(store)]
    if how == "--models":
        (store / SETTINGS).unlink()
        args += ["--models", str(model_home / "models")]
    runtime = Path(tempfile.mkdtemp(prefix="aiosrt-"))  # a private daemon, stopped below
    env = bare_env(tmp_path, AIOS_MEMORY_RUNTIME_DIR=str(runtime))
    try:
        got = asyncio.run(_recall(args, env, "wifi password"))
        assert "fridge" in json.dumps(got)
    finally:
        cli(env, "--store", str(store), "daemon", "--stop", check=False)
        shutil.rmtree(runtime, ignore_errors=True)


def test_mcp_errors_hide_a_models_directory_outside_the_home(tmp_path, monkeypatch):
    """A store's recorded models may live outside the server's home: MCP messages still show <models>."""
    from aios_memory import MemoryStore
    from aios_memory.mcp_server import Served

    models = tmp_path / "elsewhere" / "models"
    models.mkdir(parents=True)
    monkeypatch.setenv("AIOS_MEMORY_MODELS", str(models))
    store = MemoryStore(tmp_path / "st")
    served = Served(store, dedupe=None, sql_timeout=None, allow_read=[])
    text = f"CLIP is not installed at {models}/clip/weights.parquet"
    assert served.scrub(text, store) == "CLIP is not installed at <models>/clip/weights.parquet"


def test_threads_creating_one_store_at_once_all_open_it(model_home, tmp_path):
    """Several threads of one process opening the same new store: none fails on the settings file."""
    import threading

    from aios_memory import MemoryStore

    for trial in range(10):
        root, errors = tmp_path / f"s{trial}", []

        def open_it(root: Path = root, errors: list = errors) -> None:
            try:
                MemoryStore(root)
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [] and read(root)["models_dir"]
        assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]
