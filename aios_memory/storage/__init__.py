"""Storage: immutable Parquet fragments committed by numbered manifests. Knows nothing of models.

- :mod:`~aios_memory.storage.manifest`: what a version names (fragments, sidecars, index, change log),
  with sizes and checksums, every path checked to lie inside the store;
- :mod:`~aios_memory.storage.commit`: the commit protocol and the version hint;
- :mod:`~aios_memory.storage.retention`: cleanup of superseded versions and unreferenced files;
- :mod:`~aios_memory.storage.local`: the local filesystem backend, the one place that calls the OS;
- :mod:`~aios_memory.storage.objectstore`: the object-storage backend (``s3://bucket/prefix``);
- :mod:`~aios_memory.storage.sidecars`: the vector and timestamp sidecars written with each fragment;
- :mod:`~aios_memory.storage.ann`: the optional ANN index, derived data checked before it is trusted;
- :mod:`~aios_memory.storage.cache`: the bounded per-process cache of open files and their checks.
"""

from aios_memory.storage.commit import DEFAULT_RETENTION, LOCK, Storage
from aios_memory.storage.local import ROW_GROUP_ROWS, LocalBackend
from aios_memory.storage.manifest import (
    DATA,
    DERIVED,
    STORE_FORMAT,
    VERSIONS,
    Fragment,
    IndexFile,
    Manifest,
    TableState,
    check_path,
    manifest_name,
    plan_compaction,
)

__all__ = [
    "DATA",
    "DERIVED",
    "DEFAULT_RETENTION",
    "LOCK",
    "ROW_GROUP_ROWS",
    "STORE_FORMAT",
    "VERSIONS",
    "Fragment",
    "IndexFile",
    "LocalBackend",
    "Manifest",
    "Storage",
    "TableState",
    "check_path",
    "manifest_name",
    "plan_compaction",
]
