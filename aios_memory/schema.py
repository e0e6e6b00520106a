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


def base_schema(modality: str, dim: int | None, fingerprint: dict[str, Any] | None = None) -> pa.Schema:
    """Schema of ``<modality>_memories``; ``dim=None`` gives the schema of an empty table (no vectors yet)."""
    vec = pa.list_(pa.float32(), int(dim)) if dim else pa.list_(pa.float32())
    meta = {"modality": modality, "dim": dim, "schema_version": SCHEMA_VERSION, **(fingerprint or {})}
    return pa.schema(
        [*_COMMON, pa.field("embedding", vec, nullable=False)], metadata={META_KEY: json.dumps(meta)}
    )
