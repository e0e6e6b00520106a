"""Duplicates: what a write does with a memory the store already holds.

The rule (``dedupe=`` of ``MemoryStore`` and of each write):

- **exact** (the default): an item whose content (a text's characters; an image's or a recording's
  bytes) equals a stored memory's of the same modality and namespace is not stored again; the write
  returns the stored memory's id (all its rows' ids, for a recording split into windows), and its
  metadata and source are not applied. Repeats inside one call are stored once, too. Metadata does not
  count: the same sentence with other metadata is the same memory.
- a cosine threshold (``True`` means :data:`DEFAULT_DEDUPE`): exact duplicates, and also items whose
  embedding is at least that similar to a stored one (near-duplicate merging, opt-in).
- ``False``: every item is stored, repeats included (a caller storing a repeat on purpose).

Exact duplicates are found by 16-byte content digests that every fragment carries as a derived sidecar
(:func:`aios_memory.storage.sidecars.fragment_digests`): a lookup compares digests, never contents, and
``add_many`` skips the model for items it finds. The check is made again inside the commit, under the
writers' lock, so two writers adding the same memory store it once.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from aios_memory.errors import InvalidInputError
from aios_memory.modality import Item
from aios_memory.rows import drop_duplicates
from aios_memory.schema import TEXT_COLUMN
from aios_memory.storage import Manifest, Storage
from aios_memory.storage.sidecars import (
    DIGEST_SUFFIX,
    NO_DIGEST,
    content_digest,
    fragment_digests,
    fragment_times,
    namespace_rows,
    read_rows,
)

DEFAULT_DEDUPE = 0.97  # cosine at or above which ``dedupe=True`` treats two memories as the same
EXACT = math.inf  # the policy "exact duplicates only": a threshold no cosine reaches


def policy(dedupe: float | bool | str | None, default: float | None) -> float | None:
    """``dedupe=`` as the store applies it: ``None`` (store every item), :data:`EXACT`, or a cosine
    threshold in (0, 1] (near duplicates too). ``None`` as the argument means ``default``."""
    if dedupe is None:
        return default
    if dedupe is False:
        return None
    if dedupe is True:
        return DEFAULT_DEDUPE
    if isinstance(dedupe, str) and dedupe.strip().lower() == "exact":
        return EXACT
    if isinstance(dedupe, numbers.Real) and 0.0 < float(dedupe) <= 1.0:
        return float(dedupe)
    raise InvalidInputError(
        f"dedupe must be 'exact', a cosine threshold in (0, 1], True or False; got {dedupe!r}"
    )


def stored_copies(
    storage: Storage,
    m: Manifest,
    modality: str,
    namespace: str,
    digests: Sequence[bytes],
    attach: bool = False,
) -> dict[bytes, list[str]]:
    """For each of ``digests`` that a committed memory of ``modality`` in ``namespace`` has: the ids of
    its first stored copy (one row, or one recording's windows in order). With ``attach`` (inside a
    commit of ``m``), a fragment from before digests gets the sidecar its digests were computed for,
    so that the Parquet columns are hashed once per store, not once per process."""
    state = m.tables.get(modality)
    wanted = {d for d in digests if d != NO_DIGEST}
    if state is None or not wanted:
        return {}
    firsts = np.frombuffer(b"".join(wanted), "<u8").reshape(-1, 2)[:, 0]
    out: dict[bytes, list[str]] = {}
    for pos, frag in enumerate(state.fragments):
        if not frag.rows or len(out) == len(wanted):
            continue
        table = fragment_digests(storage, frag)
        if attach and DIGEST_SUFFIX not in frag.sidecars:
            try:
                state.fragments[pos] = storage.attach_sidecar(frag, DIGEST_SUFFIX, [table.tobytes()])
            except OSError:  # (one left by an attempt that did not commit): computed again next time
                pass
        col = table.view("<u8")[:, 0]
        # one item (an agent's single add): a comparison, not np.isin's sort (~20 us per fragment)
        hit = np.flatnonzero(col == firsts[0] if len(firsts) == 1 else np.isin(col, firsts))
        if hit.size:
            hit = namespace_rows(storage, frag, namespace, among=hit)
        rows: dict[bytes, list[int]] = {}
        for r in hit.tolist():
            d = table[r].tobytes()
            if d in wanted and d not in out:
                rows.setdefault(d, []).append(r)
        if not rows:
            continue
        times = fragment_times(storage, frag)
        for d, rs in rows.items():  # the first copy was added by one commit: rows of its timestamp
            rows[d] = [r for r in rs if times[r] == times[rs[0]]]
        windows = modality in TEXT_COLUMN  # a recording: one row per window (start_s)
        every = sorted(r for rs in rows.values() for r in rs)
        got = read_rows(storage, frag, np.array(every), ["id", "start_s"] if windows else ["id"])
        ids = dict(zip(every, got.column("id").to_pylist(), strict=True))
        starts = dict(zip(every, got.column("start_s").to_pylist(), strict=True)) if windows else {}
        for d, rs in rows.items():
            if windows:  # one copy: the first row of each window, in window order (an update moves a row)
                first: dict[Any, int] = {}
                for r in rs:
                    first.setdefault(starts[r], r)
                rs = [first[k] for k in sorted(first, key=lambda s: -1.0 if s is None else s)]
            else:  # texts and images are one row each; more rows are copies stored on purpose
                rs = rs[:1]
            out[d] = [ids[r] for r in rs]
    return out


class HeldChanged(Exception):
    """A memory a write found before embedding is not in the newest version any more: start again."""


def held_check(
    storage: Storage, items: Sequence[Item], held: dict[int, list[str]], namespace: str
) -> Callable[[Manifest], None]:
    """For the commit of a write that found ``held`` (item -> ids) stored before embedding: a check of
    the newest version, under the writers' lock, raising :class:`HeldChanged` if one is gone."""
    digests = {i: content_digest(items[i].content, items[i].media) for i in held}
    by_modality: dict[str, list[int]] = {}
    for i in held:
        by_modality.setdefault(items[i].modality, []).append(i)

    def check(m: Manifest) -> None:
        for mod, idx in by_modality.items():
            copies = stored_copies(storage, m, mod, namespace, [digests[i] for i in idx])
            if any(copies.get(digests[i]) != held[i] for i in idx):
                raise HeldChanged

    return check


