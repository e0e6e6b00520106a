"""Writing weight files: one row per tensor, one tensor per row group, uncompressed PLAIN pages."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aios_memory import digests
from aios_memory.errors import WeightFileError
from aios_memory.weights_format import ALIGN, DTYPES, META_KEY, schema


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
    algo: str = digests.DEFAULT,
) -> Path:
    """Write tensors (numpy arrays or torch tensors) to a Parquet weight file, atomically.

    ``algo``: the tensors' digest, ``"blake3"`` (format 2, the default) or ``"sha256"`` (format 1, what
    earlier builds wrote and read)."""
    path = Path(path)
    fmt = digests.FORMATS[digests.check(algo)]
    names, dtypes, shapes, nbytes, hashes, blobs = [], [], [], [], [], []
    for name, value in tensors.items():
        dtype, shape, raw = _tensor_bytes(value)
        if dtype not in DTYPES:
            raise WeightFileError(f"tensor {name!r} has unsupported dtype {dtype}")
        names.append(name)
        dtypes.append(dtype)
        shapes.append(list(shape))
        nbytes.append(len(raw))
        hashes.append(digests.digest(algo, raw))
        blobs.append(raw + b"\0" * (-len(raw) % ALIGN))
    meta = {
        "format": fmt,
        "algo": algo,
        "model": model,
        "config": dict(config),
        "source": dict(source or {}),
        "files": dict(files or {}),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tensors": len(names),
    }
    if fmt == 1:
        del meta["algo"]  # byte for byte what earlier builds wrote: format 1 implies sha256
    table = pa.table(
        [names, dtypes, shapes, nbytes, hashes, blobs],
        schema=schema(algo).with_metadata({META_KEY: json.dumps(meta)}),
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
