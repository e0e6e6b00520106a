"""Vector sidecars: the numbers of a fragment in the layout a matrix product wants.

Every fragment ``data/<table>/<stem>.parquet`` is written with immutable sidecars (see
:meth:`aios_memory.storage.Storage.write_fragment`), in ``data/<table>/_derived/`` so that a plain
``pyarrow.dataset("data/<table>")`` reads Parquet only (older stores keep them beside the fragment):

- ``<stem>.<column>.f32`` for each fixed-size float32 vector column (``embedding``, audio's
  ``transcript_embedding``): the ``(rows, dim)`` matrix as raw little-endian float32, followed by the
  ``rows`` L2 norms. A null vector is a row of NaN (its norm NaN too) and never ranks.
- ``<stem>.created_at.i64``: ``created_at`` as little-endian int64 microseconds since the epoch (UTC).
- ``<stem>.content.blake2b`` (memory tables): a 16-byte BLAKE2b digest of each row's content (text) or
  media bytes, so that finding an exact duplicate compares digests, never contents (see
  :mod:`aios_memory.dedupe`). A row with neither has 16 zero bytes and never matches.

The Parquet fragment stays the source of truth: a sidecar is checked against the size and sha256 its
manifest recorded when first mapped, and a missing or damaged one falls back to the Parquet column.
Every read goes through the store's backend, so the same code serves a local directory and S3.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aios_memory.errors import StoreCorruptError
from aios_memory.storage.cache import CACHE, trusted
from aios_memory.storage.manifest import Fragment

if TYPE_CHECKING:
    from aios_memory.storage.commit import Storage

TIME_SUFFIX = "created_at.i64"
DIGEST_SUFFIX = "content.blake2b"
NO_DIGEST = bytes(16)


def content_digest(content: str | None, media: bytes | memoryview | None) -> bytes:
    """The 16-byte digest of a memory's content (text) or media; :data:`NO_DIGEST` for neither."""
    if media is None and content is None:
        return NO_DIGEST
    h = hashlib.blake2b(digest_size=16, person=b"aios-memory")
    if media is not None:
        h.update(b"m")
        h.update(media)
    else:
        h.update(b"t")
        h.update(content.encode("utf-8", "surrogatepass"))  # type: ignore[union-attr]
    return h.digest()


def row_digests(table: pa.Table) -> np.ndarray:
    """``(rows, 16)`` uint8: :func:`content_digest` of each row of a memory table."""
    raw = b"".join(_batch_digests(b) for b in table.select(["content", "media"]).to_batches())
    return np.frombuffer(raw, np.uint8).reshape(table.num_rows, 16)


def digest_rows(item_digests: list[bytes], rows: list[int]) -> np.ndarray:
    """``(rows, 16)`` uint8: the digests of the items each row comes from."""
    raw = b"".join([item_digests[i] for i in rows])
    return np.frombuffer(raw, np.uint8).reshape(len(rows), 16)


def _batch_digests(batch: pa.RecordBatch) -> bytes:
    """The digests of a batch's rows, hashing the media where Arrow holds them (no copy per value)."""
    texts = batch.column(0).to_pylist()
    media = batch.column(1)
    bitmap, offsets_buf, data = media.buffers()  # (not pyarrow.compute: a cold add does not load it)
    valid = np.ones(len(media), bool)
    if bitmap is not None and media.null_count:
        bits = np.unpackbits(np.frombuffer(bitmap, np.uint8), bitorder="little")
        valid = bits[media.offset : media.offset + len(media)].astype(bool)
    width = np.int64 if pa.types.is_large_binary(media.type) else np.int32
    offsets = np.frombuffer(offsets_buf, width)[media.offset : media.offset + len(media) + 1]
    view = memoryview(data) if data is not None else memoryview(b"")
    out = [
        content_digest(None, view[offsets[i] : offsets[i + 1]]) if valid[i] else content_digest(t, None)  # type: ignore[arg-type]
        for i, t in enumerate(texts)
    ]
    return b"".join(out)


def vector_suffix(column: str) -> str:
    return f"{column}.f32"


