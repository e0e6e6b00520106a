"""The Parquet weight-file format shared by every model.

One row per tensor: ``name``, ``dtype``, ``shape``, ``nbytes``, ``sha256`` and ``data`` (the raw
little-endian bytes, zero-padded to a multiple of 64 so every tensor starts aligned). The file's schema
metadata (key ``aios_memory.weights``) holds the format version, the model's config, where the weights
came from, and the sha256 of any side files (tokenizers) written beside it. No pickle, no code: bytes,
shapes and hashes only.

Reading is zero-copy where the layout allows it, which is every file ``write_weights`` writes: one tensor
per row group, one uncompressed PLAIN data page per chunk, so a tensor's bytes are the last bytes of its
column chunk, right after their 4-byte length. ``read_weights`` maps the file (``mmap``, copy-on-write)
and hands out views of the mapped pages, after checking every offset against the footer and the file size
and every length prefix; any other layout (compression, a dictionary page, a rewritten file) falls back to
decoding the pages once into an Arrow buffer. Either way every tensor's sha256 is checked before it is
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

import hashlib
import json
import math
import mmap
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aios_memory.errors import WeightFileError

FORMAT_VERSION = 1
META_KEY = b"aios_memory.weights"
ALIGN = 64

# dtype name -> (numpy dtype or None when numpy has none, itemsize)
DTYPES: dict[str, tuple[Any, int]] = {
    "float32": (np.float32, 4),
    "float16": (np.float16, 2),
    "bfloat16": (None, 2),
    "float64": (np.float64, 8),
    "int64": (np.int64, 8),
    "int32": (np.int32, 4),
    "int16": (np.int16, 2),
    "int8": (np.int8, 1),
    "uint8": (np.uint8, 1),
}

SCHEMA = pa.schema(
    [
        pa.field("name", pa.string(), nullable=False),
        pa.field("dtype", pa.string(), nullable=False),
        pa.field("shape", pa.list_(pa.int64()), nullable=False),
        pa.field("nbytes", pa.int64(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("data", pa.large_binary(), nullable=False),
    ]
)


def _tensor_bytes(value: Any) -> tuple[str, tuple[int, ...], bytes]:
    """(dtype name, shape, raw bytes) of a numpy array or a torch tensor (torch imported only if given one)."""
    if type(value).__module__.startswith("torch"):
        import torch

        t = value.detach().to("cpu").contiguous()
        dtype = str(t.dtype).removeprefix("torch.")
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        return dtype, tuple(t.shape), raw
    arr = np.ascontiguousarray(value).reshape(np.shape(value))  # keeps 0-d arrays 0-d
    return arr.dtype.name, tuple(arr.shape), arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def write_weights(
    path: str | Path,
    tensors: Mapping[str, Any],
    *,
    model: str,
    config: Mapping[str, Any],
    source: Mapping[str, Any] | None = None,
    files: Mapping[str, str] | None = None,
) -> Path:
    """Write tensors (numpy arrays or torch tensors) to a Parquet weight file, atomically."""
    path = Path(path)
    names, dtypes, shapes, nbytes, hashes, blobs = [], [], [], [], [], []
    for name, value in tensors.items():
        dtype, shape, raw = _tensor_bytes(value)
        if dtype not in DTYPES:
            raise WeightFileError(f"tensor {name!r} has unsupported dtype {dtype}")
        names.append(name)
        dtypes.append(dtype)
        shapes.append(list(shape))
        nbytes.append(len(raw))
        hashes.append(hashlib.sha256(raw).hexdigest())
        blobs.append(raw + b"\0" * (-len(raw) % ALIGN))
    meta = {
        "format": FORMAT_VERSION,
        "model": model,
        "config": dict(config),
        "source": dict(source or {}),
        "files": dict(files or {}),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tensors": len(names),
    }
    table = pa.table(
        [names, dtypes, shapes, nbytes, hashes, blobs],
        schema=SCHEMA.with_metadata({META_KEY: json.dumps(meta)}),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(
        table,
        tmp,
        compression="NONE",
        use_dictionary=False,
        write_statistics=["name", "dtype", "nbytes"],
        row_group_size=1,  # one tensor per row group: a reader holds at most one raw chunk beside the decoded data
    )
    tmp.replace(path)
    return path


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    buffer: pa.Buffer  # zero-copy view into the mapped file, or into the decoded Parquet column
    sha256: str
    view: memoryview | None = field(
        default=None, repr=False
    )  # mapped tensors: a writable (copy-on-write) view
    offset: int = -1  # mapped tensors: where the bytes start in the file

    def numpy(self) -> np.ndarray:
        np_dtype = DTYPES[self.dtype][0]
        if np_dtype is None:
            raise WeightFileError(
                f"tensor {self.name!r} is {self.dtype}, which numpy cannot hold; use torch()"
            )
        return np.frombuffer(self.buffer, dtype=np.dtype(np_dtype).newbyteorder("<")).reshape(self.shape)

    def torch(self) -> Any:
        """A torch tensor sharing this tensor's memory. Mapped tensors are copy-on-write pages: writing
        one in place changes this process's copy only. Decoded tensors are read-only by contract."""
        import warnings

        import torch

        dtype = getattr(torch, self.dtype)
        if self.buffer.size == 0:
            return torch.empty(self.shape, dtype=dtype)
        if self.view is not None:
            return torch.from_numpy(np.frombuffer(self.view, dtype=np.uint8)).view(dtype).reshape(self.shape)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "buffer is not writable": we never write to it
            raw = torch.from_numpy(np.frombuffer(self.buffer, dtype=np.uint8))
        return raw.view(dtype).reshape(self.shape)


