"""Store-local settings: ``<store>/_settings.json``, written when a local store is created.

It records where the store's models were installed (the models directory in effect then), so that a
process started with nothing but ``--store`` (an MCP host launching ``aios-memory serve``, which drops
custom environment variables) finds them. Precedence, first wins: ``--models`` / ``$AIOS_MEMORY_MODELS``,
``$AIOS_MEMORY_HOME``, the store's recorded directory (if it still exists), the default home.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from aios_memory.home import models_dir

SETTINGS = (
    "_settings.json"  # underscored, like the store's other own files: a user's settings.json is not ours
)
MODELS_ENV = "AIOS_MEMORY_MODELS"


def read(root: str | Path) -> dict[str, Any]:
    """The settings of the local store at ``root`` (empty when it has none or they do not parse)."""
    try:
        data = json.loads((Path(root) / SETTINGS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record_models(root: str | Path, directory: str | Path | None = None) -> None:
    """Remember ``directory`` (default: the models directory in effect) as the store's models. A
    settings file that does not parse is left as it is (it is not ours to overwrite)."""
    if (Path(root) / SETTINGS).exists() and not read(root):
        return
    settings = {**read(root), "models_dir": str(Path(directory or models_dir()).expanduser().absolute())}
    tmp = Path(root) / f".{SETTINGS}.{uuid.uuid4().hex}.tmp"  # unique: threads may create a store at once
    try:
        tmp.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        tmp.replace(Path(root) / SETTINGS)  # readers see the old file or the new one, never a part
    except OSError:  # a hint for later processes: never a reason for creating the store to fail
        tmp.unlink(missing_ok=True)


_applied: str | None = None  # the directory this process took from a store's settings


def use_store_models(root: str | Path) -> Path | None:
    """In a process serving one store: use the store's recorded models directory unless the
    environment chose one (a directory taken from another store's settings before is replaced).
    Returns the directory now in effect from the store, if any."""
    global _applied
    chosen = os.environ.get(MODELS_ENV)
    if (chosen and chosen != _applied) or os.environ.get("AIOS_MEMORY_HOME"):
        return None
    if chosen:  # taken from another store (the default one, before a command's own --store)
        del os.environ[MODELS_ENV]
        _applied = None
    recorded = read(root).get("models_dir")
    if not isinstance(recorded, str) or not Path(recorded).is_dir():
        return None
    os.environ[MODELS_ENV] = _applied = recorded
    return Path(recorded)


def use_models(directory: Path) -> None:
    """``--models DIR``: this process and the processes it starts use ``DIR``."""
    global _applied
    os.environ[MODELS_ENV] = str(directory.expanduser().absolute())
    _applied = None
