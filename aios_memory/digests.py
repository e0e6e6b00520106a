"""The hash algorithms weight files name, in one place.

``FORMATS`` maps each algorithm to the weight-file format that records it: format 1 files carry a
``sha256`` column, format 2 files (what ``write_weights`` writes) a ``blake3`` column. Both are
cryptographic: BLAKE3 is the faster of the two (several GB/s on one core, against sha256's ~2 GB/s with
SHA extensions), so a verified load costs less.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Protocol

import blake3

from aios_memory.errors import WeightFileError

FORMATS: dict[str, int] = {"sha256": 1, "blake3": 2}
ALGOS: dict[int, str] = {v: k for k, v in FORMATS.items()}
DEFAULT = "blake3"

# blake3 hashes one buffer on several threads when told to; measured on a 2-core machine, that pays from
# about 32 MiB for a buffer hashed alone (32 MiB: 2.3 ms vs 4.2 ms on one thread; 16 MiB and below: no
# gain, 64 KiB buffers 2.7x slower). A load already spreads its tensors over two threads: there blake3's
# own threads bought nothing measurable (CLIP's full load 103 vs 98 ms, 142 vs 145 ms), so it asks for one.
THREADED_MIN = 32 << 20


class Hasher(Protocol):
    def update(self, data: Any, /) -> Any: ...

    def hexdigest(self) -> str: ...


def check(algo: Any) -> str:
    """``algo`` if this build knows it; otherwise a ``WeightFileError``."""
    if algo not in FORMATS:
        raise WeightFileError(f"unknown digest algorithm {algo!r}; this build knows {sorted(FORMATS)}")
    return algo


def new(algo: str, size_hint: int = 0) -> Hasher:
    """An incremental hasher (``update`` / ``hexdigest``); ``size_hint``: bytes one ``update`` will get."""
    if check(algo) == "blake3":
        if size_hint >= THREADED_MIN:
            return blake3.blake3(max_threads=blake3.blake3.AUTO)
        return blake3.blake3()
    return hashlib.sha256()


def digest(algo: str, data: Any, *, threaded: bool = True) -> str:
    """Hex digest of a buffer (bytes, memoryview, Arrow buffer through ``memoryview``) under ``algo``;
    ``threaded=False`` when the caller already hashes several buffers at once on its own threads."""
    view = memoryview(data)
    h = new(algo, view.nbytes if threaded else 0)
    h.update(view)
    return h.hexdigest()


def file_digest(path: str | Path, algo: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a whole file, read in ``chunk``-byte pieces."""
    h = new(algo, chunk)
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(chunk), b""):
            h.update(piece)
    return h.hexdigest()
