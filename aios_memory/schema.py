"""The Arrow schema of a memory table, one per modality; the provider's fingerprint rides in its metadata."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

SCHEMA_VERSION = 1
META_KEY = b"aios_memory"

_COMMON = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("namespace", pa.string(), nullable=False),
    pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("updated_at", pa.timestamp("us", tz="UTC")),
    pa.field("source", pa.string()),
    pa.field("content", pa.string()),  # text memories: the text
    pa.field("media", pa.large_binary()),  # image / audio memories: the original bytes
    pa.field("media_type", pa.string()),
    pa.field("metadata", pa.string()),  # JSON object
    pa.field("provider", pa.string(), nullable=False),
]


# Columns a modality's provider may fill beside the embedding (``EmbeddingProvider.expand`` and
# ``_embed_with_columns``). Audio: the window a row covers, and the transcript, which the store embeds
# with its text provider into ``transcript_embedding`` so that text queries can find audio.
EXTRA_COLUMNS: dict[str, list[pa.Field]] = {
    "text": [],
    "image": [],
    "audio": [
        pa.field("start_s", pa.float64()),
        pa.field("end_s", pa.float64()),
        pa.field("transcript", pa.string()),
    ],
    # Video: one row per segment; ``embedding`` is the pooled (mean) CLIP vector of its sampled frames,
    # ``frame_embedding`` its representative frame's, ``thumbnail`` that frame as a small JPEG.
    "video": [
        pa.field("start_s", pa.float64()),
        pa.field("end_s", pa.float64()),
        pa.field("transcript", pa.string()),
        pa.field("frame_embedding", pa.list_(pa.float32())),
        pa.field("thumbnail", pa.binary()),
    ],
}
TEXT_COLUMN = {"audio": "transcript", "video": "transcript"}
# Extra columns a client does not see in ``Memory.as_dict`` (CLI --json, MCP): a vector and image bytes.
# ``Memory.extra`` still holds them (the web page reads the thumbnail there).
HIDDEN_EXTRA = frozenset({"frame_embedding", "thumbnail"})  # the derived text column of a modality, if any


def _vec(dim: int | None) -> pa.DataType:
    return pa.list_(pa.float32(), int(dim)) if dim else pa.list_(pa.float32())


def base_schema(
    modality: str, dim: int | None, fingerprint: dict[str, Any] | None = None, text_dim: int | None = None
) -> pa.Schema:
    """Schema of ``<modality>_memories``; ``dim=None`` gives the schema of an empty table (no vectors yet)."""
    meta = {"modality": modality, "dim": dim, "schema_version": SCHEMA_VERSION, **(fingerprint or {})}
    fields = [*_COMMON, *EXTRA_COLUMNS[modality], pa.field("embedding", _vec(dim), nullable=False)]
    if modality in TEXT_COLUMN:
        fields.append(pa.field(f"{TEXT_COLUMN[modality]}_embedding", _vec(text_dim)))
    return pa.schema(fields, metadata={META_KEY: json.dumps(meta)})


# The change log: one row per update or delete, holding the memory as it was *before* that change. With
# the current row (or the absence of one) it gives each memory's whole timeline; see ``history()``.
HISTORY_SCHEMA = pa.schema(
    [
        pa.field("memory_id", pa.string(), nullable=False),
        pa.field("modality", pa.string(), nullable=False),
        pa.field("namespace", pa.string(), nullable=False),
        pa.field("version", pa.int64(), nullable=False),  # the store version that made the change
        pa.field("at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("operation", pa.string(), nullable=False),  # "update" | "delete"
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
        pa.field("updated_at", pa.timestamp("us", tz="UTC")),
        pa.field("source", pa.string()),
        pa.field("content", pa.string()),
        pa.field("media_type", pa.string()),
        pa.field("media_sha256", pa.string()),
        pa.field("metadata", pa.string()),
        pa.field("transcript", pa.string()),
    ],
    metadata={META_KEY: json.dumps({"table": "history", "schema_version": SCHEMA_VERSION})},
)
HISTORY_DIR = "_history"  # data/_history/<uuid>.parquet
