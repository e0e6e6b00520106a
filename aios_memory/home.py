"""Where aios-memory keeps models and the default store: ``$AIOS_MEMORY_HOME`` or the user's cache."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    env = os.environ.get("AIOS_MEMORY_HOME")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "aios-memory"


def models_dir() -> Path:
    """``$AIOS_MEMORY_MODELS`` (set by ``serve --models`` or from a store's settings), else the home's."""
    env = os.environ.get("AIOS_MEMORY_MODELS")
    return Path(env).expanduser() if env else home() / "models"


def model_dir(model_name: str) -> Path:
    return models_dir() / model_name


def default_store_path() -> Path:
    return home() / "store"
