"""docs/cli.md is the commands' own --help, regenerated: it cannot drift from the code."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import run_cli

from aios_memory.clidoc import render

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def test_cli_reference_is_up_to_date():
    assert DOC.read_text() == render(), (
        "docs/cli.md is stale: run `python -m aios_memory.clidoc > docs/cli.md`"
    )


def test_every_command_of_the_real_cli_has_a_section():
    listed = run_cli("--help").stdout.split("Commands:")[1]
    names = set(re.findall(r"^\s{2}(\S+)\s", listed, re.M))
    assert {"add", "search", "sql", "history", "import"} <= names
    sections = set(re.findall(r"^## `aios-memory ([^\s`]+)", DOC.read_text(), re.M))
    assert names <= sections
    models = run_cli("models", "--help").stdout
    assert "install" in models and "## `aios-memory models install`" in DOC.read_text()
