"""The Parquet weight-file format: round trips, zero-copy reads, and clear failures on damaged files."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from aios_memory.digests import FORMATS
from aios_memory.errors import WeightFileError
from aios_memory.weights import ALIGN, META_KEY, read_meta, read_weights, write_weights

ALGOS = sorted(FORMATS)  # every digest a weight file can record: format 1 (sha256) and 2 (blake3)


@pytest.fixture(params=ALGOS)
def sample(tmp_path, request):
    rng = np.random.default_rng(0)
    tensors = {
        "a.weight": rng.standard_normal((7, 5)).astype(np.float32),
        "b.half": rng.standard_normal((3,)).astype(np.float16),  # 6 bytes: padding keeps the next aligned
        "c.ids": np.arange(11, dtype=np.int64),
        "d.bf16": torch.randn(4, 3, dtype=torch.bfloat16),
        "e.empty": np.zeros((0, 4), dtype=np.float32),
    }
    path = write_weights(
        tmp_path / "w.parquet",
        tensors,
        model="toy",
        config={"n": 1},
        source={"from": "test"},
        algo=request.param,
    )
    return path, tensors


def test_round_trip_every_dtype(sample):
    path, tensors = sample
    wf = read_weights(path, model="toy")
    assert wf.algo == read_meta(path)["algo"] and {t.algo for t in wf.tensors.values()} == {wf.algo}
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
    algo = read_meta(path)["algo"]
    with pytest.raises(WeightFileError, match=f"^.*: {algo} mismatch in tensor 'c.ids'"):
        read_weights(bad)
    with pytest.raises(WeightFileError, match=f"{algo} mismatch in tensor 'c.ids'"):
        read_weights(bad, mmap=False)


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
    assert meta["model"] == "toy" and meta["tensors"] == 5 and meta["format"] == FORMATS[meta["algo"]]
    assert meta["algo"] in pq.read_schema(path).names and "data" in pq.read_schema(path).names
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


def _write_format1_the_old_way(path, tensors):
    """A weight file exactly as builds before format 2 wrote it: a ``sha256`` column, format 1, no algo."""
    cols = {k: [] for k in ("name", "dtype", "shape", "nbytes", "sha256", "data")}
    for name, arr in tensors.items():
        raw = np.ascontiguousarray(arr).tobytes()
        for k, v in zip(cols, (name, arr.dtype.name, list(arr.shape), len(raw), None, None), strict=True):
            cols[k].append(v)
        cols["sha256"][-1] = hashlib.sha256(raw).hexdigest()
        cols["data"][-1] = raw + b"\0" * (-len(raw) % ALIGN)
    schema = pa.schema(
        [
            pa.field("name", pa.string(), nullable=False),
            pa.field("dtype", pa.string(), nullable=False),
            pa.field("shape", pa.list_(pa.int64()), nullable=False),
            pa.field("nbytes", pa.int64(), nullable=False),
            pa.field("sha256", pa.string(), nullable=False),
            pa.field("data", pa.large_binary(), nullable=False),
        ]
    )
    meta = {"format": 1, "model": "old", "config": {}, "source": {}, "files": {}, "tensors": len(tensors)}
    table = pa.table(list(cols.values()), schema=schema.with_metadata({META_KEY: json.dumps(meta)}))
    pq.write_table(
        table,
        path,
        compression="NONE",
        use_dictionary=False,
        write_statistics=["name", "dtype", "nbytes"],
        row_group_size=1,
    )
    return path


@pytest.mark.parametrize("mmap", [True, False])
def test_format1_file_written_the_old_way_loads_and_verifies(tmp_path, mmap):
    rng = np.random.default_rng(3)
    tensors = {"w": rng.standard_normal((40, 30)).astype(np.float32), "ids": np.arange(9, dtype=np.int64)}
    path = _write_format1_the_old_way(tmp_path / "old.parquet", tensors)
    meta = read_meta(path)
    assert meta["format"] == 1 and meta["algo"] == "sha256"
    wf = read_weights(path, model="old", mmap=mmap)
    assert wf.mapped == mmap and wf.algo == "sha256" and wf.format == 1
    for name, want in tensors.items():
        t = wf.tensors[name]
        assert t.algo == "sha256" and t.digest == hashlib.sha256(want.tobytes()).hexdigest()
        assert np.array_equal(t.numpy(), want)
    # the writer's format 1 is the same file, but for its creation time
    again = write_weights(tmp_path / "new1.parquet", tensors, model="old", config={}, algo="sha256")
    assert pq.read_table(again).equals(pq.read_table(path))
    assert {k: v for k, v in read_meta(again).items() if k != "created_at"} == meta
    # a flipped byte is refused, as before, as a sha256 mismatch
    raw = bytearray(path.read_bytes())
    at = raw.find(tensors["w"].tobytes()[:64])
    raw[at + 100] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(WeightFileError, match="sha256 mismatch in tensor 'w'"):
        read_weights(path, mmap=mmap)


@pytest.mark.parametrize(
    ("meta_patch", "match"),
    [
        ({"format": 2, "algo": "md5"}, "unknown digest algorithm 'md5'"),
        ({"format": 2, "algo": None}, "unknown digest algorithm None"),
        ({"format": 2, "algo": "sha256"}, "format 2 does not record sha256"),
        ({"format": 1, "algo": "blake3"}, "format 1 does not record blake3"),
        ({"format": 3, "algo": "blake3"}, "weight-file format 3"),
        ({"format": True}, "weight-file format True"),
    ],
)
def test_unknown_or_inconsistent_algo_is_refused(tmp_path, meta_patch, match):
    path = write_weights(tmp_path / "w.parquet", {"w": np.ones(4, np.float32)}, model="toy", config={})
    table = pq.read_table(path)
    meta = {**json.loads(table.schema.metadata[META_KEY]), **meta_patch}
    if "algo" in meta_patch and meta_patch["algo"] is None:
        del meta["algo"]
    bad = tmp_path / "bad.parquet"
    pq.write_table(table.replace_schema_metadata({META_KEY: json.dumps(meta)}), bad, compression="NONE")
    for read in (read_meta, read_weights):
        with pytest.raises(WeightFileError, match=match):
            read(bad)


def test_digest_column_must_be_the_one_the_metadata_names(tmp_path):
    path = write_weights(tmp_path / "w.parquet", {"w": np.ones(4, np.float32)}, model="toy", config={})
    table = pq.read_table(path)
    renamed = table.rename_columns(["name", "dtype", "shape", "nbytes", "sha256", "data"])
    bad = tmp_path / "renamed.parquet"
    pq.write_table(renamed.replace_schema_metadata(table.schema.metadata), bad, compression="NONE")
    with pytest.raises(WeightFileError, match="no blake3 column"):
        read_weights(bad)


def test_writer_refuses_an_unknown_algo(tmp_path):
    with pytest.raises(WeightFileError, match="unknown digest algorithm 'md5'"):
        write_weights(tmp_path / "w.parquet", {"w": np.ones(2, np.float32)}, model="m", config={}, algo="md5")


def test_digests_are_the_standard_ones_threaded_or_not(tmp_path):
    from aios_memory import digests

    assert digests.digest("sha256", b"") == hashlib.sha256(b"").hexdigest()
    assert digests.digest("blake3", b"") == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    big = np.random.default_rng(5).integers(0, 255, digests.THREADED_MIN + 12345, dtype=np.uint8)
    for algo in ALGOS:
        assert digests.digest(algo, big) == digests.digest(algo, big, threaded=False)
    f = tmp_path / "f.bin"
    f.write_bytes(big.tobytes())
    assert digests.file_digest(f, "blake3") == digests.digest("blake3", big)
    assert digests.file_digest(f) == hashlib.sha256(big.tobytes()).hexdigest()
    with pytest.raises(WeightFileError, match="unknown digest algorithm 'md5'"):
        digests.digest("md5", b"x")
