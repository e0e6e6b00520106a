"""Embedded items → one Arrow batch of a modality's table, and the table entry a commit adds it to.

Pure functions of their arguments (the providers, the items, their vectors and extra columns): the write
path (``MemoryStore.add_many``, ``update``) and the import pipeline build their batches here.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from aios_memory.errors import ModelNotInstalledError, ProviderError, ProviderMismatchError
from aios_memory.identity import describe, same_model
from aios_memory.modality import Item
from aios_memory.provider import ConvertedModelProvider, EmbeddingProvider
from aios_memory.schema import EXTRA_COLUMNS, TEXT_COLUMN, base_schema
from aios_memory.storage import Manifest, TableState


def table_state(
    m: Manifest,
    modality: str,
    provider: EmbeddingProvider,
    text: EmbeddingProvider | None,
    fingerprint: dict[str, Any] | None = None,
) -> TableState:
    """``modality``'s entry in ``m`` for rows of ``provider`` (created if new); a table on another model
    by now (another writer built it, or a re-embedding moved it) is a ``ProviderMismatchError``: the
    batch is not committed. ``fingerprint``: the model the rows record (files other processes wrote),
    if not ``provider``'s here."""
    state = m.tables.get(modality)
    fp = provider.fingerprint() if fingerprint is None else fingerprint
    text_name, text_dim = (text.name, int(text.dim)) if text is not None else (None, None)
    text_fp = text.fingerprint() if text is not None else None
    if state is None:
        if isinstance(provider, ConvertedModelProvider) and "weights" not in fp:
            raise ModelNotInstalledError(
                f"{provider.name!r} has no readable weights here, so a new {modality} table could not record "
                f"which weights made its vectors; install them (aios-memory models install) first"
            )
        state = m.tables[modality] = TableState(
            modality, provider.name, int(provider.dim), fp, [], text_name, text_dim
        )
    elif (
        state.provider != provider.name
        or not same_model(state.fingerprint, fp)
        or (state.fragments and state.text_provider != text_name)
        or (
            state.fragments
            and state.text_fingerprint
            and text_fp
            and not same_model(state.text_fingerprint, text_fp)
        )
    ):
        raise ProviderMismatchError(
            f"the {modality} table is now on {describe(state.fingerprint)} (another writer made or re-embedded "
            f"it meanwhile); this batch was embedded with {describe(fp)} and was not committed"
        )
    state.text_provider, state.text_dim = text_name, text_dim
    if text_fp is not None and not state.fragments:
        state.text_fingerprint = text_fp  # with the table's first rows (older tables: when re-embedded)
    return state


def build_rows(
    modality: str,
    provider: EmbeddingProvider,
    text_provider: EmbeddingProvider | None,
    items: list[Item],
    metas: list[str],
    namespace: str,
    now: dt.datetime,
    vectors: list[Any],
    columns: list[dict[str, Any]],
) -> pa.Table:
    """The Arrow batch of ``items`` (new ids, one timestamp) with their vectors and provider columns."""
    text_dim = int(text_provider.dim) if text_provider is not None else None
    schema = base_schema(modality, provider.dim, provider.fingerprint(), text_dim)
    allowed = {f.name for f in EXTRA_COLUMNS[modality]}
    for c in columns:
        if set(c) - allowed:
            raise ProviderError(
                f"provider {provider.name!r} returned unknown columns {sorted(set(c) - allowed)} for "
                f"{modality} memories (allowed: {sorted(allowed)})"
            )
    n = len(items)
    flat = np.concatenate(vectors).reshape(-1)
    cols: dict[str, Any] = {
        "id": new_ids(n),
        "namespace": [namespace] * n,
        "created_at": _timestamps(now, n),
        "updated_at": [None] * n,
        "source": [it.source for it in items],
        "content": [it.content for it in items],
        "media": [it.media for it in items],
        "media_type": [it.media_type for it in items],
        "metadata": metas,
        "provider": [provider.name] * n,
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), int(provider.dim)),
    }
    for name in allowed:
        cols[name] = [c.get(name) for c in columns]
    if modality in TEXT_COLUMN:
        cols[f"{TEXT_COLUMN[modality]}_embedding"] = text_vectors(
            [c.get(TEXT_COLUMN[modality]) for c in columns], text_provider
        )
    return pa.table([cols[f.name] for f in schema], schema=schema)


HEX = np.frombuffer(b"0123456789abcdef", np.uint8)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
DASHES = (8, 13, 18, 23)  # where the canonical form of a UUID has its dashes


