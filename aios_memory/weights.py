"""The Parquet weight-file format shared by every model.

One row per tensor: ``name``, ``dtype``, ``shape``, ``nbytes``, its digest and ``data`` (the raw
little-endian bytes, zero-padded to a multiple of 64 so every tensor starts aligned). The digest column
is ``blake3`` in format 2 (what ``write_weights`` writes) and ``sha256`` in format 1 (files installed by
earlier builds, still read and verified as before). The file's schema metadata (key
``aios_memory.weights``) holds the format version and digest algorithm, the model's config, where the
weights came from, and the sha256 of any side files (tokenizers) written beside it. No pickle, no code:
bytes, shapes and hashes only.

The pieces: ``weights_format`` (schema, metadata, ``Tensor``, ``WeightFile``), ``weights_write``,
``weights_map`` (the columns, the mapped layout, the decoded fallback), ``weights_verify`` (hashing
through the descriptor, the verified-once cache) and ``digests`` (the algorithms). This module reads.

Reading is zero-copy where the layout allows it, which is every file ``write_weights`` writes: one tensor
per row group, one uncompressed PLAIN data page per chunk, so a tensor's bytes are the last bytes of its
column chunk, right after their 4-byte length. ``read_weights`` maps the file (``mmap``, copy-on-write)
and hands out views of the mapped pages, after checking every offset against the footer and the file size
and every length prefix; any other layout (compression, a dictionary page, a rewritten file) falls back to
decoding the pages once into an Arrow buffer. Either way every tensor's digest is checked before it is
handed out: mapped tensors are hashed with ``pread`` through the descriptor that was mapped (the same
page-cache pages the map reads, without faulting them all into the process), decoded ones in memory.
Pages are faulted in lazily, as the model reads them, so a table a forward pass never touches costs no
resident memory.

Why copy-on-write (``ACCESS_COPY``) and not a read-only map: the tensors are writable memory, so torch
takes them without its "non-writable buffer" warning, and a model that wrote into a weight in place would
get a private copy of that page, never touching the file or another process's view. Pages nobody writes
stay shared with the page cache, so a loaded model costs no anonymous memory. The map outlives the file
name: ``write_weights`` replaces files by rename, so a reinstall never changes the pages a running
process maps. Truncating or rewriting a weight file in place under a running process (which nothing here
does) would show through the map, or fault with SIGBUS: as with any mapped file, don't.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from aios_memory.errors import WeightFileError
from aios_memory.weights_format import (
    ALIGN,
    DTYPES,
    FORMAT_VERSION,
    META_KEY,
    SCHEMA,
    Tensor,
    WeightFile,
    file_sha256,
    meta_of,
    open_parquet,
    read_meta,
    schema,
)
from aios_memory.weights_map import Mapping_, _decoded_buffers, _map, _mapped_views, _row_columns, data_spans
from aios_memory.weights_verify import VERIFY_ENV, _cache_hit, _cache_key, _cache_store, _pread_mismatches
from aios_memory.weights_write import write_weights

__all__ = [
    "ALIGN",
    "DTYPES",
    "FORMAT_VERSION",
    "META_KEY",
    "SCHEMA",
    "VERIFY_ENV",
    "Tensor",
    "WeightFile",
    "data_spans",
    "file_sha256",
    "read_meta",
    "read_weights",
    "schema",
    "write_weights",
]


def read_weights(
    path: str | Path,
    *,
    model: str | None = None,
    verify: bool = True,
    threads: int = 2,
    mmap: bool = True,
    defer: Callable[[str], bool] | None = None,
) -> WeightFile:
    """Read a weight file; checks format, model name, every shape against its byte count and every digest
    (blake3 in format 2, sha256 in format 1).

    ``mmap=True`` (default) maps the file and hands out views of its pages when the layout is the one
    ``write_weights`` writes (``WeightFile.mapped`` says whether it was); otherwise, or with
    ``mmap=False``, the pages are decoded once. A digest mismatch in the mapped bytes is re-checked on the
    decoded pages before the file is refused, so an unrecognised-but-valid layout can never be refused.

    ``defer``: tensors it names are not hashed here but listed in ``WeightFile.pending``; the caller runs
    ``verify_pending`` on them before their first use (CLIP hashes its text tower on the first text query,
    not when it embeds an image). Every tensor is still checked before it is used.

    ``AIOS_MEMORY_VERIFY=once`` (opt-in; the default ``always`` hashes every tensor on every load) skips
    the hashing when a file beside the weights records a full verification of this very inode: device,
    inode, size, mtime, ctime (which the kernel changes on any write, truncate or utime, and which user
    space cannot set), the footer's sha256, the digest algorithm and every tensor's recorded digest, all
    read from the mapped descriptor. What it gives up: corruption that bypasses the file system (bit rot,
    writes to the block device) after the first load goes unnoticed. What it does not: someone able to
    write the weights can already rewrite their recorded hashes, which are integrity checks, not signatures.
    """
    path = Path(path)
    mapping = _map(path) if mmap else None
    source = None
    try:
        # footer, metadata and small columns are read through the mapped descriptor (one and the same
        # inode), not through the map: faulting them in would drag each row group's neighbouring tensor
        # pages along
        source = _descriptor_file(mapping[2]) if mapping else None
        pf = open_parquet(path, source)
        meta = meta_of(path, pf.schema_arrow)
        if model is not None and meta.get("model") != model:
            raise WeightFileError(f"{path} holds model {meta.get('model')!r}, expected {model!r}")
        return _build_checked(path, meta, pf, mapping, verify, threads, defer)
    finally:
        if source is not None:
            source.close()
        if mapping is not None:
            os.close(mapping[2])


def _descriptor_file(fd: int) -> Any:
    """An Arrow file reading the open file ``fd`` refers to. On Linux ``/proc/self/fd/<fd>`` reopens that
    very inode (whatever its name points to now) as a native file: the footer and the ~2,000 small column
    chunks of a CLIP file are then read without a Python call each (5.9 vs 7.8 ms). Elsewhere: the
    descriptor wrapped in a Python file object."""
    proc = f"/proc/self/fd/{fd}"
    if os.path.exists(proc):
        try:
            return pa.OSFile(proc)
        except (OSError, pa.ArrowException):
            pass
    return pa.PythonFile(os.fdopen(os.dup(fd), "rb"), mode="r")


def _build_checked(
    path: Path,
    meta: dict[str, Any],
    pf: pq.ParquetFile,
    mapping: Mapping_ | None,
    verify: bool,
    threads: int,
    defer: Callable[[str], bool] | None,
) -> WeightFile:
    cols = _row_columns(path, meta, pf)
    nbytes = cols["nbytes"]
    located = _mapped_views(mapping, pf, nbytes) if mapping else None
    buffers = (
        [pa.py_buffer(v) for _, v in located]
        if located is not None
        else _decoded_buffers(path, pf, nbytes, cols["name"])
    )
    wf = _build(path, meta, cols, buffers, located)
    if len(wf.tensors) != len(nbytes):
        raise WeightFileError(f"{path}: tensor names are not unique")
    if not verify:
        return wf
    once = os.environ.get(VERIFY_ENV, "always") == "once" and wf.mapped and mapping is not None
    key = _cache_key(mapping[1], mapping[0], cols, meta) if once and mapping is not None else None
    if key is not None and _cache_hit(path, key):
        return wf  # this very inode, unchanged since, passed a full verification
    # with the verified-once cache on, hash everything now so the verification can be recorded
    later = {n for n in wf.tensors if defer(n)} if defer is not None and key is None else set()
    now = [n for n in wf.tensors if n not in later]
    if wf.mapped and mapping is not None:
        bad_set = _pread_mismatches(mapping[2], [wf.tensors[n] for n in now], threads)
        bad = [n for n in now if n in bad_set]
    else:
        bad = wf.mismatches(threads, now)
    if bad and wf.mapped:  # decide on the decoded pages, whatever the layout
        wf = _build(path, meta, cols, _decoded_buffers(path, pf, nbytes, cols["name"]), None)
        bad = wf.mismatches(threads, now)
    wf.refuse(bad)
    wf.pending = later
    if later:
        return wf  # not all verified: nothing to record
    if key is not None:
        _cache_store(path, key)
    return wf


def _build(
    path: Path,
    meta: dict[str, Any],
    cols: dict[str, list[Any]],
    bufs: list[pa.Buffer],
    at: list[tuple[int, memoryview]] | None,
) -> WeightFile:
    """The ``WeightFile`` over ``bufs``: views of the map (``at``: offsets and writable views) or decoded."""
    algo = meta["algo"]
    tensors = {
        name: Tensor(
            name,
            dtype,
            tuple(shape),
            buf,
            digest,
            algo,
            at[i][1] if at is not None else None,
            at[i][0] if at is not None else -1,
        )
        for i, (name, dtype, shape, digest, buf) in enumerate(
            zip(cols["name"], cols["dtype"], cols["shape"], cols["digest"], bufs, strict=True)
        )
    }
    return WeightFile(
        path=path,
        model=meta["model"],
        config=meta.get("config", {}),
        source=meta.get("source", {}),
        files=meta.get("files", {}),
        tensors=tensors,
        nbytes=sum(cols["nbytes"]),
        mapped=at is not None,
        algo=algo,
        format=meta["format"],
    )
