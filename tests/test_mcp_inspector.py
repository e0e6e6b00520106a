"""The tool schemas through MCP Inspector's own check (`mcp-inspector --cli --method tools/list --strict`,
the Node CLI that MCP host developers use; `.ci/run` installs it with npm and sets ``MCP_INSPECTOR``):
it must report no portability problem, for the standalone server and through the daemon's proxy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from aios_memory import MemoryStore

TOOLS = {"remember", "recall", "forget", "sql", "classify_image", "history"}
ENV = ("AIOS_MEMORY_HOME", "AIOS_MEMORY_RUNTIME_DIR")


@pytest.mark.parametrize("mode", [["--standalone"], []], ids=["standalone", "daemon"])
def test_inspector_strict_reports_no_schema_problem(model_home: Path, tmp_path: Path, mode: list[str]):
    inspector = os.environ.get("MCP_INSPECTOR") or shutil.which("mcp-inspector")
    if not inspector:
        pytest.skip("MCP Inspector is not installed: apt-get install npm, then .ci/run installs it")
    runtime = tempfile.mkdtemp(prefix="aiosrt-i")
    env = {**os.environ, "AIOS_MEMORY_HOME": str(model_home), "AIOS_MEMORY_RUNTIME_DIR": runtime}
    store = str(tmp_path / "store")
    MemoryStore(store)  # `serve` refuses a location that holds no store
    server = [sys.executable, "-m", "aios_memory", "serve", "--store", store, *mode]
    try:
        run = subprocess.run(
            # the Inspector gives the server only the environment named with -e
            [
                inspector,
                "--cli",
                *(f"-e{k}={env[k]}" for k in ENV),
                "--method",
                "tools/list",
                "--strict",
                "--",
                *server,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        stop = [sys.executable, "-m", "aios_memory", "--store", store, "daemon", "--stop"]
        subprocess.run(stop, env=env, capture_output=True, timeout=60)
        shutil.rmtree(runtime, ignore_errors=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Warning" not in run.stderr and "Error" not in run.stderr, run.stderr[-3000:]
    assert {t["name"] for t in json.loads(run.stdout)["tools"]} == TOOLS
