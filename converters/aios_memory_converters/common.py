"""Helpers shared by the converters: reading checkpoint files without pickle, checking names and shapes."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from aios_memory.errors import WeightFileError
from aios_memory.weights import file_sha256


def load_hf_state(folder: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Tensors of a Hugging Face folder (``model.safetensors``, else ``pytorch_model.bin`` read with
    ``weights_only=True``) and a description of the file they came from."""
    st = folder / "model.safetensors"
    if st.is_file():
        from safetensors.numpy import load_file

        return dict(load_file(str(st))), {"file": st.name, "format": "safetensors", "sha256": file_sha256(st)}
    pt = folder / "pytorch_model.bin"
    if pt.is_file():
        import torch

        state = torch.load(pt, map_location="cpu", weights_only=True)  # no pickle code execution
        return dict(state), {"file": pt.name, "format": "pytorch", "sha256": file_sha256(pt)}
    raise WeightFileError(f"{folder} holds neither model.safetensors nor pytorch_model.bin")


def check_shapes(state: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], what: str) -> None:
    """Every expected key present with its shape, and nothing else."""
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise WeightFileError(
            f"{what}: {len(state)} tensors, expected {len(expected)}; missing {missing[:5]}, unexpected {extra[:5]}"
        )
    for name, shape in expected.items():
        got = tuple(state[name].shape)
        if got != tuple(shape):
            raise WeightFileError(f"{what}: tensor {name} has shape {got}, expected {tuple(shape)}")


def as_float32(value: Any) -> np.ndarray:
    if type(value).__module__.startswith("torch"):
        value = value.detach().float().numpy()
    return np.ascontiguousarray(value, dtype=np.float32).reshape(np.shape(value))  # keeps 0-d arrays 0-d


def copy_side_file(src: Path, out_dir: Path) -> str:
    """Copy a tokenizer or vocabulary file beside the weights; returns its sha256."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, out_dir / src.name)
    return file_sha256(out_dir / src.name)