# --- writing ---------------------------------------------------------------------------------------
def sidecar_buffers(table: pa.Table, digests: np.ndarray | None = None) -> Iterator[tuple[str, list[Any]]]:
    """The sidecars of ``table``: ``(suffix, buffers)`` for each fixed-size float32 vector column, for
    ``created_at`` and, in memory tables, the content digests (``digests``: computed already, else here).
    The change log gets none."""
    n = table.num_rows
    if {"content", "media", "embedding"} <= set(table.column_names):
        yield DIGEST_SUFFIX, [row_digests(table) if digests is None else digests]
    for f in table.schema:
        t = f.type
        if pa.types.is_fixed_size_list(t) and t.value_type == pa.float32():
            dim = t.list_size
            arr = table.column(f.name).combine_chunks()
            flat = arr.values.slice(arr.offset * dim, n * dim)
            mat = np.asarray(flat.to_numpy(zero_copy_only=False), dtype="<f4").reshape(n, dim)  # no copy
            if arr.null_count:
                mat = mat.copy()  # Arrow's buffer is read only
                mat[np.asarray(arr.is_null())] = np.nan
            norms = np.sqrt(np.einsum("ij,ij->i", mat, mat, dtype=np.float64)).astype("<f4")
            yield vector_suffix(f.name), [np.ascontiguousarray(mat), norms]
        elif f.name == "created_at" and pa.types.is_timestamp(t):
            # numpy, not Arrow casts: those would import pyarrow.compute (~30 ms) on a cold process's
            # first add. NaT (null) becomes 0, the epoch.
            stamps = np.asarray(table.column(f.name).to_numpy(), dtype="datetime64[us]")
            us = stamps.astype("<i8")
            us[np.isnat(stamps)] = 0
            yield TIME_SUFFIX, [us]


def _corrupt(storage: Storage, frag: Fragment, what: str) -> StoreCorruptError:
    return StoreCorruptError(
        f"store {storage.root}: {what} of fragment {frag.path} is missing or unreadable; run `aios-memory doctor`"
    )


