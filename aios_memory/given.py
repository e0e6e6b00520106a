"""Vectors computed elsewhere: ``add_many(items, embeddings=...)`` and ``search(vector=...)``.

A user who embeds in a Ray job or another service hands the store the vectors; the store checks them
against the table they go into (dimension, and the provider that table records: its name and
fingerprint) instead of running a model. Checked before anything is written: a 2-D array of real numbers
with one finite, non-zero row per item, of one modality that has no derived text column (audio rows carry
a transcript and its embedding, which only the store's providers make). Rows are stored unit-normalised
(norms summed in float64; rows kept as float32), as the store's own providers return them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from aios_memory.errors import InvalidInputError, ProviderMismatchError
from aios_memory.modality import Item
from aios_memory.provider import EmbeddingProvider
from aios_memory.schema import TEXT_COLUMN


@dataclass(frozen=True)
class GivenVector:
    """A query vector given by the caller (``search(vector=...)``): one unit row, float32."""

    vector: np.ndarray


def unit_rows(values: Any, n: int | None = None, what: str = "embeddings") -> np.ndarray:
    """``values`` as an ``(n, dim)`` float32 array of unit rows; ``InvalidInputError`` when it is not one."""
    if isinstance(values, (pa.ChunkedArray, pa.Array)):
        arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
        if not pa.types.is_fixed_size_list(arr.type) or arr.null_count:
            raise InvalidInputError(f"{what} as Arrow must be a fixed-size list array without nulls")
        values = arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), arr.type.list_size)
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise InvalidInputError(f"{what} must be a rectangular array of numbers: {exc}") from None
    if arr.dtype.kind not in "fiu":
        raise InvalidInputError(f"{what} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise InvalidInputError(f"{what} must be a 2-D array (one row per item), got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise InvalidInputError(f"{what} has {arr.shape[0]} rows for {n} items")
    if arr.dtype != np.float32:  # other widths are widened once; float32 (the common case) is not copied
        arr = arr.astype(np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", arr, arr, dtype=np.float64))  # summed in float64
    if not np.isfinite(norms).all():  # a NaN or an infinity in a row makes its norm one too
        if not np.isfinite(arr).all():
            raise InvalidInputError(f"{what} contains NaN or infinite values")
        raise InvalidInputError(f"{what} has a row too large to normalise (its norm overflows float64)")
    if (norms == 0).any():
        raise InvalidInputError(f"{what} row {int(np.flatnonzero(norms == 0)[0])} is all zeros")
    if arr.dtype == np.float32 and np.all(np.abs(norms - 1.0) <= 1e-6):
        return np.ascontiguousarray(arr)  # unit rows already (most embedding jobs normalise)
    if arr.dtype == np.float32 and 1e-30 < norms.min() and norms.max() < 1e30:
        return arr / norms.astype(np.float32)[:, None]  # one pass; the norm was summed in float64
    return (arr / norms[:, None]).astype(np.float32)


def query_of(query: Any, vector: Any) -> Any:
    """What ``search`` ranks by: the query, or a :class:`GivenVector` (exactly one of the two)."""
    if vector is None:
        if query is None:
            raise InvalidInputError("search needs a query or a vector")
        return query
    if query is not None:
        raise InvalidInputError("search takes a query or a vector, not both")
    arr = np.asarray(vector) if not isinstance(vector, (pa.Array, pa.ChunkedArray)) else vector
    if isinstance(arr, np.ndarray) and arr.ndim == 1:
        arr = arr[None, :]
    return GivenVector(unit_rows(arr, 1, "the query vector")[0])


def single_modality(items: list[Item]) -> str:
    """The one modality of ``items``; given vectors live in one table's space."""
    kinds = sorted({it.modality for it in items})
    if len(kinds) != 1:
        raise InvalidInputError(f"embeddings= needs items of one modality, got {', '.join(kinds)}")
    if kinds[0] in TEXT_COLUMN:
        raise InvalidInputError(
            f"embeddings= is for text and image memories: {kinds[0]} rows also carry a transcript and "
            "its embedding, which the store's providers make (add them without embeddings=)"
        )
    return kinds[0]


def check_table(provider: EmbeddingProvider, vectors: np.ndarray, modality: str, named: str | None) -> None:
    """Given vectors fit ``modality``'s table of ``provider`` (``named``: the provider the caller said)."""
    if named is not None and named != provider.name:
        raise ProviderMismatchError(
            f"the vectors were made by {named!r}, but {modality} memories here are embedded with "
            f"{provider.name!r}; add them to a store whose {modality} table uses {named!r}"
        )
    if vectors.shape[1] != int(provider.dim):
        raise InvalidInputError(
            f"the vectors have {vectors.shape[1]} dimensions; {modality} memories here hold "
            f"{int(provider.dim)} ({provider.name})"
        )
