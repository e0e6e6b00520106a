"""Checking a mapped weight file's tensors against their recorded digests, and the opt-in verified-once
cache (``AIOS_MEMORY_VERIFY=once``)."""

from __future__ import annotations

import json
import mmap
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aios_memory import digests
from aios_memory.weights_format import Tensor

_HASH_CHUNK = 1 << 20


def _pread_mismatches(fd: int, tensors: list[Tensor], threads: int) -> set[str]:
    """Names of mapped tensors whose file bytes do not match their digest. The bytes are read with
    ``pread`` through the descriptor that was mapped, into one reused buffer per thread, so hashing
    does not fault the whole file into the resident set (the map and ``pread`` share the page cache)."""
    local = threading.local()

    def one(t: Tensor) -> str | None:
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = memoryview(bytearray(_HASH_CHUNK))
        h = digests.new(t.algo, _HASH_CHUNK)
        offset, left = t.offset, t.buffer.size
        while left:
            if hasattr(os, "preadv"):  # into the reused buffer
                n = os.preadv(fd, [buf[: min(_HASH_CHUNK, left)]], offset)
                got = buf[:n]
            else:  # platforms without preadv: one fresh bytes object per chunk
                got = memoryview(os.pread(fd, min(_HASH_CHUNK, left), offset))
                n = len(got)
            if n <= 0:
                return t.name  # the file shrank under us
            h.update(got)
            offset, left = offset + n, left - n
        return None if h.hexdigest() == t.digest else t.name

    order = sorted(tensors, key=lambda t: -t.buffer.size)  # largest first (see ``WeightFile.mismatches``)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        return {n for n in pool.map(one, order) if n}


# --- verified-once cache (opt-in: AIOS_MEMORY_VERIFY=once) -------------------------------------------------
VERIFY_ENV = (
    "AIOS_MEMORY_VERIFY"  # "always" (default): hash every tensor on every load; "once": see read_weights
)


def _cache_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.verified.json")


def _cache_key(
    st: os.stat_result, m: mmap.mmap, cols: dict[str, list[Any]], meta: dict[str, Any]
) -> dict[str, Any]:
    """What a verification vouches for: the inode as the kernel describes it (ctime changes on every
    write, truncate, chmod or utime, and cannot be set from user space), the footer bytes, the digest
    algorithm, and every tensor's name, dtype, shape and recorded digest."""
    footer_len = int.from_bytes(m[len(m) - 8 : len(m) - 4], "little")
    footer = m[max(0, len(m) - 8 - footer_len) :]
    listing = json.dumps([cols[k] for k in ("name", "dtype", "shape", "nbytes", "digest")]).encode()
    return {
        "format": meta["format"],
        "algo": meta["algo"],
        "dev": st.st_dev,
        "ino": st.st_ino,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "footer_sha256": digests.digest("sha256", footer),
        "tensors_sha256": digests.digest("sha256", listing),
    }


def _cache_hit(path: Path, key: dict[str, Any]) -> bool:
    try:
        return json.loads(_cache_path(path).read_text()) == key
    except (OSError, ValueError):
        return False


def _cache_store(path: Path, key: dict[str, Any]) -> None:
    """Record a successful full verification, atomically; best effort (a read-only folder: no cache)."""
    tmp = path.with_name(f".{path.name}.verified.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(key))
        tmp.replace(_cache_path(path))
    except OSError:
        tmp.unlink(missing_ok=True)
