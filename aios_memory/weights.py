"""The Parquet weight-file format shared by every model.

One row per tensor: ``name``, ``dtype``, ``shape``, ``nbytes``, ``sha256`` and ``data`` (the raw
little-endian bytes, zero-padded to a multiple of 64 so every tensor starts aligned). The file's schema
metadata (key ``aios_memory.weights``) holds the format version, the model's config, where the weights
came from, and the sha256 of any side files (tokenizers) written beside it. No pickle, no code: bytes,
shapes and hashes only.

Reading is one copy: Parquet pages (uncompressed) are decoded once into an Arrow buffer, and every
tensor is a zero-copy view of that buffer. Every tensor's sha256 is checked before it is handed out.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping
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
    buffer: pa.Buffer  # zero-copy view into the decoded Parquet column
    sha256: str

    def numpy(self) -> np.ndarray:
        np_dtype = DTYPES[self.dtype][0]
        if np_dtype is None:
            raise WeightFileError(
                f"tensor {self.name!r} is {self.dtype}, which numpy cannot hold; use torch()"
            )
        return np.frombuffer(self.buffer, dtype=np.dtype(np_dtype).newbyteorder("<")).reshape(self.shape)

    def torch(self) -> Any:
        """A torch tensor sharing this tensor's memory (read-only by contract: do not modify in place)."""
        import warnings

        import torch

        dtype = getattr(torch, self.dtype)
        if self.buffer.size == 0:
            return torch.empty(self.shape, dtype=dtype)
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

    def verify(self, threads: int = 2) -> None:
        """Check every tensor's sha256; raises ``WeightFileError`` naming the first mismatching tensor."""
        with ThreadPoolExecutor(max(1, threads)) as pool:  # hashlib releases the GIL on large buffers
            bad = [n for n in pool.map(_verify, self.tensors.values()) if n]
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


def read_weights(
    path: str | Path, *, model: str | None = None, verify: bool = True, threads: int = 2
) -> WeightFile:
    """Read a weight file; checks format, model name, every shape against its byte count and every sha256."""
    path = Path(path)
    meta = read_meta(path)
    if model is not None and meta.get("model") != model:
        raise WeightFileError(f"{path} holds model {meta.get('model')!r}, expected {model!r}")
    try:
        table = pq.read_table(path, memory_map=False, pre_buffer=False, use_threads=False)
    except (pa.ArrowException, OSError) as exc:
        raise WeightFileError(f"{path} is truncated or corrupt ({exc}); reinstall the model") from exc
    if table.num_rows != meta.get("tensors"):
        raise WeightFileError(f"{path} has {table.num_rows} tensors, its metadata says {meta.get('tensors')}")
    cols = {n: table.column(n).to_pylist() for n in ("name", "dtype", "shape", "nbytes", "sha256")}
    tensors: dict[str, Tensor] = {}
    row = 0
    for chunk in table.column("data").chunks:
        offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int64)[
            chunk.offset : chunk.offset + len(chunk) + 1
        ]
        data = chunk.buffers()[2]
        for i in range(len(chunk)):
            name, dtype, shape = cols["name"][row], cols["dtype"][row], tuple(cols["shape"][row])
            nbytes = cols["nbytes"][row]
            if dtype not in DTYPES:
                raise WeightFileError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
            if any(d < 0 for d in shape) or nbytes < 0:
                raise WeightFileError(f"{path}: tensor {name!r} has a negative dimension or size")
            if math.prod(shape) * DTYPES[dtype][1] != nbytes or offsets[i + 1] - offsets[i] < nbytes:
                raise WeightFileError(
                    f"{path}: tensor {name!r} has {nbytes} bytes, which does not fit shape {shape}"
                )
            buf = data.slice(int(offsets[i]), nbytes) if nbytes else pa.py_buffer(b"")
            tensors[name] = Tensor(name, dtype, shape, buf, cols["sha256"][row])
            row += 1
    wf = WeightFile(
        path=path,
        model=meta["model"],
        config=meta.get("config", {}),
        source=meta.get("source", {}),
        files=meta.get("files", {}),
        tensors=tensors,
        nbytes=sum(t.buffer.size for t in tensors.values()),
    )
    if verify:
        wf.verify(threads)
    return wf