def fragment_vectors(
    storage: Storage, frag: Fragment, column: str, dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(matrix (rows, dim) float32, norms (rows,) float32)`` of ``column``: a memory map of the sidecar,
    checked against its manifest checksum when first mapped; or, for fragments from before sidecars and
    for a sidecar that fails its check, the Parquet column (the source of truth) decoded once."""
    suffix = vector_suffix(column)
    if frag.rows == 0:
        return np.zeros((0, dim), np.float32), np.zeros(0, np.float32)
    path = storage.uri(frag.path)

    def decode() -> tuple[np.ndarray, np.ndarray]:
        try:
            col = storage.read_table(frag.path, [column]).column(column)
        except (FileNotFoundError, pa.ArrowException, OSError, KeyError) as exc:
            raise _corrupt(storage, frag, "the Parquet file") from exc
        out = np.full((frag.rows, dim), np.nan, dtype=np.float32)
        if pa.types.is_fixed_size_list(col.type) and col.type.list_size == dim:
            arr = col.combine_chunks()
            flat = arr.values.slice(arr.offset * dim, frag.rows * dim)
            out[:] = np.asarray(flat.to_numpy(zero_copy_only=False), np.float32).reshape(frag.rows, dim)
            if arr.null_count:
                out[np.asarray(arr.is_null())] = np.nan
        norms = np.sqrt(np.einsum("ij,ij->i", out, out, dtype=np.float64)).astype(np.float32)
        return out, norms

    def decoded() -> tuple[np.ndarray, np.ndarray]:
        return CACHE.get((path, f"col:{column}"), decode, frag.rows * (dim + 1) * 4)

    if suffix not in frag.sidecars:
        return decoded()
    side_rel = frag.sidecar_path(suffix)
    side = storage.uri(side_rel)
    size = frag.rows * (dim + 1) * 4

    def make() -> tuple[np.ndarray, np.ndarray] | None:
        raw = storage.backend.map(
            side_rel
        )  # an OSError (a missing file, no descriptor left) is not cached: see below
        if not trusted(side, raw, size, frag.checksum(suffix)):
            return None
        floats = raw.view("<f4")
        return floats[: frag.rows * dim].reshape(frag.rows, dim), floats[frag.rows * dim :]

    try:
        got = CACHE.get((side, "vec"), make, size)
    except OSError:  # not a verdict on the file (it may be a passing shortage): the source of truth
        return decoded()
    return got if got is not None else decoded()


def fragment_times(storage: Storage, frag: Fragment) -> np.ndarray:
    """``created_at`` of every row as int64 microseconds since the epoch (the sidecar, checked like the
    vectors', else the Parquet column)."""
    if frag.rows == 0:
        return np.zeros(0, np.int64)
    path = storage.uri(frag.path)

    def decode() -> np.ndarray:
        try:
            col = storage.read_table(frag.path, ["created_at"]).column("created_at")
        except (FileNotFoundError, pa.ArrowException, OSError, KeyError) as exc:
            raise _corrupt(storage, frag, "the Parquet file") from exc
        return np.asarray(col.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy(), np.int64)

    if TIME_SUFFIX in frag.sidecars:
        side_rel = frag.sidecar_path(TIME_SUFFIX)
        side = storage.uri(side_rel)

        def make() -> np.ndarray | None:
            raw = storage.backend.map(side_rel)
            if not trusted(side, raw, frag.rows * 8, frag.checksum(TIME_SUFFIX)):
                return None
            return raw.view("<i8")

        try:
            got = CACHE.get((side, "time"), make, frag.rows * 8)
        except OSError:
            got = None
        if got is not None:
            return got
    return CACHE.get((path, "col:created_at"), decode, frag.rows * 8)


def fragment_digests(storage: Storage, frag: Fragment) -> np.ndarray:
    """``(rows, 16)`` uint8 content digests of a fragment: the sidecar, checked like the vectors', else
    (fragments from before digests, a damaged sidecar) computed from the Parquet columns once."""
    if frag.rows == 0:
        return np.zeros((0, 16), np.uint8)
    if DIGEST_SUFFIX in frag.sidecars:
        side_rel = frag.sidecar_path(DIGEST_SUFFIX)
        side = storage.uri(side_rel)

        def make() -> np.ndarray | None:
            raw = storage.backend.map(side_rel)
            if not trusted(side, raw, frag.rows * 16, frag.checksum(DIGEST_SUFFIX)):
                return None
            return raw.view(np.uint8).reshape(frag.rows, 16)

        try:
            got = CACHE.get((side, "digest"), make, frag.rows * 16)
        except OSError:
            got = None
        if got is not None:
            return got

    def decode() -> np.ndarray:  # streamed: a table of media is never in memory as a whole
        try:
            with storage.backend.open_input(frag.path) as f:
                reader = pq.ParquetFile(f, buffer_size=1 << 20, pre_buffer=False)  # page by page
                batches = reader.iter_batches(64, columns=["content", "media"], use_threads=False)
                raw = b"".join(_batch_digests(b) for b in batches)
        except (FileNotFoundError, pa.ArrowException, OSError, KeyError) as exc:
            raise _corrupt(storage, frag, "the Parquet file") from exc
        return np.frombuffer(raw, np.uint8).reshape(frag.rows, 16)

    return CACHE.get((storage.uri(frag.path), "col:digest"), decode, frag.rows * 16)


def namespace_rows(
    storage: Storage, frag: Fragment, namespace: str, among: np.ndarray | None = None
) -> np.ndarray:
    """Row positions of ``frag`` that belong to ``namespace`` (its namespace column, cached encoded);
    with ``among``, only those of these rows (a lookup of a few rows, not a pass over all)."""
    path = storage.uri(frag.path)

    def decode() -> tuple[dict[str, int], np.ndarray]:
        try:
            col = storage.read_table(frag.path, ["namespace"]).column("namespace").combine_chunks()
        except (FileNotFoundError, pa.ArrowException, OSError, KeyError) as exc:
            raise _corrupt(storage, frag, "the Parquet file") from exc
        enc = col.dictionary_encode()
        codes = {v: i for i, v in enumerate(enc.dictionary.to_pylist())}
        return codes, np.asarray(enc.indices.to_numpy(zero_copy_only=False), np.int32)

    codes, indices = CACHE.get((path, "ns"), decode, frag.rows * 4)
    code = codes.get(namespace)
    if code is None:
        return np.zeros(0, np.int64)
    if among is not None:
        return among[indices[among] == code]
    return np.flatnonzero(indices == code)


def read_rows(storage: Storage, frag: Fragment, rows: np.ndarray, columns: list[str] | None) -> pa.Table:
    """``rows`` of a fragment (in the given order), decoding only the row groups that hold them. The file
    stays open per process with its footer parsed (it is immutable), so a read opens nothing: a search's
    top-k touches a handful of fragments, and each open cost about a third of the read. Reads are
    ``pread`` calls (thread-safe), not a map: a file truncated under the process is a clean error."""
    path = storage.uri(frag.path)

    def footer() -> tuple[Any, Any, np.ndarray]:
        try:
            f = storage.backend.open_input(frag.path)
            meta = pq.read_metadata(f)
        except (FileNotFoundError, pa.ArrowException, OSError) as exc:
            raise _corrupt(storage, frag, "the Parquet file") from exc
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        return f, meta, np.cumsum([0, *sizes])

    source, meta, starts = CACHE.get((path, "rows"), footer)  # read with pread: a descriptor, no map
    rows = np.asarray(rows, np.int64)
    groups = np.searchsorted(starts, rows, side="right") - 1
    wanted = sorted(set(groups.tolist()))
    try:
        part = pq.ParquetFile(source, metadata=meta).read_row_groups(
            wanted, columns=columns, use_threads=False
        )
    except (pa.ArrowException, OSError) as exc:
        raise _corrupt(storage, frag, "the Parquet file") from exc
    offset, base = 0, {}
    for g in wanted:
        base[g] = offset
        offset += int(starts[g + 1] - starts[g])
    local = [base[int(g)] + int(r - starts[g]) for g, r in zip(groups, rows, strict=True)]
    return part.take(pa.array(local, pa.int64()))


def schema_of(storage: Storage, frag: Fragment) -> pa.Schema:
    path = storage.uri(frag.path)

    def make() -> pa.Schema:
        try:
            with storage.backend.open_input(frag.path) as f:
                return pq.read_schema(f)
        except (FileNotFoundError, pa.ArrowException, OSError) as exc:
            raise _corrupt(storage, frag, "the Parquet file") from exc

    return CACHE.get((path, "schema"), make)