def new_ids(n: int) -> pa.Array:
    """``n`` random (version 4, RFC 4122) UUIDs in canonical form as an Arrow string array: the bytes of
    ``os.urandom``, as ``uuid.uuid4()`` takes them, formatted by numpy rather than one object per id."""
    raw = np.frombuffer(os.urandom(16 * n), np.uint8).reshape(n, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # the RFC 4122 variant
    digits = np.empty((n, 32), np.uint8)
    digits[:, 0::2], digits[:, 1::2] = HEX[raw >> 4], HEX[raw & 0x0F]
    text = np.insert(digits, [d - i for i, d in enumerate(DASHES)], ord("-"), axis=1)  # (n, 36)
    offsets = pa.py_buffer(np.arange(0, 36 * (n + 1), 36, dtype=np.int32))
    return pa.StringArray.from_buffers(n, offsets, pa.py_buffer(text.tobytes()))


def _timestamps(now: dt.datetime, n: int) -> pa.Array:
    """``n`` copies of ``now`` as UTC microseconds (numpy; a list of datetimes converts row by row)."""
    aware = now if now.tzinfo is not None else now.replace(tzinfo=dt.timezone.utc)  # naive: UTC
    us = (aware - EPOCH) // dt.timedelta(microseconds=1)
    buf = pa.py_buffer(np.full(n, us, np.int64))
    return pa.Array.from_buffers(pa.timestamp("us", tz="UTC"), n, [None, buf])  # (a cast loads compute)


def text_vectors(texts: list[str | None], provider: EmbeddingProvider | None) -> pa.Array:
    """Embeddings of a derived text column; null where there is no text (silence) or no provider."""
    if provider is None:
        return pa.nulls(len(texts), pa.list_(pa.float32()))
    dim = int(provider.dim)
    present = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
    out = np.zeros((len(texts), dim), dtype=np.float32)
    if present:
        out[present] = provider.embed_batch([texts[i] for i in present])
    have = set(present)
    mask = pa.array([i not in have for i in range(len(texts))])
    return pa.FixedSizeListArray.from_arrays(pa.array(out.reshape(-1), pa.float32()), dim, mask=mask)


def drop_duplicates(
    nearest: Callable[..., tuple[list[str | None], Any]],
    m: Manifest,
    modality: str,
    table: pa.Table,
    rows_item: list[int],
    namespace: str,
    threshold: float,
    same_as: dict[tuple[str, int], str],
) -> pa.Table:
    """``table`` without the rows that duplicate a committed memory or an earlier kept row (``nearest``:
    the store's search of committed memories); ``same_as`` gets the id each dropped row duplicates."""
    import numpy as np

    per_item: dict[int, int] = {}
    for item in rows_item:
        per_item[item] = per_item.get(item, 0) + 1
    vectors = table.column("embedding").combine_chunks().values.to_numpy().reshape(table.num_rows, -1)
    ids = table.column("id").to_pylist()
    best_ids, best = nearest(modality, vectors, namespace, manifest=m)
    keep: list[int] = []
    for r in range(table.num_rows):
        if per_item[rows_item[r]] > 1:  # one window of a long recording: never deduplicated
            keep.append(r)
            continue
        match, score = best_ids[r], float(best[r])
        if keep:  # earlier rows of this batch that are being stored
            sims = vectors[keep] @ vectors[r]
            j = int(np.argmax(sims))
            if float(sims[j]) > score:
                match, score = ids[keep[j]], float(sims[j])
        if match is not None and score >= threshold:
            same_as[(modality, r)] = match
        else:
            keep.append(r)
    return table if len(keep) == table.num_rows else table.take(pa.array(keep, pa.int64()))


def embed_rows(
    provider: EmbeddingProvider,
    rows: list[tuple[int, Any, dict[str, Any]]],
    batch: int,
    progress: Callable[[int], object] | None = None,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Vectors and provider columns of ``rows`` ((item index, payload, extra columns), in input order).

    Texts are embedded in batches of similar length, across the whole call (a batch pads to its longest
    sentence, so batches cut in arrival order from varied sentences do up to twice the work); other
    payloads keep their order. The result is in the order of ``rows``. ``progress(n)`` is told each time
    ``n`` more items have all their rows embedded."""
    order = sorted(range(len(rows)), key=lambda r: len(p) if isinstance(p := rows[r][1], str) else 0)
    left: dict[int, int] = {}
    for i, _, _ in rows:
        left[i] = left.get(i, 0) + 1
    vectors: np.ndarray | None = None
    columns: list[dict[str, Any]] = [{} for _ in rows]
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        vecs, cols = provider.embed_with_columns([rows[r][1] for r in chunk])
        vecs = np.asarray(vecs)
        if vectors is None:
            vectors = np.empty((len(rows), *vecs.shape[1:]), dtype=vecs.dtype)
        vectors[chunk] = vecs
        done = 0
        for r, c in zip(chunk, cols, strict=True):
            columns[r] = {**rows[r][2], **c}
            left[rows[r][0]] -= 1
            done += left[rows[r][0]] == 0
        if progress is not None:
            progress(done)
    if vectors is None:
        vectors = np.empty((0, int(provider.dim)), dtype=np.float32)
    return vectors, columns