@dataclass
class WeightFile:
    path: Path
    model: str
    config: dict[str, Any]
    source: dict[str, Any]
    files: dict[str, str]
    tensors: dict[str, Tensor] = field(repr=False)
    nbytes: int = 0
    mapped: bool = False  # True: tensors are views of the mmap'd file; False: of a decoded copy
    # tensors ``read_weights(defer=...)`` has not hashed yet: ``verify_pending`` before their first use
    pending: set[str] = field(default_factory=set, repr=False)

    def mismatches(self, threads: int = 2, names: Iterable[str] | None = None) -> list[str]:
        """Names of the tensors (all, or ``names``) whose bytes do not match their sha256, in file order."""
        chosen = self.tensors.values() if names is None else [self.tensors[n] for n in names]
        # largest first, so one big embedding table does not start last and run alone
        order = sorted(chosen, key=lambda t: -t.buffer.size)
        with ThreadPoolExecutor(max(1, threads)) as pool:  # hashlib releases the GIL on large buffers
            bad = {n for n in pool.map(_verify, order) if n}
        return [n for n in self.tensors if n in bad]

    def verify_pending(self, names: Iterable[str], threads: int = 2) -> None:
        """Hash the deferred tensors among ``names`` now, from the very memory the model reads; raises
        ``WeightFileError`` on a mismatch (they stay pending, so every later call refuses too)."""
        todo = [n for n in names if n in self.pending]
        if todo:
            self._refuse(self.mismatches(threads, todo))
            self.pending.difference_update(todo)

    def verify(self, threads: int = 2) -> None:
        """Check every tensor's sha256; raises ``WeightFileError`` naming the first mismatching tensor."""
        self._refuse(self.mismatches(threads))

    def _refuse(self, bad: list[str]) -> None:
        if bad:
            raise WeightFileError(
                f"{self.path}: sha256 mismatch in tensor {bad[0]!r}"
                + (f" and {len(bad) - 1} more" if len(bad) > 1 else "")
                + "; the file was modified or damaged, reinstall the model"
            )

    def numpy_state_dict(self) -> dict[str, np.ndarray]:
        return {k: t.numpy() for k, t in self.tensors.items()}

    def torch_state_dict(self) -> dict[str, Any]:
        return {k: t.torch() for k, t in self.tensors.items()}

    def check_side_file(self, name: str) -> Path:
        """Path of a side file written beside the weights, after checking its recorded sha256."""
        p = self.path.parent / name
        want = self.files.get(name)
        if want is None:
            raise WeightFileError(f"{self.path}: records no side file named {name!r}")
        if not p.is_file():
            raise WeightFileError(f"{p} is missing (expected beside {self.path.name}); reinstall the model")
        if file_sha256(p) != want:
            raise WeightFileError(
                f"{p} does not match the sha256 recorded in {self.path.name}; reinstall the model"
            )
        return p


