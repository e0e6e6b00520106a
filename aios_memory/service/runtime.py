"""Where a store's daemon listens, and the lock that makes it the only one: light imports only (the
``serve`` proxy uses this module and must start in well under a second).

The socket lives in a runtime directory private to the user (``$AIOS_MEMORY_RUNTIME_DIR``, else
``$XDG_RUNTIME_DIR/aios-memory``, else ``/tmp/aios-memory-<uid>``; mode 0700, refused when another user
owns it or others can enter it), named by a hash of the store's real path: one daemon per store, and a
short path (a Unix socket path is limited to 107 bytes). The socket itself is created 0600.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import stat
import sys
from pathlib import Path

from aios_memory.errors import AiosMemoryError

ENV_DIR = "AIOS_MEMORY_RUNTIME_DIR"


class RuntimeDirError(AiosMemoryError, OSError):
    """The runtime directory is not private to this user (the CLI reports it in one line)."""


def runtime_dir() -> Path:
    """The private runtime directory (created 0700 when missing)."""
    if os.environ.get(ENV_DIR):
        d = Path(os.environ[ENV_DIR])
    elif os.environ.get("XDG_RUNTIME_DIR"):
        d = Path(os.environ["XDG_RUNTIME_DIR"]) / "aios-memory"
    else:
        d = Path("/tmp") / f"aios-memory-{os.getuid()}"  # noqa: S108 - checked private below
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise RuntimeDirError(_refusal(d, st))
    return d


def _refusal(d: Path, st: os.stat_result) -> str:
    """Why ``d`` is refused, and the one fix that applies."""
    elsewhere = (
        f"point ${ENV_DIR} elsewhere" if os.environ.get(ENV_DIR) else f"set ${ENV_DIR} to a private directory"
    )
    if not stat.S_ISDIR(st.st_mode):
        return f"runtime directory {d} is not a directory (a symlink or file); remove it, or {elsewhere}"
    if st.st_uid != os.getuid():
        return (
            f"runtime directory {d} belongs to another user (uid {st.st_uid}, mode 0{st.st_mode & 0o777:o}); "
            f"{elsewhere}"
        )
    return (
        f"runtime directory {d} has mode 0{st.st_mode & 0o777:o} but must be private to you (mode 0700): "
        f"run `chmod 700 {shlex.quote(str(d))}`, or {elsewhere}"
    )


def store_key(store: str | Path) -> str:
    return hashlib.sha256(os.path.realpath(store).encode("utf-8", "surrogateescape")).hexdigest()[:20]


def socket_path(store: str | Path) -> Path:
    return runtime_dir() / f"{store_key(store)}.sock"


def lock_path(store: str | Path) -> Path:
    """Held (flock) by the daemon serving the store for as long as it runs."""
    return runtime_dir() / f"{store_key(store)}.lock"


def log_path(store: str | Path) -> Path:
    """Where an auto-started daemon writes its log."""
    return runtime_dir() / f"{store_key(store)}.log"


def daemon_command(store: str | Path, *options: str) -> list[str]:
    """The command that starts a daemon for ``store`` with this interpreter."""
    return [sys.executable, "-m", "aios_memory", "--store", os.path.realpath(store), "daemon", *options]
