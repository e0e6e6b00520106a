"""A model's identity from its weights' content (aios_memory/identity.py)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from aios_memory.identity import conflicts, describe, mismatch_message, same_model, weights_identity
from aios_memory.weights import write_weights


def tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "encoder.weight": rng.standard_normal((64, 32)).astype(np.float32),
        "encoder.bias": rng.standard_normal(32).astype(np.float16),
        "steps": np.arange(5, dtype=np.int64),
    }


def write(
    path: Path,
    t: dict[str, np.ndarray],
    algo: str = "blake3",
    files: dict[str, str] | None = None,
    config: dict | None = None,
) -> Path:
    return write_weights(path, t, model="m", config=config or {}, files=files, algo=algo)


def test_same_tensors_same_identity_in_either_format(tmp_path: Path) -> None:
    a = weights_identity(write(tmp_path / "a.parquet", tensors()))
    b = weights_identity(write(tmp_path / "b.parquet", tensors(), algo="sha256"))
    assert a == b and a.startswith("blake3:") and len(a) == 7 + 64


def test_any_changed_tensor_or_side_file_changes_it(tmp_path: Path) -> None:
    base = weights_identity(write(tmp_path / "a.parquet", tensors()))
    t = tensors()
    t["encoder.weight"] = t["encoder.weight"].copy()
    t["encoder.weight"][3, 4] = np.nextafter(t["encoder.weight"][3, 4], np.float32(9))  # one ulp
    assert weights_identity(write(tmp_path / "b.parquet", t)) != base
    t = tensors()
    t["steps"] = t["steps"].reshape(5, 1)  # same bytes, another shape
    assert weights_identity(write(tmp_path / "c.parquet", t)) != base
    tok = weights_identity(write(tmp_path / "d.parquet", tensors(), files={"tokenizer.json": "ab" * 32}))
    assert tok != base
    assert (
        weights_identity(write(tmp_path / "e.parquet", tensors(), files={"tokenizer.json": "cd" * 32})) != tok
    )


def test_the_config_is_part_of_it(tmp_path: Path) -> None:
    short = weights_identity(write(tmp_path / "a.parquet", tensors(), config={"max_seq_length": 16}))
    long = weights_identity(write(tmp_path / "b.parquet", tensors(), config={"max_seq_length": 256}))
    assert short != long


def test_a_replaced_file_is_hashed_again_even_with_the_same_size_and_mtime(tmp_path: Path) -> None:
    p = write(tmp_path / "w.parquet", tensors())
    os.utime(p, ns=(10**18, 10**18))
    first = weights_identity(p)
    t = tensors()
    t["encoder.weight"] = -t["encoder.weight"]  # same size
    q = write(tmp_path / "new.parquet", t)
    assert q.stat().st_size == p.stat().st_size
    os.utime(q, ns=(10**18, 10**18))  # same mtime (cp -p, reproducible builds)
    os.replace(q, p)  # a new inode under the old name
    assert weights_identity(p) != first


def test_tables_from_before_the_identity_are_accepted_and_others_compared() -> None:
    legacy = {"provider": "p", "modality": "text", "dim": 4, "version": "1"}
    now = {**legacy, "weights": "blake3:" + "0" * 64}
    assert same_model(legacy, now) and same_model(now, legacy)  # not recorded: nothing to compare
    assert conflicts(now, {**now, "weights": "blake3:" + "1" * 64}) == ["weights"]
    assert conflicts(legacy, {**legacy, "precision": "bf16"}) == ["precision"]
    assert conflicts(legacy, {**legacy, "dim": 8}) == ["dim"]


def test_the_refusal_names_both_models_and_the_command() -> None:
    old = {
        "provider": "minilm-l6-v2",
        "modality": "text",
        "dim": 384,
        "version": "1",
        "weights": "blake3:" + "a" * 64,
    }
    new = {**old, "weights": "blake3:" + "b" * 64}
    msg = mismatch_message("text", "/s", old, new)
    assert describe(old) in msg and describe(new) in msg and "blake3:aaaa" in msg and "blake3:bbbb" in msg
    assert (
        "aios-memory --store /s reembed text --provider minilm-l6-v2" in msg and "differs in weights" in msg
    )


@pytest.mark.parametrize("name", ["missing.parquet"])
def test_a_missing_file_is_an_os_error(tmp_path: Path, name: str) -> None:
    with pytest.raises(FileNotFoundError):
        weights_identity(tmp_path / name)
