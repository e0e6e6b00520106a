"""The Parquet weight-file format: round trips, zero-copy reads, and clear failures on damaged files."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from aios_memory.errors import WeightFileError
from aios_memory.weights import ALIGN, read_meta, read_weights, write_weights


@pytest.fixture()
def sample(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "a.weight": rng.standard_normal((7, 5)).astype(np.float32),
        "b.half": rng.standard_normal((3,)).astype(np.float16),  # 6 bytes: padding keeps the next aligned
        "c.ids": np.arange(11, dtype=np.int64),
        "d.bf16": torch.randn(4, 3, dtype=torch.bfloat16),
        "e.empty": np.zeros((0, 4), dtype=np.float32),
    }
    path = write_weights(
        tmp_path / "w.parquet", tensors, model="toy", config={"n": 1}, source={"from": "test"}
    )
    return path, tensors


def test_round_trip_every_dtype(sample):
    path, tensors = sample
    wf = read_weights(path, model="toy")
    assert wf.config == {"n": 1} and wf.source == {"from": "test"} and wf.model == "toy"
    assert list(wf.tensors) == list(tensors)
    for name in ("a.weight", "b.half", "c.ids", "e.empty"):
        got = wf.tensors[name].numpy()
        assert got.dtype == tensors[name].dtype and np.array_equal(got, tensors[name])
    assert torch.equal(wf.tensors["d.bf16"].torch(), tensors["d.bf16"])
    sd = wf.torch_state_dict()
    assert torch.equal(sd["a.weight"], torch.from_numpy(tensors["a.weight"]))


def test_reads_are_zero_copy_and_aligned(sample):
    path, _ = sample
    wf = read_weights(path, mmap=False)  # the decoding path: views of one 64-byte-aligned Arrow buffer
    assert not wf.mapped
    arrays = [t.numpy() for n, t in wf.tensors.items() if n != "d.bf16"]
    for arr in arrays:
        assert not arr.flags.owndata  # a view of the decoded Parquet buffer, not a copy
    for t in wf.tensors.values():
        if t.buffer.size:
            assert t.buffer.address % ALIGN == 0
    assert pq.ParquetFile(path).metadata.num_row_groups == 5  # one tensor per row group


def test_tampered_tensor_is_named(sample, tmp_path):
    path, _ = sample
    table = pq.read_table(path)
    data = table.column("data").to_pylist()
    blob = bytearray(data[2])
    blob[3] ^= 0xFF  # flip bits inside c.ids
    data[2] = bytes(blob)
    tampered = table.set_column(5, table.schema.field("data"), pa.array(data, pa.large_binary()))
    bad = tmp_path / "tampered.parquet"
    pq.write_table(tampered, bad, compression="NONE")
    with pytest.raises(WeightFileError, match="sha256 mismatch in tensor 'c.ids'"):
        read_weights(bad)


def test_truncated_file(sample, tmp_path):
    path, _ = sample
    raw = path.read_bytes()
    for cut in (len(raw) // 2, len(raw) - 10, 100):
        bad = tmp_path / f"trunc{cut}.parquet"
        bad.write_bytes(raw[:cut])
        with pytest.raises(WeightFileError):
            read_weights(bad)


def test_zero_byte_and_missing_and_foreign_files(tmp_path):
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    with pytest.raises(WeightFileError):
        read_weights(empty)
    with pytest.raises(WeightFileError, match="not found"):
        read_weights(tmp_path / "nope.parquet")
    foreign = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), foreign)
    with pytest.raises(WeightFileError, match="not an aios-memory weight file"):
        read_weights(foreign)


def test_wrong_model_and_shape_mismatch(sample, tmp_path):
    path, _ = sample
    with pytest.raises(WeightFileError, match="holds model 'toy'"):
        read_weights(path, model="other")
    table = pq.read_table(path)
    shapes = table.column("shape").to_pylist()
    shapes[0] = [7, 6]  # claims more elements than its bytes hold
    bad = tmp_path / "shape.parquet"
    pq.write_table(
        table.set_column(2, table.schema.field("shape"), pa.array(shapes, pa.list_(pa.int64()))), bad
    )
    with pytest.raises(WeightFileError, match="does not fit shape"):
        read_weights(bad)


def test_metadata_without_reading_tensors(sample):
    path, _ = sample
    meta = read_meta(path)
    assert meta["model"] == "toy" and meta["tensors"] == 5 and meta["format"] == 1
    assert json.dumps(meta)  # plain JSON: no code, no pickle


def test_unsupported_dtype_is_refused(tmp_path):
    with pytest.raises(WeightFileError, match="unsupported dtype"):
        write_weights(tmp_path / "x.parquet", {"c": np.zeros(2, dtype=np.complex64)}, model="m", config={})


def test_real_model_file_loads_and_verifies(model_home):
    from aios_memory.home import model_dir

    wf = read_weights(model_dir("text") / "weights.parquet", model="all-MiniLM-L6-v2")
    assert len(wf.tensors) == 5 + 6 * 16
    assert wf.tensors["embeddings.word_embeddings.weight"].shape == (30522, 384)
    assert wf.nbytes > 90_000_000
    assert wf.config["max_seq_length"] == 256
    wf.check_side_file("tokenizer.json")


def test_crafted_metadata_and_negative_shapes(sample, tmp_path):
    path, _ = sample
    table = pq.read_table(path)
    for i, raw in enumerate([b"{not json", b"[1]"]):
        bad = tmp_path / f"meta{i}.parquet"
        pq.write_table(table.replace_schema_metadata({b"aios_memory.weights": raw}), bad)
        with pytest.raises(WeightFileError, match="metadata"):
            read_weights(bad)
    shapes = table.column("shape").to_pylist()
    shapes[0] = [-7, -5]  # the product still matches the byte count
    bad = tmp_path / "negative.parquet"
    pq.write_table(
        table.set_column(2, table.schema.field("shape"), pa.array(shapes, pa.list_(pa.int64()))), bad
    )
    with pytest.raises(WeightFileError, match="negative"):
        read_weights(bad)
