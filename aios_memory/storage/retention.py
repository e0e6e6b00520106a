"""Retention: removing superseded versions and the files no retained version names.

Versions go oldest first and only as a contiguous run (so probing forward from any retained one finds
the newest); a data file goes only when no retained manifest names it and it is itself older than the
retention period, so a commit in progress on another host keeps its not-yet-named fragments.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from aios_memory.errors import StoreError
from aios_memory.storage.manifest import VERSIONS, manifest_name

if TYPE_CHECKING:
    from aios_memory.storage.commit import Storage

CLEANUP_BATCH = 256  # files deleted per hold of the writers' lock
TMP_GRACE = 60.0  # seconds: temp files younger than this may belong to a commit in progress
TOMBSTONE_AGE = 86_400.0  # seconds a retired manifest's name stays taken on object storage


def cleanup(storage: Storage, older_than: float, keep_versions: int = 1) -> dict[str, int | float]:
    """Delete manifests superseded more than ``older_than`` seconds ago (the newest ``keep_versions`` always stay), then the data files no remaining manifest
    names that are themselves that old. ``files_removed`` counts a fragment and its sidecars as one.

    Works in small steps: the listing and the reading of manifests run without the writers' lock;
    each batch of deletions holds it briefly, after taking in the versions committed meanwhile.
    """
    from aios_memory.storage.cache import CACHE

    problems = storage.containment_problems()
    if problems:
        raise StoreError(f"cleanup refused: {problems[0]}")
    now, held, stems = time.time(), 0.0, set()
    removed_versions = 0
    versions = storage.versions()
    keep = set(versions[-max(1, keep_versions) :])
    doomed = []
    for v, successor in zip(versions, versions[1:], strict=False):
        # age counts from when v stopped being the newest: a reader may have opened it until then.
        # Only a run of the oldest versions goes, never one between two kept ones: the retained
        # versions stay contiguous, so probing forward from any of them finds the newest.
        try:
            superseded = storage.backend.mtime(manifest_name(successor))
        except FileNotFoundError:
            break
        if v in keep or now - superseded <= older_than:
            break
        doomed.append(v)
    for name in storage.backend.list(VERSIONS):  # crashed writers' temp manifests, stale hint temps
        if name.startswith(".tmp-") and storage.backend.is_file(f"{VERSIONS}/{name}"):
            try:  # a live writer's temp file exists for milliseconds: never one younger than a minute
                if now - storage.backend.mtime(f"{VERSIONS}/{name}") > max(older_than, TMP_GRACE):
                    storage.backend.delete(f"{VERSIONS}/{name}")
            except FileNotFoundError:
                pass
    for v in doomed:  # old manifests: no writer reads them, so no lock is needed
        storage.backend.retire(manifest_name(v))  # deleted locally; an empty tombstone on object storage
        removed_versions += 1
    for rel, mtime in storage.backend.tombstones(VERSIONS):
        if now - mtime > TOMBSTONE_AGE:  # far older than any attempt may build (STALE_BUILD)
            storage.backend.delete(rel)
    retained = [v for v in versions if v not in set(doomed)]
    referenced = storage._referenced(retained)
    seen = max(retained, default=0)
    candidates = []
    for rel in storage.unreferenced_files(referenced):
        try:
            if now - storage.backend.mtime(rel) > older_than:
                candidates.append(rel)
        except FileNotFoundError:
            pass
    for start in range(0, len(candidates), CLEANUP_BATCH):
        with storage.writer_lock():
            t0 = time.perf_counter()
            latest = storage.latest_version()  # versions committed since we read: their files stay
            referenced |= storage._referenced(list(range(seen + 1, latest + 1)))
            seen = max(seen, latest)
            gone = []
            for rel in candidates[start : start + CLEANUP_BATCH]:
                if rel not in referenced and storage.backend.contained(rel):
                    storage.backend.delete(rel)
                    gone.append(rel)
            held = max(held, time.perf_counter() - t0)
        CACHE.forget(storage.backend.uri(rel) for rel in gone)  # no handle keeps them allocated
        stems.update(Path(rel).name.split(".")[0] for rel in gone)  # a uuid: fragment + sidecars
    return {
        "versions_removed": removed_versions,
        "files_removed": len(stems),
        "lock_held_max_s": round(held, 6),
    }
