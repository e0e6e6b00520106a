"""Storage: immutable Parquet fragments committed by numbered manifests. Knows nothing of models.

Layout of a store directory::

    _versions/00000000000000000007.manifest.json   one file per committed version, never rewritten
    data/<modality>/<uuid>.parquet                  immutable fragments, named once, never listed by readers
    .lock                                           the writers' lock (filelock); readers never take it

A commit writes its fragments (fsynced), then creates manifest ``v+1`` exclusively: written to a temp
file, fsynced, and hard-linked to its final name, which fails if that version exists (the local form of
an object store's create-only put). Readers read the newest manifest and exactly the files it names, so
a crashed writer's leftovers are invisible to them; ``cleanup`` removes files no retained version names.
Every OS call goes through :class:`LocalBackend`, the seam where an object-store backend would plug in.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock, Timeout

from aios_memory.errors import CommitConflictError, StoreCorruptError, StoreError

STORE_FORMAT = 1
VERSIONS = "_versions"
DATA = "data"
LOCK = ".lock"
_MANIFEST_RE = re.compile(r"^(\d{20})\.manifest\.json$")


class LocalBackend:
    """The storage seam: every file operation the store makes, on a local filesystem."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, rel: str) -> Path:
        return self.root / rel

    def exists(self, rel: str) -> bool:
        return self.path(rel).exists()

    def list(self, rel: str) -> list[str]:
        try:
            return sorted(os.listdir(self.path(rel)))
        except FileNotFoundError:
            return []

    def read_bytes(self, rel: str) -> bytes:
        return self.path(rel).read_bytes()

    def fsync_dir(self, rel: str) -> None:
        fd = os.open(self.path(rel), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def write_parquet(self, rel: str, table: pa.Table) -> int:
        """Write a new immutable file and fsync it; returns its size."""
        p = self.path(rel)
        if not p.parent.is_dir():  # a modality's first fragment: make its directory entry durable too
            p.parent.mkdir(parents=True, exist_ok=True)
            self.fsync_dir(str(Path(rel).parent.parent))
        with open(p, "xb") as f:
            pq.write_table(table, f, compression="zstd")
            f.flush()
            os.fsync(f.fileno())
        return p.stat().st_size

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Create ``rel`` with ``data`` atomically, only if it does not exist. False if it already does."""
        final = self.path(rel)
        tmp = final.with_name(f".tmp-{uuid.uuid4().hex}")
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, final)  # atomic, and fails when the name exists: no reader sees a partial file
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        self.fsync_dir(str(Path(rel).parent))
        return True

    def delete(self, rel: str) -> None:
        self.path(rel).unlink(missing_ok=True)

    def mtime(self, rel: str) -> float:
        return self.path(rel).stat().st_mtime

    def walk_files(self, rel: str) -> Iterator[str]:
        base = self.path(rel)
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                yield str(Path(dirpath, name).relative_to(self.root).as_posix())


@dataclass(frozen=True)
class Fragment:
    path: str  # relative to the store root, posix separators
    rows: int
    nbytes: int


@dataclass
class TableState:
    modality: str
    provider: str
    dim: int
    fingerprint: dict[str, Any]
    fragments: list[Fragment] = field(default_factory=list)
    # The provider (and its dim) that embeds this table's derived text column, e.g. audio transcripts.
    text_provider: str | None = None
    text_dim: int | None = None

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.fragments)


@dataclass
class Manifest:
    version: int = 0
    created_at: float = 0.0
    operation: str = "create"
    tables: dict[str, TableState] = field(default_factory=dict)
    # Fragments of the change log (``history``): one row per update or delete of a memory.
    history: list[Fragment] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        body = {
            "format": STORE_FORMAT,
            "version": self.version,
            "created_at": self.created_at,
            "operation": self.operation,
            "tables": {m: asdict(t) for m, t in sorted(self.tables.items())},
        }
        if self.history:  # absent when empty: manifests of stores that never changed a memory stay as they were
            body["history"] = [asdict(f) for f in self.history]
        canon = json.dumps(body, sort_keys=True, separators=(",", ":"))
        body["checksum"] = hashlib.sha256(canon.encode()).hexdigest()
        return json.dumps(body, sort_keys=True, indent=1).encode()

    @classmethod
    def from_bytes(cls, raw: bytes, where: str) -> Manifest:
        try:
            body = json.loads(raw)
            checksum = body.pop("checksum")
            canon = json.dumps(body, sort_keys=True, separators=(",", ":"))
            if hashlib.sha256(canon.encode()).hexdigest() != checksum:
                raise ValueError("checksum mismatch")
            if body.get("format") != STORE_FORMAT:
                raise ValueError(f"store format {body.get('format')}, this build reads {STORE_FORMAT}")
            tables = {
                m: TableState(
                    modality=t["modality"],
                    provider=t["provider"],
                    dim=int(t["dim"]),
                    fingerprint=t["fingerprint"],
                    fragments=[Fragment(**f) for f in t["fragments"]],
                    text_provider=t.get("text_provider"),
                    text_dim=t.get("text_dim"),
                )
                for m, t in body["tables"].items()
            }
            history = [Fragment(**f) for f in body.get("history", [])]
            return cls(body["version"], body["created_at"], body["operation"], tables, history)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StoreCorruptError(
                f"manifest {where} is damaged ({exc}); run `aios-memory doctor` to inspect the store"
            ) from exc

    def copy(self) -> Manifest:
        return Manifest(
            self.version,
            self.created_at,
            self.operation,
            {
                m: TableState(
                    t.modality,
                    t.provider,
                    t.dim,
                    dict(t.fingerprint),
                    list(t.fragments),
                    t.text_provider,
                    t.text_dim,
                )
                for m, t in self.tables.items()
            },
            list(self.history),
        )

    def fragment_paths(self) -> set[str]:
        return {f.path for t in self.tables.values() for f in t.fragments} | {f.path for f in self.history}


def manifest_name(version: int) -> str:
    return f"{VERSIONS}/{version:020d}.manifest.json"


class Storage:
    """Versioned fragments and manifests of one store directory."""

    def __init__(self, root: str | Path, *, create: bool = True, lock_timeout: float = 60.0) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"{self.root} exists and is not a directory")
        if not self.root.exists():
            if not create:
                raise StoreError(f"no store at {self.root}")
            self.root.mkdir(parents=True)
            LocalBackend(self.root.parent).fsync_dir(".")
        self.backend = LocalBackend(self.root)
        if not (self.root / VERSIONS).is_dir() or not (self.root / DATA).is_dir():
            (self.root / VERSIONS).mkdir(exist_ok=True)
            (self.root / DATA).mkdir(exist_ok=True)
            self.backend.fsync_dir(".")
        self.lock_timeout = lock_timeout
        self._lock = FileLock(str(self.root / LOCK))

    # --- reading ---------------------------------------------------------------------------------------
    def versions(self) -> list[int]:
        out = []
        for name in self.backend.list(VERSIONS):
            m = _MANIFEST_RE.match(name)
            if m:
                out.append(int(m.group(1)))
        return sorted(out)

    def latest_version(self) -> int:
        v = self.versions()
        return v[-1] if v else 0

    def read_manifest(self, version: int | None = None) -> Manifest:
        """The manifest of ``version`` (default: the newest). Version 0 is the empty store."""
        if version is None:
            version = self.latest_version()
        if version == 0:
            return Manifest()
        rel = manifest_name(version)
        try:
            raw = self.backend.read_bytes(rel)
        except FileNotFoundError:
            raise StoreError(f"store {self.root} has no version {version}") from None
        m = Manifest.from_bytes(raw, str(self.backend.path(rel)))
        if m.version != version:
            raise StoreCorruptError(f"manifest {rel} says it is version {m.version}")
        return m

    def abspath(self, fragment: Fragment) -> str:
        return str(self.backend.path(fragment.path))

    # --- writing ---------------------------------------------------------------------------------------
    @contextmanager
    def writer_lock(self) -> Iterator[None]:
        try:
            with self._lock.acquire(timeout=self.lock_timeout):
                yield
        except Timeout:
            raise StoreError(
                f"another process has held the write lock of {self.root} for {self.lock_timeout:.0f}s"
            ) from None

    def write_fragment(self, modality: str, table: pa.Table) -> Fragment:
        rel = f"{DATA}/{modality}/{uuid.uuid4().hex}.parquet"
        nbytes = self.backend.write_parquet(rel, table)
        return Fragment(rel, table.num_rows, nbytes)

    def commit(self, operation: str, build: Callable[[Manifest], Manifest | None]) -> Manifest:
        """Commit the manifest ``build`` derives from the newest one (``None``: nothing to commit).

        Runs under the writers' lock; the exclusive create is the commit point and would also settle a
        race between writers that do not share the lock (object storage), by rebasing and retrying.
        """
        with self.writer_lock():
            for _attempt in range(8):
                base = self.read_manifest()
                new = build(base.copy())
                if new is None:
                    return base
                touched = {f.parent.name for f in map(Path, new.fragment_paths() - base.fragment_paths())}
                for modality in touched:
                    self.backend.fsync_dir(f"{DATA}/{modality}")
                new.version = base.version + 1
                new.created_at = time.time()
                new.operation = operation
                if self.backend.create_exclusive(manifest_name(new.version), new.to_bytes()):
                    return new
            raise CommitConflictError(f"could not commit to {self.root}: other writers kept winning")

    # --- maintenance -----------------------------------------------------------------------------------
    def unreferenced_files(self, keep: set[str]) -> list[str]:
        return sorted(
            rel for rel in self.backend.walk_files(DATA) if rel not in keep and rel.endswith(".parquet")
        )

    def cleanup(self, older_than: float = 3600.0, keep_versions: int = 1) -> dict[str, int]:
        """Delete manifests older than ``older_than`` seconds (always keeping the newest ``keep_versions``)
        and then the data files that no remaining manifest names and that are themselves that old."""
        removed_versions = removed_files = 0
        now = time.time()
        with self.writer_lock():
            versions = self.versions()
            keep = set(versions[-max(1, keep_versions) :])
            for v, successor in zip(versions, versions[1:], strict=False):
                # age counts from when v stopped being the newest: a reader may have opened it until then
                if v not in keep and now - self.backend.mtime(manifest_name(successor)) > older_than:
                    self.backend.delete(manifest_name(v))
                    removed_versions += 1
            for name in self.backend.list(VERSIONS):  # a crashed writer's unlinked temp manifests
                if name.startswith(".tmp-") and now - self.backend.mtime(f"{VERSIONS}/{name}") > older_than:
                    self.backend.delete(f"{VERSIONS}/{name}")
            referenced: set[str] = set()
            for v in self.versions():
                referenced |= self.read_manifest(v).fragment_paths()
            for rel in self.unreferenced_files(referenced):
                if now - self.backend.mtime(rel) > older_than:
                    self.backend.delete(rel)
                    removed_files += 1
        return {"versions_removed": removed_versions, "files_removed": removed_files}