def read_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a weight file without reading its tensors."""
    path = Path(path)
    try:
        schema = pq.read_schema(path)
    except FileNotFoundError:
        raise WeightFileError(f"weight file not found: {path}") from None
    except (pa.ArrowException, OSError) as exc:
        raise WeightFileError(f"{path} is not a readable Parquet weight file ({exc})") from exc
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise WeightFileError(f"{path} is a Parquet file but not an aios-memory weight file")
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise WeightFileError(f"{path}: its metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise WeightFileError(f"{path}: its metadata is not a JSON object")
    if meta.get("format") != FORMAT_VERSION:
        raise WeightFileError(
            f"{path} has weight-file format {meta.get('format')}, this build reads {FORMAT_VERSION}"
        )
    return meta


def _verify(t: Tensor) -> str | None:
    return None if hashlib.sha256(memoryview(t.buffer)).hexdigest() == t.sha256 else t.name


def _bad(path: Path, why: str) -> WeightFileError:
    return WeightFileError(f"{path} is truncated or corrupt ({why}); reinstall the model")


def _row_columns(
    path: Path, meta: dict[str, Any], source: Any = None
) -> tuple[pq.ParquetFile, dict[str, list[Any]]]:
    """The open file and its small per-tensor columns (everything but ``data``), each row checked.
    ``source``: the mapped descriptor, so footer, columns and tensors come from one and the same inode."""
    try:
        pf = pq.ParquetFile(source if source is not None else path, memory_map=False, pre_buffer=False)
        small = pf.read(columns=["name", "dtype", "shape", "nbytes", "sha256"], use_threads=False)
    except (pa.ArrowException, OSError) as exc:
        raise _bad(path, str(exc)) from exc
    if small.num_rows != meta.get("tensors") or pf.metadata.num_rows != small.num_rows:
        raise WeightFileError(f"{path} has {small.num_rows} tensors, its metadata says {meta.get('tensors')}")
    cols = {n: small.column(n).to_pylist() for n in small.column_names}
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
    return pf, cols


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


def _map(path: Path) -> tuple[mmap.mmap, os.stat_result, int] | None:
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


_HASH_CHUNK = 1 << 20


def _pread_mismatches(fd: int, tensors: list[Tensor], threads: int) -> set[str]:
    """Names of mapped tensors whose file bytes do not match their sha256. The bytes are read with
    ``pread`` through the descriptor that was mapped, into one reused buffer per thread, so hashing
    does not fault the whole file into the resident set (the map and ``pread`` share the page cache)."""
    local = threading.local()

    def one(t: Tensor) -> str | None:
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = memoryview(bytearray(_HASH_CHUNK))
        h = hashlib.sha256()
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
        return None if h.hexdigest() == t.sha256 else t.name

    order = sorted(tensors, key=lambda t: -t.buffer.size)  # largest first (see ``mismatches``)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        return {n for n in pool.map(one, order) if n}


def _mapped_views(
    mapping: tuple[mmap.mmap, os.stat_result, int], pf: pq.ParquetFile, nbytes: list[int]
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


# --- verified-once cache (opt-in: AIOS_MEMORY_VERIFY=once) -------------------------------------------------
VERIFY_ENV = "AIOS_MEMORY_VERIFY"  # "always" (default): hash every tensor on every load; "once": see below


def _cache_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.verified.json")


def _cache_key(st: os.stat_result, m: mmap.mmap, cols: dict[str, list[Any]]) -> dict[str, Any]:
    """What a verification vouches for: the inode as the kernel describes it (ctime changes on every
    write, truncate, chmod or utime, and cannot be set from user space), the footer bytes, and every
    tensor's name, dtype, shape and recorded sha256."""
    footer_len = int.from_bytes(m[len(m) - 8 : len(m) - 4], "little")
    footer = m[max(0, len(m) - 8 - footer_len) :]
    listing = json.dumps([cols[k] for k in ("name", "dtype", "shape", "nbytes", "sha256")]).encode()
    return {
        "format": FORMAT_VERSION,
        "dev": st.st_dev,
        "ino": st.st_ino,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "footer_sha256": hashlib.sha256(footer).hexdigest(),
        "tensors_sha256": hashlib.sha256(listing).hexdigest(),
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


def read_weights(
    path: str | Path,
    *,
    model: str | None = None,
    verify: bool = True,
    threads: int = 2,
    mmap: bool = True,
    defer: Callable[[str], bool] | None = None,
) -> WeightFile:
    """Read a weight file; checks format, model name, every shape against its byte count and every sha256.

    ``mmap=True`` (default) maps the file and hands out views of its pages when the layout is the one
    ``write_weights`` writes (``WeightFile.mapped`` says whether it was); otherwise, or with
    ``mmap=False``, the pages are decoded once. A sha256 mismatch in the mapped bytes is re-checked on the
    decoded pages before the file is refused, so an unrecognised-but-valid layout can never be refused.

    ``defer``: tensors it names are not hashed here but listed in ``WeightFile.pending``; the caller runs
    ``verify_pending`` on them before their first use (CLIP hashes its text tower on the first text query,
    not when it embeds an image). Every tensor is still checked before it is used.

    ``AIOS_MEMORY_VERIFY=once`` (opt-in; the default ``always`` hashes every tensor on every load) skips
    the hashing when a file beside the weights records a full verification of this very inode: device,
    inode, size, mtime, ctime (which the kernel changes on any write, truncate or utime, and which user
    space cannot set), the footer's sha256 and every tensor's recorded sha256, all read from the mapped
    descriptor. What it gives up: corruption that bypasses the file system (bit rot, writes to the block
    device) after the first load goes unnoticed. What it does not: someone able to write the weights can
    already rewrite their recorded hashes, which are integrity checks, not signatures.
    """
    path = Path(path)
    meta = read_meta(path)
    if model is not None and meta.get("model") != model:
        raise WeightFileError(f"{path} holds model {meta.get('model')!r}, expected {model!r}")
    mapping = _map(path) if mmap else None
    source = None
    try:
        # footer and small columns are read through the mapped descriptor (one and the same inode), not
        # through the map: faulting them in would drag each row group's neighbouring tensor pages along
        source = pa.PythonFile(os.fdopen(os.dup(mapping[2]), "rb"), mode="r") if mapping else None
        return _build_checked(path, meta, mapping, source, verify, threads, defer)
    finally:
        if source is not None:
            source.close()
        if mapping is not None:
            os.close(mapping[2])


def _build_checked(
    path: Path,
    meta: dict[str, Any],
    mapping: tuple[mmap.mmap, os.stat_result, int] | None,
    source: Any,
    verify: bool,
    threads: int,
    defer: Callable[[str], bool] | None,
) -> WeightFile:
    pf, cols = _row_columns(path, meta, source)
    nbytes = cols["nbytes"]
    located = _mapped_views(mapping, pf, nbytes) if mapping else None
    buffers = (
        [pa.py_buffer(v) for _, v in located]
        if located is not None
        else _decoded_buffers(path, pf, nbytes, cols["name"])
    )

    def build(bufs: list[pa.Buffer], at: list[tuple[int, memoryview]] | None) -> WeightFile:
        tensors = {
            name: Tensor(
                name,
                dtype,
                tuple(shape),
                buf,
                sha,
                at[i][1] if at is not None else None,
                at[i][0] if at is not None else -1,
            )
            for i, (name, dtype, shape, sha, buf) in enumerate(
                zip(cols["name"], cols["dtype"], cols["shape"], cols["sha256"], bufs, strict=True)
            )
        }
        return WeightFile(
            path=path,
            model=meta["model"],
            config=meta.get("config", {}),
            source=meta.get("source", {}),
            files=meta.get("files", {}),
            tensors=tensors,
            nbytes=sum(nbytes),
            mapped=at is not None,
        )

    wf = build(buffers, located)
    if len(wf.tensors) != len(nbytes):
        raise WeightFileError(f"{path}: tensor names are not unique")
    if not verify:
        return wf
    once = os.environ.get(VERIFY_ENV, "always") == "once" and wf.mapped and mapping is not None
    key = _cache_key(mapping[1], mapping[0], cols) if once and mapping is not None else None
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
        wf = build(_decoded_buffers(path, pf, nbytes, cols["name"]), None)
        bad = wf.mismatches(threads, now)
    wf._refuse(bad)
    wf.pending = later
    if later:
        return wf  # not all verified: nothing to record
    if key is not None:
        _cache_store(path, key)
    return wf