def item_digests(items: Sequence[Item]) -> list[bytes]:
    """:func:`content_digest` of each item: equal to the digest of each row the item becomes."""
    return [content_digest(it.content, it.media) for it in items]


def known_items(
    storage: Storage, m: Manifest, items: Sequence[Item], namespace: str, digests: list[bytes] | None = None
) -> tuple[dict[int, list[str]], dict[int, int]]:
    """Before embedding: ``(stored, repeats)``: the ids of the items already stored, and for an item
    repeating an earlier one of ``items``, that one's index (``digests``: :func:`item_digests`)."""
    digests = item_digests(items) if digests is None else digests
    stored: dict[int, list[str]] = {}
    by_modality: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        by_modality.setdefault(it.modality, []).append(i)
    for mod, idx in by_modality.items():
        copies = stored_copies(storage, m, mod, namespace, [digests[i] for i in idx])
        stored.update((i, copies[digests[i]]) for i in idx if digests[i] in copies)
    return stored, _repeats(digests, range(len(items)), stored)


def _repeats(digests: Any, order: Any, skip: Any) -> dict[int, int]:
    """``{i: first}`` for each ``i`` in ``order`` (not in ``skip``) whose digest an earlier one has."""
    first: dict[bytes, int] = {}
    out: dict[int, int] = {}
    for i in order:
        if i in skip or digests[i] == NO_DIGEST:
            continue
        j = first.setdefault(digests[i], i)
        if j != i:
            out[i] = j
    return out


def drop_exact(
    storage: Storage,
    m: Manifest,
    modality: str,
    table: pa.Table,
    row_items: list[int],
    namespace: str,
    digests: np.ndarray,
) -> tuple[list[int], dict[int, list[str]], dict[int, int]]:
    """Inside a commit: ``(kept rows, stored, repeats)``: the rows of ``table`` to write, the ids of the
    items already committed, and for an item repeating an earlier item of this batch, that item."""
    first_row: dict[int, int] = {}
    for r, item in enumerate(row_items):
        first_row.setdefault(item, r)
    item_digest = {item: digests[r].tobytes() for item, r in first_row.items()}
    copies = stored_copies(storage, m, modality, namespace, list(item_digest.values()), attach=True)
    stored = {item: copies[d] for item, d in item_digest.items() if d in copies}
    repeats = _repeats(item_digest, list(first_row), stored)
    kept = [r for r, item in enumerate(row_items) if item not in stored and item not in repeats]
    return kept, stored, repeats


def rows_to_write(
    storage: Storage,
    nearest: Callable[..., Any],
    m: Manifest,
    modality: str,
    table: pa.Table,
    row_items: list[int],
    namespace: str,
    dedupe: float,
    digests: np.ndarray,
    found: tuple[dict[int, list[str]], dict[int, int], dict[tuple[str, int], str]],
) -> list[int]:
    """Inside a commit, under ``dedupe``: the rows of ``table`` to write. ``found`` gets the items held
    already (their ids), the items repeating an earlier one, and (with a threshold) the rows whose near
    duplicate is stored (``(modality, row)`` -> its id)."""
    stored, repeats, same_as = found
    kept, old, rep = drop_exact(storage, m, modality, table, row_items, namespace, digests)
    stored.update(old)
    repeats.update(rep)
    if dedupe <= 1.0 and kept:
        near: dict[tuple[str, int], str] = {}
        part = table.take(pa.array(kept, pa.int64()))
        items = [row_items[r] for r in kept]
        drop_duplicates(nearest, m, modality, part, items, namespace, dedupe, near)
        same_as.update(((modality, kept[r]), id_) for (_, r), id_ in near.items())
        kept = [r for r in kept if (modality, r) not in same_as]
    return kept


def ids_in_order(
    tables: dict[str, pa.Table],
    row_items: dict[str, list[int]],
    found: tuple[dict[int, list[str]], dict[int, int], dict[tuple[str, int], str]],
) -> list[tuple[int, str]]:
    """After a commit: (input index, id) per row in input order (a recording's windows in order): new
    rows' ids, the stored copy's for items held already, the earlier item's for repeats."""
    stored, repeats, same_as = found
    if not (stored or repeats or same_as) and len(tables) == 1:  # a plain add: the new ids, in row order
        ((mod, table),) = tables.items()
        pairs = zip(row_items[mod], table.column("id").to_pylist(), strict=True)
        return sorted(pairs, key=lambda p: p[0])  # stable: a recording's windows stay in order
    ids: dict[int, list[str]] = {i: list(v) for i, v in stored.items()}
    for mod, table in tables.items():
        for row, (item, id_) in enumerate(zip(row_items[mod], table.column("id").to_pylist(), strict=True)):
            if item not in stored and item not in repeats:
                ids.setdefault(item, []).append(same_as.get((mod, row), id_))
    for item, first in repeats.items():
        ids[item] = ids[first]
    return [(item, id_) for item in sorted(ids) for id_ in ids[item]]
