"""The per-process cache of open fragments, memory-mapped sidecars and index files, and their checks.

Files are immutable, so an entry never goes stale; what matters in a process that lives for weeks is
that the cache is bounded and lets go of files it no longer needs. :class:`_Cache` counts descriptors
and maps, mapped bytes and decoded bytes, evicts least recently used first, and drops the entries of
files a newer version no longer names (:meth:`_Cache.retain`) or that a cleanup deleted
(:meth:`_Cache.forget`). :func:`trusted` checks a mapped derived file against the size and sha256 its
manifest recorded; :data:`DAMAGED` remembers, per process, which were refused and why.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

HANDLE_KINDS = frozenset({"vec", "time", "rows", "hnsw"})  # entries that hold a descriptor or a map


def _default_max_handles() -> int:
    """A quarter of the process's descriptor limit, at most 512: the rest stays for everything else."""
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            soft = 4096
    except (ImportError, OSError, ValueError):
        soft = 1024
    return max(8, min(512, soft // 4))


class _Cache:
    """Per process, keyed by (absolute path, kind): files are immutable, so an entry never goes stale.

    Bounded three ways, least recently used first out: entries that hold a descriptor or a map
    (``max_handles``), bytes mapped (``max_mapped``) and bytes decoded into memory (``max_decoded``).
    Entries of files that a newer version no longer names are dropped by :meth:`retain`, and those of
    deleted files by :meth:`forget`, so a long-running process neither runs out of descriptors nor
    keeps deleted files allocated. An evicted map closes once the last array over it is gone.
    """

    def __init__(
        self,
        max_entries: int = 8192,
        max_handles: int | None = None,
        max_mapped: int = 16 << 30,
        max_decoded: int = 1 << 30,
    ) -> None:
        self._items: OrderedDict[tuple[str, str], tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.max_entries = max_entries
        self.max_handles = max_handles if max_handles is not None else _default_max_handles()
        self.max_mapped = max_mapped
        self.max_decoded = max_decoded

    @staticmethod
    def _is_handle(key: tuple[str, str]) -> bool:
        return key[1] in HANDLE_KINDS

    def get(self, key: tuple[str, str], make: Callable[[], Any], nbytes: int = 0) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key][0]
        value = make()
        with self._lock:
            self._items[key] = (value, int(nbytes))
            self._evict()
        return value

    def _evict(self) -> None:
        """Least recently used first, within the budget that is exceeded: too many descriptors or mapped
        bytes evict handle entries, too many decoded bytes decoded ones; cheap entries (a checked
        file's verdict) go only when the cache holds more than ``max_entries`` in all."""
        handles = [k for k in self._items if self._is_handle(k)]
        mapped = sum(self._items[k][1] for k in handles)
        decoded_keys = [k for k in self._items if not self._is_handle(k) and self._items[k][1]]
        decoded = sum(self._items[k][1] for k in decoded_keys)
        newest = next(reversed(self._items))  # the entry just made is in use: never evicted here
        n = len(handles)
        for key in handles:
            if n <= self.max_handles and mapped <= self.max_mapped:
                break
            if key != newest:
                mapped -= self._items.pop(key)[1]
                n -= 1
        for key in decoded_keys:
            if decoded <= self.max_decoded:
                break
            if key != newest:
                decoded -= self._items.pop(key)[1]
        for key in list(self._items):
            if len(self._items) <= self.max_entries:
                break
            if key != newest:
                del self._items[key]

    def peek(self, key: tuple[str, str]) -> Any:
        """The value of ``key`` if cached (not made, not moved in the LRU order), else ``None``."""
        with self._lock:
            got = self._items.get(key)
        return None if got is None else got[0]

    def stats(self) -> dict[str, int]:
        with self._lock:
            keys = list(self._items)
            return {
                "entries": len(keys),
                "handles": sum(1 for k in keys if self._is_handle(k)),
                "mapped_bytes": sum(n for k, (_v, n) in self._items.items() if self._is_handle(k)),
                "decoded_bytes": sum(n for k, (_v, n) in self._items.items() if not self._is_handle(k)),
            }

    def forget(self, paths: Any) -> None:
        """Drop every entry of these absolute paths (deleted files)."""
        gone = set(paths)
        if gone:
            with self._lock:
                for key in [k for k in self._items if k[0] in gone]:
                    del self._items[key]

    def retain(self, root: str, live: set[str]) -> None:
        """Drop the entries of files under ``root`` that are not in ``live`` (absolute paths of the
        newest version's files): superseded fragments, sidecars and index files."""
        prefix = root.rstrip("/") + "/"
        with self._lock:
            for key in [k for k in self._items if k[0].startswith(prefix) and k[0] not in live]:
                del self._items[key]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


CACHE = _Cache()
DAMAGED: dict[str, str] = {}  # absolute path of a derived file -> why it was not trusted (this process)


def map_file(path: str) -> np.ndarray:
    """The file's bytes, memory-mapped (an empty file: an empty array, which no size check accepts)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return np.zeros(0, np.uint8)
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if hasattr(mm, "madvise") and hasattr(mmap, "MADV_WILLNEED"):
        mm.madvise(mmap.MADV_WILLNEED)
    return np.frombuffer(mm, dtype=np.uint8)


def trusted(path: str, raw: np.ndarray, size: int, digest: str | None) -> bool:
    """Whether a mapped sidecar has the size its rows imply and the sha256 its manifest recorded
    (checked once per process; fragments from before checksums are checked by size only)."""
    if raw.size != size:
        DAMAGED[path] = f"holds {raw.size} bytes, expected {size}"
        return False
    if digest is not None and CACHE.peek((path, "ok")) != digest:  # hashed once, even if re-mapped
        if hashlib.sha256(raw).hexdigest() != digest:
            DAMAGED[path] = "its sha256 differs from the one its manifest recorded"
            return False
        CACHE.get((path, "ok"), lambda: digest)  # a cheap entry: the verdict outlives the map
    DAMAGED.pop(path, None)
    return True
