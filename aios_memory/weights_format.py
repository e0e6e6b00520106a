"""What a weight file is: its constants, schema and metadata, and the loaded ``Tensor`` / ``WeightFile``.

Format 2 (what ``write_weights`` writes) records each tensor's BLAKE3 in a ``blake3`` column; format 1
(files installed by earlier builds) its sha256 in a ``sha256`` column. The metadata names the format and,
from format 2 on, the algorithm (``"algo"``); ``read_meta`` refuses a format or an algorithm this build
does not know. Side files (tokenizers) and the converted source keep their sha256 in both formats.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aios_memory import digests
from aios_memory.errors import WeightFileError

FORMAT_VERSION = digests.FORMATS[digests.DEFAULT]  # what write_weights writes; every FORMATS value reads
META_KEY = b"aios_memory.weights"
ALIGN = 64
SMALL_COLUMNS = ("name", "dtype", "shape", "nbytes")  # then the digest column, named after its algorithm

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


def schema(algo: str = digests.DEFAULT) -> pa.Schema:
    """The columns of a weight file whose digests are ``algo`` (the digest column is named after it)."""
    return pa.schema(
        [
            pa.field("name", pa.string(), nullable=False),
            pa.field("dtype", pa.string(), nullable=False),
            pa.field("shape", pa.list_(pa.int64()), nullable=False),
            pa.field("nbytes", pa.int64(), nullable=False),
            pa.field(digests.check(algo), pa.string(), nullable=False),
            pa.field("data", pa.large_binary(), nullable=False),
        ]
    )


SCHEMA = schema()


def file_sha256(path: str | Path) -> str:
    """sha256 of a whole file: side files and converted sources, in every format."""
    return digests.file_digest(path, "sha256")


def meta_algo(path: Path, meta: dict[str, Any]) -> str:
    """The digest algorithm of a file's tensors, from its (already format-checked) metadata."""
    fmt = meta.get("format")
    algo = meta.get("algo", digests.ALGOS.get(fmt) if fmt == 1 else None)
    if algo not in digests.FORMATS:
        raise WeightFileError(
            f"{path}: unknown digest algorithm {algo!r}; this build knows {sorted(digests.FORMATS)}"
        )
    if digests.FORMATS[algo] != fmt:
        raise WeightFileError(f"{path}: weight-file format {fmt} does not record {algo} digests")
    return algo


def open_parquet(path: Path, source: Any = None) -> pq.ParquetFile:
    """The Parquet file at ``path`` (or ``source``, an open file of it), or a ``WeightFileError``."""
    try:
        return pq.ParquetFile(source if source is not None else path, memory_map=False, pre_buffer=False)
    except FileNotFoundError:
        raise WeightFileError(f"weight file not found: {path}") from None
    except (pa.ArrowException, OSError) as exc:
        raise WeightFileError(f"{path} is not a readable Parquet weight file ({exc})") from exc


def meta_of(path: Path, sch: pa.Schema) -> dict[str, Any]:
    """A weight file's metadata from its schema, format and algorithm checked; ``meta["algo"]`` always set."""
    raw = (sch.metadata or {}).get(META_KEY)
    if raw is None:
        raise WeightFileError(f"{path} is a Parquet file but not an aios-memory weight file")
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise WeightFileError(f"{path}: its metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise WeightFileError(f"{path}: its metadata is not a JSON object")
    known = sorted(digests.ALGOS)
    if meta.get("format") not in known or isinstance(meta.get("format"), bool):
        raise WeightFileError(f"{path} has weight-file format {meta.get('format')}, this build reads {known}")
    meta["algo"] = meta_algo(path, meta)
    return meta


def read_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a weight file without reading its tensors; ``meta["algo"]`` always set."""
    path = Path(path)
    return meta_of(path, open_parquet(path).schema_arrow)


@dataclass
class Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    buffer: pa.Buffer  # zero-copy view into the mapped file, or into the decoded Parquet column
    digest: str  # hex digest of the tensor's bytes (unpadded) under ``algo``, as the file records it
    algo: str  # "blake3" (format 2) or "sha256" (format 1)
    view: memoryview | None = field(
        default=None, repr=False
    )  # mapped tensors: a writable (copy-on-write) view
    offset: int = -1  # mapped tensors: where the bytes start in the file

    def matches(self) -> bool:
        """Whether the bytes in memory hash to the recorded digest (on this thread alone: loads spread
        their tensors over threads of their own)."""
        return digests.digest(self.algo, self.buffer, threaded=False) == self.digest

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
    algo: str = digests.DEFAULT  # the tensors' digest algorithm
    format: int = FORMAT_VERSION

    def mismatches(self, threads: int = 2, names: Iterable[str] | None = None) -> list[str]:
        """Names of the tensors (all, or ``names``) whose bytes do not match their digest, in file order."""
        chosen = self.tensors.values() if names is None else [self.tensors[n] for n in names]
        # largest first, so one big embedding table does not start last and run alone
        order = sorted(chosen, key=lambda t: -t.buffer.size)
        with ThreadPoolExecutor(max(1, threads)) as pool:  # both hashes release the GIL on large buffers
            bad = {t.name for t, ok in zip(order, pool.map(Tensor.matches, order), strict=True) if not ok}
        return [n for n in self.tensors if n in bad]

    def verify_pending(self, names: Iterable[str], threads: int = 2) -> None:
        """Hash the deferred tensors among ``names`` now, from the very memory the model reads; raises
        ``WeightFileError`` on a mismatch (they stay pending, so every later call refuses too)."""
        todo = [n for n in names if n in self.pending]
        if todo:
            self.refuse(self.mismatches(threads, todo))
            self.pending.difference_update(todo)

    def verify(self, threads: int = 2) -> None:
        """Check every tensor's digest; raises ``WeightFileError`` naming the first mismatching tensor."""
        self.refuse(self.mismatches(threads))

    def refuse(self, bad: list[str]) -> None:
        """Raise ``WeightFileError`` ("<algo> mismatch in tensor ...") when ``bad`` names any tensor."""
        if bad:
            raise WeightFileError(
                f"{self.path}: {self.algo} mismatch in tensor {bad[0]!r}"
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
