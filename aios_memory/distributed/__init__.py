"""Distributed ingestion on Ray Data (``pip install "aios-memory[ray]"``).

- :class:`~aios_memory.distributed.embed.Embed`: the callable class for ``ds.map_batches``; each actor
  resolves its provider as the store does and loads the model once, then turns batches of files (paths)
  or bytes into Arrow rows of the store's table schema, vectors included;
- :class:`~aios_memory.distributed.ray_data.MemoryDatasink`: each write task writes fragments, the driver
  commits all of them in one version (``on_write_complete``) or nothing (``on_write_failed``);
- :func:`~aios_memory.distributed.ray_data.ingest_ray`: a folder into a store, one version per job.

Importing this package imports neither Ray nor pyarrow: the names load on first use, and the core
modules of ``aios_memory`` never import Ray at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aios_memory.distributed.commit import Part, commit_parts
    from aios_memory.distributed.embed import Embed
    from aios_memory.distributed.ray_data import MemoryDatasink, SinkWrite, ingest_ray

_LAZY = {
    "Embed": "aios_memory.distributed.embed",
    "Part": "aios_memory.distributed.commit",
    "commit_parts": "aios_memory.distributed.commit",
    "MemoryDatasink": "aios_memory.distributed.ray_data",
    "SinkWrite": "aios_memory.distributed.ray_data",
    "ingest_ray": "aios_memory.distributed.ray_data",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'aios_memory.distributed' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = ["Embed", "MemoryDatasink", "Part", "SinkWrite", "commit_parts", "ingest_ray"]
