"""The commit protocol: numbered manifests created exclusively over immutable, checksummed files.

Layout of a store directory::

    _versions/00000000000000000007.manifest.json   one file per committed version, never rewritten
    _versions/_latest                               a hint: a recent version number (advisory)
    data/<modality>/<uuid>.parquet                  immutable fragments, named once, never listed by readers
    data/<modality>/<uuid>.embedding.f32            its sidecars: raw vectors (+ norms) and created_at,
    data/<modality>/<uuid>.created_at.i64           memory-mapped by searches (see :mod:`aios_memory.vectors`)
    .lock                                           the writers' lock (filelock); readers never take it
    _maintenance.json                               maintenance that failed after a commit (``doctor``)

A commit writes its files (fsynced, sha256 taken as they are written), then creates manifest ``v+1``
exclusively. Readers read the newest manifest and exactly the files it names, so a crashed writer's
leftovers are invisible to them. The newest version is found from the hint plus a probe of the next
names, O(1) at any version count (as Lance does). ``cleanup`` removes versions superseded more than the
retention period ago and files no retained version names, in small steps, each under the lock briefly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock, Timeout

from aios_memory.errors import (
    NOT_FOUND_HINT,
    CommitConflictError,
    InvalidInputError,
    StoreCorruptError,
    StoreError,
    StoreNotFoundError,
    VersionNotFoundError,
)
from aios_memory.storage.local import ROW_GROUP_ROWS, LocalBackend
from aios_memory.storage.manifest import DATA, DERIVED, VERSIONS, Fragment, Manifest, manifest_name
from aios_memory.storage.objectstore import S3Backend
from aios_memory.storage.s3config import is_remote

Backend = LocalBackend | S3Backend

LOCK = ".lock"
HINT = f"{VERSIONS}/_latest"
STALE_BUILD = 3600.0  # seconds: an attempt whose build took longer is built again, not committed
MAINTENANCE = "_maintenance.json"
DEFAULT_RETENTION = 3600.0  # seconds a superseded version stays readable (``cleanup``'s default)
_MANIFEST_RE = re.compile(r"^(\d{20})\.manifest\.json$")
_DATA_FILE_RE = re.compile(r"^[0-9a-f]{32}\.")  # fragments, their sidecars and index files: <uuid>.<what>


PARALLEL_BYTES = 8 << 20  # a batch this big writes its Parquet file and sidecars on threads


class Storage:
    """Versioned fragments and manifests of one store directory."""

    def __init__(
        self,
        root: str | Path,
        *,
        storage_options: Mapping[str, Any] | None = None,
        create: bool = True,
        lock_timeout: float = 60.0,
        retention: float = DEFAULT_RETENTION,
    ) -> None:
        self.backend: Backend
        self.created = False  # this object made the (local) store's directories
        if is_remote(root):
            self.backend = S3Backend(str(root), storage_options)
            self.root: Any = self.backend.root
            self.backend.lock_path()  # a bad lock_dir is refused before any request
            if not create and not self.backend.list(VERSIONS):
                raise StoreNotFoundError(f"no store at {self.root}{NOT_FOUND_HINT}")
            self.backend.check_conditional_put()
        else:
            if storage_options:
                raise InvalidInputError(
                    f"storage_options are for object storage (s3://...); {root} is a local path"
                )
            self.root = Path(root).absolute()
            self.backend = LocalBackend(self.root)
            self._make_local(create)
        self.lock_timeout = lock_timeout
        self.retention = float(retention)
        self.manifest_reads = 0  # how many manifests this object has read (searches read one per call)
        self.conflicts = 0  # commits this object retried because another writer created that version
        self._known = 0  # the newest version this object has seen: probing for newer ones starts there
        self._lock = FileLock(self.backend.lock_path())

    def _make_local(self, create: bool) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"{self.root} exists and is not a directory")
        if not create and not (self.root / VERSIONS).is_dir():  # a mistyped path is not a new store
            raise StoreNotFoundError(f"no store at {self.root}{NOT_FOUND_HINT}")
        if not self.root.exists():
            self.root.mkdir(parents=True, exist_ok=True)  # another thread or process may create it first
            LocalBackend(self.root.parent).fsync_dir(".")
        if not (self.root / VERSIONS).is_dir() or not (self.root / DATA).is_dir():
            self.created = not (self.root / VERSIONS).is_dir()
            (self.root / VERSIONS).mkdir(exist_ok=True)
            (self.root / DATA).mkdir(exist_ok=True)
            self.backend.fsync_dir(".")

    # --- reading ---------------------------------------------------------------------------------------
    def versions(self) -> list[int]:
        """Every retained version, listed (O(versions): for maintenance, not for reads)."""
        out = []
        for name in self.backend.list(VERSIONS, nonempty=True):  # not the tombstones of retired ones
            m = _MANIFEST_RE.match(name)
            if m:
                out.append(int(m.group(1)))
        return sorted(out)

    def has_version(self, version: int) -> bool:
        return version == 0 or self.backend.retained(manifest_name(version))

    def latest_version(self) -> int:
        """The newest version: from the newest this object has seen (if still there; else the hint), a
        probe of the next names until one is missing: two existence checks per call when nothing changed."""
        v = self._known
        if v > 0 and not self.has_version(v):  # cleanup removed it since: the chain may have a gap there
            v = 0
        if v <= 0:
            try:
                v = int(self.backend.read_bytes(HINT))
            except (OSError, ValueError):
                v = 0
            if v <= 0 or not self.has_version(v):  # no hint yet, or a damaged or stale one: list once
                listed = self.versions()
                v = listed[-1] if listed else 0
        while self.backend.exists(manifest_name(v + 1)):
            v += 1
        self._known = v
        return v

    def read_manifest(self, version: int | None = None) -> Manifest:
        """The manifest of ``version`` (default: the newest). Version 0 is the empty store."""
        self.manifest_reads += 1
        newest = version is None
        if version is None:
            version = self.latest_version()
        if version == 0:
            return Manifest()
        rel = manifest_name(version)
        try:
            raw = self.backend.read_bytes(rel)
        except FileNotFoundError:
            raw = b""
        if not raw:  # removed, or retired by cleanup (an empty tombstone on object storage)
            if newest and self._known:  # the store was replaced under this object: start afresh
                self._known = 0
                return self.read_manifest()
            raise self.version_gone(version)
        m = Manifest.from_bytes(raw, self.backend.uri(rel))
        if m.version != version:
            raise StoreCorruptError(f"manifest {rel} says it is version {m.version}")
        return m

    def version_gone(self, version: int) -> VersionNotFoundError:
        latest = self.latest_version()
        if version > latest:
            return VersionNotFoundError(f"store {self.root} has no version {version} (newest: {latest})")
        return VersionNotFoundError(
            f"version {version} of store {self.root} is no longer retained: cleanup removed it after its "
            f"retention period (the newest is {latest}; open that, or keep versions longer)"
        )

    def read_table(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        """Parquet file ``rel`` (or those ``columns`` of it), read through the backend."""
        with self.backend.open_input(rel) as f:
            return pq.read_table(f, columns=columns)

    def uri(self, rel: str) -> str:
        """Where ``rel`` lives (an absolute path, or ``s3://...``): the key of its cache entries."""
        return self.backend.uri(rel)

    # --- writing ---------------------------------------------------------------------------------------
    @contextmanager
    def writer_lock(self, timeout: float | None = None) -> Iterator[None]:
        wait = self.lock_timeout if timeout is None else timeout
        try:
            with self._lock.acquire(timeout=wait):
                yield
        except Timeout:
            raise StoreError(
                f"another process has held the write lock of {self.root} for {wait:.0f}s; nothing was written"
            ) from None

    def attach_sidecar(self, frag: Fragment, suffix: str, chunks: list[Any]) -> Fragment:
        """``frag`` with one more sidecar, written now (derived data a fragment from before it existed
        lacks: content digests); the caller puts the returned entry into the manifest it commits."""
        rel = frag.sidecar_path(suffix)
        try:
            nbytes, digest = self.backend.write_new(rel, chunks)
        except FileExistsError:  # left by an attempt that did not commit: reused if it holds the same
            if not self.backend.is_local:  # (hosts share no lock: another's cleanup may be removing it)
                raise
            data = b"".join(bytes(c) for c in chunks)
            if self.backend.map(rel).tobytes() != data:
                raise
            nbytes, digest = len(data), hashlib.sha256(data).hexdigest()
        return dataclasses.replace(
            frag,
            sidecars=(*frag.sidecars, suffix),
            sidecar_nbytes=frag.sidecar_nbytes + nbytes,
            checksums=(*frag.checksums, (suffix, digest)),
        )

    def write_fragment(self, modality: str, table: pa.Table, digests: Any = None) -> Fragment:
        """Write ``table`` as a new fragment plus its sidecars (raw vectors, created_at, the content
        ``digests`` if computed already), all fsynced and hashed. A failure (a full disk) removes what
        this call wrote."""
        from aios_memory.storage.sidecars import sidecar_buffers

        name = uuid.uuid4().hex
        stem, derived = f"{DATA}/{modality}/{name}", f"{DATA}/{modality}/{DERIVED}/{name}"
        jobs: list[tuple[str, str, Callable[[], tuple[int, str]]]] = [
            (
                "parquet",
                f"{stem}.parquet",
                lambda: self.backend.write_parquet(f"{stem}.parquet", table, ROW_GROUP_ROWS),
            )
        ]
        # Big batches (and every batch on object storage: one round trip for the puts, not several) write
        # their files on threads: Parquet encoding, hashing and writes release the GIL, so the vectors'
        # sidecar is computed and written while the Parquet file is. A small add stays on this thread.
        pool = ThreadPoolExecutor(4) if not self.backend.is_local or table.nbytes >= PARALLEL_BYTES else None
        futures = [pool.submit(jobs[0][2])] if pool is not None else []
        try:
            for suffix, chunks in sidecar_buffers(table, digests):
                rel = f"{derived}.{suffix}"
                jobs.append((suffix, rel, lambda rel=rel, chunks=chunks: self.backend.write_new(rel, chunks)))
                if pool is not None:
                    futures.append(pool.submit(jobs[-1][2]))
            if pool is None:
                done = [job() for _s, _r, job in jobs]
            else:
                done = [f.result() for f in futures]
        except BaseException:
            if pool is not None:
                pool.shutdown(wait=True)  # nothing may still be writing what is removed next
            for _s, rel, _j in jobs:  # what was written of them (a missing one is no error)
                try:
                    self.backend.delete(rel)
                except OSError:
                    pass  # an orphan: invisible to readers, cleanup's after the retention period
            raise
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
        sums = tuple((suffix, digest) for (suffix, _r, _j), (_n, digest) in zip(jobs, done, strict=True))
        nbytes, suffixes = done[0][0], tuple(s for s, _r, _j in jobs[1:])
        side = sum(n for n, _d in done[1:])
        return Fragment(f"{stem}.parquet", table.num_rows, nbytes, suffixes, side, sums, derived=True)

    def commit(
        self, operation: str, build: Callable[[Manifest], Manifest | None], *, once: bool = False
    ) -> Manifest:
        """Commit the manifest ``build`` derives from the newest one (``None``: nothing to commit).

        The create-only put of manifest ``v+1`` is the commit point. Writers that share this host's
        lock take turns; writers that do not (other hosts on object storage) race, and the loser
        re-reads the newest version and runs ``build`` again on it: an append simply lands on top, a
        rewrite (delete, update, compaction) re-reads what it changes from that version, so nothing
        it validated can have changed under it. Retries back off with full jitter until the lock
        time-out has passed; with ``once`` (maintenance that the next commit plans afresh anyway), a
        lost race raises ``CommitConflictError`` at once. If this raises, nothing was committed; once
        it returns, nothing after the commit point raised.
        """
        deadline = time.monotonic() + self.lock_timeout
        with self.writer_lock():
            attempt = 0
            while True:
                try:
                    started = time.monotonic()
                    base = self.read_manifest()
                    new = build(base.copy())
                    if new is None:
                        return base
                    fresh = new.fragment_paths() - base.fragment_paths()
                    for folder in sorted({str(Path(p).parent) for p in fresh}):
                        self.backend.fsync_dir(folder)
                    new.version = base.version + 1
                    # never before the version it follows (a clock stepped back, another host's clock):
                    # as_of=datetime finds versions by a binary search over these times
                    new.created_at = max(time.time(), base.created_at)
                    new.operation = operation
                    name = manifest_name(new.version)
                    # a build that took longer than STALE_BUILD (cleanup's tombstones outlive it many
                    # times over) is built again on the newest version, not committed on an old one
                    created = time.monotonic() - started < STALE_BUILD and self.backend.create_exclusive(
                        name, new.to_bytes()
                    )
                except OSError as exc:  # a full disk, a read-only or vanished directory, a failed request
                    raise StoreError(
                        f"could not write to store {self.root} ({exc.strerror or exc}); nothing was committed"
                    ) from exc
                if created:  # committed: nothing below may raise
                    self._known = max(self._known, new.version)
                    try:
                        self.backend.replace(HINT, str(new.version).encode())
                    except OSError:
                        pass  # advisory: readers probe past a stale hint
                    return new
                self.conflicts += 1
                attempt += 1
                if once or time.monotonic() >= deadline:
                    raise CommitConflictError(
                        f"could not commit to {self.root}: other writers kept winning for "
                        f"{self.lock_timeout:.0f}s ({attempt} tries); nothing was committed"
                    )
                time.sleep(random.uniform(0.0, min(1.0, 0.005 * 2**attempt)))

    # --- maintenance records -----------------------------------------------------------------------------
    def maintenance(self) -> dict[str, dict[str, object]]:
        """Maintenance that failed after a commit and is retried later: ``{task: {error, at, count}}``."""
        try:
            return json.loads(self.backend.read_bytes(MAINTENANCE))
        except (OSError, ValueError):
            return {}

    def note_maintenance(self, task: str, error: BaseException | None) -> None:
        """Record (or, with ``error=None``, clear) a failed maintenance task; never raises."""
        try:
            if error is None and not self.backend.exists(MAINTENANCE):
                return  # the common case after every commit: one stat
            notes = self.maintenance()
            if error is None:
                if task not in notes:
                    return
                del notes[task]
            else:
                count = int(notes.get(task, {}).get("count", 0)) + 1  # type: ignore[call-overload]
                notes[task] = {"error": f"{type(error).__name__}: {error}", "at": time.time(), "count": count}
            self.backend.replace(MAINTENANCE, json.dumps(notes, sort_keys=True).encode())
        except OSError:
            pass

    # --- cleanup -----------------------------------------------------------------------------------------
    def unreferenced_files(self, keep: set[str]) -> list[str]:
        return sorted(
            rel
            for rel in self.backend.walk_files(DATA)
            if rel not in keep and _DATA_FILE_RE.match(Path(rel).name)
        )

    def containment_problems(self) -> list[str]:
        """Symlinked directories in the store: a store makes none, and cleanup will not work through one."""
        return self.backend.containment_problems([DATA, VERSIONS])

    def _referenced(self, versions: list[int]) -> set[str]:
        out: set[str] = set()
        for v in versions:
            try:
                out |= self.read_manifest(v).fragment_paths()
            except VersionNotFoundError:
                continue  # removed meanwhile by another cleanup
        return out

    def cleanup(self, older_than: float | None = None, keep_versions: int = 1) -> dict[str, int | float]:
        """Delete superseded versions and unreferenced files older than the retention period (see
        :func:`aios_memory.storage.retention.cleanup`)."""
        from aios_memory.storage.retention import cleanup

        return cleanup(self, self.retention if older_than is None else float(older_than), keep_versions)
