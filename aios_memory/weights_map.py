"""Locating a weight file's tensors: its small columns, the mapped layout, or the decoded pages."""

from __future__ import annotations

import math
import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aios_memory.errors import WeightFileError
from aios_memory.weights_format import ALIGN, DTYPES, SMALL_COLUMNS

Mapping_ = tuple[mmap.mmap, os.stat_result, int]  # the map, the fstat of its descriptor, the descriptor


def _bad(path: Path, why: str) -> WeightFileError:
    return WeightFileError(f"{path} is truncated or corrupt ({why}); reinstall the model")


def _row_columns(path: Path, meta: dict[str, Any], pf: pq.ParquetFile) -> dict[str, list[Any]]:
    """The small per-tensor columns (everything but ``data``) of the open file ``pf`` (opened on the mapped
    descriptor, so footer, columns and tensors come from one and the same inode), each row checked; the
    digests are under ``cols["digest"]``."""
    algo = meta["algo"]
    if algo not in pf.schema_arrow.names:
        raise WeightFileError(f"{path}: its metadata says {algo} digests, but it has no {algo} column")
    try:
        small = pf.read(columns=[*SMALL_COLUMNS, algo], use_threads=False)
    except (pa.ArrowException, OSError) as exc:
        raise _bad(path, str(exc)) from exc
    if small.num_rows != meta.get("tensors") or pf.metadata.num_rows != small.num_rows:
        raise WeightFileError(f"{path} has {small.num_rows} tensors, its metadata says {meta.get('tensors')}")
    cols = {n: small.column(n).to_pylist() for n in SMALL_COLUMNS}
    cols["digest"] = small.column(algo).to_pylist()
    for name, dtype, shape, nbytes in zip(
        cols["name"], cols["dtype"], cols["shape"], cols["nbytes"], strict=True
    ):
        if dtype not in DTYPES:
            raise WeightFileError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
        if any(d < 0 for d in shape) or nbytes < 0:
            raise WeightFileError(f"{path}: tensor {name!r} has a negative dimension or size")
        if math.prod(shape) * DTYPES[dtype][1] != nbytes:
            raise WeightFileError(
                f"{path}: tensor {name!r} has {nbytes} bytes, which does not fit shape {tuple(shape)}"
            )
    return cols


def _padded(nbytes: int) -> int:
    return nbytes + (-nbytes % ALIGN)


def data_spans(pf: pq.ParquetFile, nbytes: list[int], file_size: int) -> list[tuple[int, int]] | None:
    """``[(offset, length), ...]`` of each tensor's padded bytes in the file, from the footer alone, or
    None when the layout is not the one ``write_weights`` writes (then the pages must be decoded).

    The layout: row group i holds tensor i alone; its ``data`` chunk is one uncompressed PLAIN page (no
    dictionary, no levels: the column is required and flat) whose last bytes are the value, preceded by
    its 4-byte length. Every span is checked to lie inside the file's data region, between the magic and
    the footer; the length prefixes are checked by the caller against the mapped bytes.
    """
    md = pf.metadata
    if md.num_row_groups != len(nbytes):
        return None
    try:
        col = pf.schema_arrow.get_field_index("data")
    except KeyError:
        return None
    footer_start = file_size - 8 - md.serialized_size  # "...footer | 4-byte footer length | PAR1"
    spans = []
    for i, n in enumerate(nbytes):
        rg = md.row_group(i)
        if rg.num_rows != 1 or col < 0 or col >= rg.num_columns:
            return None
        c = rg.column(col)
        if (
            c.path_in_schema != "data"
            or c.physical_type != "BYTE_ARRAY"
            or c.compression != "UNCOMPRESSED"
            or c.has_dictionary_page
            or c.dictionary_page_offset is not None
            or c.num_values != 1
            or not set(c.encodings) <= {"PLAIN", "RLE", "BIT_PACKED"}
            or c.total_compressed_size != c.total_uncompressed_size
        ):
            return None
        length = _padded(n)
        end = c.data_page_offset + c.total_compressed_size
        start = end - length
        # page header (>= 1 byte) and length prefix (4 bytes) between the page offset and the value
        if not (4 <= c.data_page_offset < start - 4 and end <= footer_start):
            return None
        spans.append((start, length))
    return spans


def _map(path: Path) -> Mapping_ | None:
    """A private map of the whole file, the ``fstat`` of the descriptor it was mapped from, and that
    descriptor (still open: the caller hashes the very file it mapped through it, then closes it).

    Nothing is faulted in: a tensor's pages enter this process when the model first reads them, so a
    model that never touches a table (MiniLM's 30k-row word embeddings beyond a sentence's rows, CLIP's
    text tower while it embeds images) never holds it in its resident set.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_size == 0:
            os.close(fd)
            return None
        m = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)  # private: writes never reach the file
    except (OSError, ValueError):
        os.close(fd)
        return None
    return m, st, fd


def _mapped_views(
    mapping: Mapping_, pf: pq.ParquetFile, nbytes: list[int]
) -> list[tuple[int, memoryview]] | None:
    """(file offset, zero-copy view) of each tensor's bytes in the map, or None (layout not recognised).
    The length prefixes are read with ``pread``, so checking them faults no page of the map in."""
    m, _, fd = mapping
    spans = data_spans(pf, nbytes, len(m))
    if spans is None:
        return None
    view = memoryview(m)  # every slice keeps the map alive as long as a tensor uses it
    out = []
    for (start, length), n in zip(spans, nbytes, strict=True):
        if int.from_bytes(os.pread(fd, 4, start - 4), "little") != length:
            return None  # not the value's length: some other page layout (statistics, levels, ...)
        out.append((start, view[start : start + n]))
    return out


def _decoded_buffers(path: Path, pf: pq.ParquetFile, nbytes: list[int], names: list[str]) -> list[pa.Buffer]:
    """Each tensor's bytes, decoding the ``data`` pages once into an Arrow buffer (any Parquet layout)."""
    try:
        data = pf.read(columns=["data"], use_threads=False).column("data")
    except (pa.ArrowException, OSError) as exc:
        raise _bad(path, str(exc)) from exc
    out: list[pa.Buffer] = []
    for chunk in data.chunks:
        offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int64)[
            chunk.offset : chunk.offset + len(chunk) + 1
        ]
        raw = chunk.buffers()[2]
        for i in range(len(chunk)):
            row = len(out)
            n = nbytes[row]
            if offsets[i + 1] - offsets[i] < n:
                raise WeightFileError(f"{path}: tensor {names[row]!r} stores fewer than its {n} bytes")
            out.append(raw.slice(int(offsets[i]), n) if n else pa.py_buffer(b""))
    if len(out) != len(nbytes):
        raise _bad(path, f"{len(out)} data values for {len(nbytes)} tensors")
    return out
