"""The zero-copy (mmap) read path of weight files: layout detection, fallback, bounds, tampering."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from aios_memory.digests import FORMATS
from aios_memory.errors import WeightFileError
from aios_memory.weights import ALIGN, data_spans, read_meta, read_weights, write_weights


@pytest.fixture(params=sorted(FORMATS))  # format 1 (sha256) and 2 (blake3): both mapped, both checked
def sample(tmp_path, request):
    rng = np.random.default_rng(1)
    tensors = {
        "a.weight": rng.standard_normal((70, 50)).astype(np.float32),
        "b.half": rng.standard_normal((3,)).astype(np.float16),
        "c.ids": np.arange(1000, dtype=np.int64),
        "d.bf16": torch.randn(4, 3, dtype=torch.bfloat16),
        "e.empty": np.zeros((0, 4), dtype=np.float32),
        "f.big": rng.standard_normal((600, 700)).astype(np.float32),  # > 1 MiB: several pages' worth
    }
    return write_weights(tmp_path / "w.parquet", tensors, model="toy", config={}, algo=request.param), tensors


def _algo(path) -> str:
    return read_meta(path)["algo"]


def _equal(wf, tensors) -> None:
    assert list(wf.tensors) == list(tensors)
    for name, want in tensors.items():
        got = wf.tensors[name].torch()
        want = want if isinstance(want, torch.Tensor) else torch.from_numpy(want)
        assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want), name


def _spans(path, tensors):
    pf = pq.ParquetFile(path)
    nbytes = pf.read(columns=["nbytes"]).column("nbytes").to_pylist()
    return data_spans(pf, nbytes, path.stat().st_size), nbytes


def test_written_files_are_mapped_and_views_of_the_file(sample):
    path, tensors = sample
    wf = read_weights(path)
    assert wf.mapped
    _equal(wf, tensors)
    raw = path.read_bytes()
    spans, nbytes = _spans(path, tensors)
    for (start, length), n, (name, t) in zip(spans, nbytes, wf.tensors.items(), strict=True):
        assert length == n + (-n % ALIGN)
        assert int.from_bytes(raw[start - 4 : start], "little") == length  # the PLAIN length prefix
        assert bytes(t.buffer) == raw[start : start + n], name
    arr = wf.tensors["a.weight"].numpy()
    assert not arr.flags.owndata  # a view of the mapped page, not a copy
    # all tensors lie in one mapping, at their file offsets from its base
    base = wf.tensors["a.weight"].buffer.address - spans[0][0]
    for (start, _), t in zip(spans, wf.tensors.values(), strict=True):
        if t.buffer.size:
            assert t.buffer.address == base + start


def test_writes_to_mapped_tensors_stay_private(sample):
    path, tensors = sample
    before = path.read_bytes()
    wf = read_weights(path)
    t = wf.tensors["a.weight"].torch()
    t.add_(1.0)  # copy-on-write: this process's page changes, never the file
    wf.tensors["c.ids"].numpy()[:] = 7
    assert path.read_bytes() == before
    _equal(read_weights(path), tensors)


def test_map_survives_a_reinstall_by_rename(sample):
    path, tensors = sample
    wf = read_weights(path)
    write_weights(path, {k: np.zeros(3, np.float32) for k in ("x", "y")}, model="toy", config={})
    _equal(wf, tensors)  # the old inode's pages: unchanged
    assert list(read_weights(path).tensors) == ["x", "y"]


@pytest.mark.parametrize(
    "options",
    [
        {"compression": "NONE", "use_dictionary": True},  # a dictionary page
        {"compression": "zstd", "use_dictionary": False},  # compressed pages
        {"compression": "snappy"},  # pyarrow's defaults
    ],
)
def test_other_layouts_fall_back_to_decoding(sample, tmp_path, options):
    path, tensors = sample
    other = tmp_path / "other.parquet"
    pq.write_table(pq.read_table(path), other, row_group_size=1, **options)
    wf = read_weights(other)
    assert not wf.mapped
    _equal(wf, tensors)


@pytest.mark.parametrize(
    "options",
    [
        {"data_page_version": "2.0"},  # no levels in a required column: the value still ends the page
        {"write_statistics": True},  # statistics in the page header: a longer header, same value
    ],
)
def test_layout_variants_that_keep_the_value_last_are_still_mapped(sample, tmp_path, options):
    path, tensors = sample
    other = tmp_path / "variant.parquet"
    pq.write_table(
        pq.read_table(path), other, row_group_size=1, compression="NONE", use_dictionary=False, **options
    )
    wf = read_weights(other)
    assert wf.mapped
    _equal(wf, tensors)


def test_several_tensors_per_row_group_fall_back(sample, tmp_path):
    path, tensors = sample
    other = tmp_path / "grouped.parquet"
    pq.write_table(pq.read_table(path), other, row_group_size=3, compression="NONE", use_dictionary=False)
    wf = read_weights(other)
    assert not wf.mapped
    _equal(wf, tensors)


def test_tampered_tensor_is_named_through_the_map(sample):
    path, _ = sample
    spans, _ = _spans(path, None)
    raw = bytearray(path.read_bytes())
    raw[spans[2][0] + 5] ^= 0xFF  # a byte inside c.ids, in place: the layout is unchanged
    path.write_bytes(bytes(raw))
    assert read_weights(path, verify=False).mapped
    with pytest.raises(WeightFileError, match=f"{_algo(path)} mismatch in tensor 'c.ids'"):
        read_weights(path)
    # the padding is not part of the tensor: flipping it changes nothing
    raw[spans[2][0] + 5] ^= 0xFF
    raw[spans[1][0] + 7] ^= 0xFF  # b.half holds 6 bytes, padded to 64
    path.write_bytes(bytes(raw))
    assert read_weights(path).mapped


def test_wrong_length_prefix_is_not_trusted(sample):
    path, _ = sample
    spans, _ = _spans(path, None)
    raw = bytearray(path.read_bytes())
    raw[spans[5][0] - 4] ^= 0x01  # f.big's length prefix no longer matches
    path.write_bytes(bytes(raw))
    with pytest.raises(WeightFileError):  # not mapped; the decoder then finds the page corrupt
        read_weights(path)


def test_offsets_out_of_bounds_are_refused(sample):
    path, _ = sample
    pf = pq.ParquetFile(path)
    nbytes = pf.read(columns=["nbytes"]).column("nbytes").to_pylist()
    size = path.stat().st_size
    assert data_spans(pf, nbytes, size) is not None
    # a file shorter than its footer claims: the spans would reach into (or past) the footer
    assert data_spans(pf, nbytes, size - pf.metadata.serialized_size) is None
    # a tensor longer than its column chunk: its span would start before the page
    bigger = list(nbytes)
    bigger[5] = nbytes[5] + 10_000_000
    assert data_spans(pf, bigger, size) is None
    assert data_spans(pf, nbytes[:-1], size) is None  # row groups and tensors disagree


def test_truncated_files_are_refused(sample, tmp_path):
    path, _ = sample
    raw = path.read_bytes()
    spans, _ = _spans(path, None)
    for cut in (spans[5][0] + 100, len(raw) - 8, len(raw) - 1, 8):
        bad = tmp_path / f"trunc{cut}.parquet"
        bad.write_bytes(raw[:cut])
        with pytest.raises(WeightFileError):
            read_weights(bad)
    # the footer kept, the data cut out from under it (same length, zeros): the hash catches it
    hole = bytearray(raw)
    start, length = spans[5]
    hole[start : start + length] = bytes(length)
    bad = tmp_path / "hole.parquet"
    bad.write_bytes(bytes(hole))
    with pytest.raises(WeightFileError, match="f.big"):
        read_weights(bad)


def test_mapped_and_decoded_reads_agree_on_a_real_model(model_home):
    from aios_memory.home import model_dir

    path = model_dir("text") / "weights.parquet"
    mapped, decoded = read_weights(path), read_weights(path, mmap=False)
    assert mapped.mapped and not decoded.mapped and mapped.nbytes == decoded.nbytes
    for name, t in mapped.tensors.items():
        assert bytes(t.buffer) == bytes(decoded.tensors[name].buffer), name


def test_verified_once_cache_is_opt_in_and_dies_with_any_change(sample, monkeypatch):
    import json
    import os
    import time

    from aios_memory.weights_map import _map, _row_columns
    from aios_memory.weights_verify import VERIFY_ENV, _cache_key, _cache_path

    path, tensors = sample
    read_weights(path)
    assert not _cache_path(path).exists()  # the default verifies every time and writes nothing
    monkeypatch.setenv(VERIFY_ENV, "once")
    _equal(read_weights(path), tensors)

    def current_key():
        m, st, fd = _map(path)
        os.close(fd)
        import pyarrow as pa

        meta = read_meta(path)
        pf = pq.ParquetFile(pa.BufferReader(pa.py_buffer(memoryview(m))))
        return _cache_key(st, m, _row_columns(path, meta, pf), meta)

    assert json.loads(_cache_path(path).read_text()) == current_key()
    assert current_key()["algo"] == _algo(path)  # the algorithm is part of what the cache vouches for
    _equal(read_weights(path), tensors)  # a hit: same inode, unchanged
    # an in-place change with the mtime put back: ctime still moves, so the cache no longer vouches
    spans, _ = _spans(path, None)
    st = path.stat()
    time.sleep(0.01)
    with open(path, "r+b") as f:
        f.seek(spans[2][0] + 9)
        byte = f.read(1)
        f.seek(spans[2][0] + 9)
        f.write(bytes([byte[0] ^ 0x40]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size
    assert json.loads(_cache_path(path).read_text()) != current_key()
    with pytest.raises(WeightFileError, match=f"{_algo(path)} mismatch in tensor 'c.ids'"):
        read_weights(path)
    # a forged cache for the tampered file is as good as rewriting the recorded hashes: out of scope,
    # but a cache from another file (the key of a different inode) never matches
    other = path.with_name("copy.parquet")
    other.write_bytes(path.read_bytes())
    _cache_path(other).write_text(_cache_path(path).read_text())
    with pytest.raises(WeightFileError, match="c.ids"):
        read_weights(other)


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.mark.parametrize("algo", sorted(FORMATS))
def test_verified_load_leaves_untouched_tensors_out_of_the_resident_set(tmp_path, algo):
    """Hashing reads through the descriptor (``pread``), not the map: a 96 MiB table that the model never
    reads costs no resident memory, and the pages of a tensor enter only when it is read."""
    big = np.arange(24 * 2**20, dtype=np.float32).reshape(-1, 1024)  # 96 MiB
    small = np.ones((256, 256), np.float32)
    path = write_weights(
        tmp_path / "w.parquet", {"table": big, "small": small}, model="toy", config={}, algo=algo
    )
    before = _rss_mib()
    wf = read_weights(path)  # every digest checked
    after_load = _rss_mib()
    assert wf.mapped and after_load - before < 24, (before, after_load)
    table = wf.tensors["table"].torch()
    assert float(table[12345, 7]) == float(big[12345, 7])  # one row: a few pages
    assert _rss_mib() - before < 24
    assert float(table.sum(dtype=torch.float64)) == float(big.sum(dtype=np.float64))  # all of it
    assert _rss_mib() - before > 80
    tampered = bytearray(path.read_bytes())
    spans, _ = _spans(path, {"table": big, "small": small})
    tampered[spans[0][0] + 5_000_000] ^= 1
    path.write_bytes(bytes(tampered))
    with pytest.raises(WeightFileError, match="'table'"):
        read_weights(path)


def test_hashing_without_preadv(sample, monkeypatch):
    """Platforms without ``os.preadv`` hash through ``os.pread``: same verdicts."""
    import os

    path, tensors = sample
    monkeypatch.delattr(os, "preadv")
    _equal(read_weights(path), tensors)
    spans, _ = _spans(path, tensors)
    raw = bytearray(path.read_bytes())
    raw[spans[5][0] + 1000] ^= 1  # inside f.big
    path.write_bytes(bytes(raw))
    with pytest.raises(WeightFileError, match="'f.big'"):
        read_weights(path)
