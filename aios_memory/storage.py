"""Storage: immutable Parquet fragments committed by numbered manifests. Knows nothing of models.

Layout of a store directory::

    _versions/00000000000000000007.manifest.json   one file per committed version, never rewritten
    data/<modality>/<uuid>.parquet                  immutable fragments, named once, never listed by readers
    data/<modality>/<uuid>.embedding.f32            its sidecars: raw vectors (+ norms) and created_at,
    data/<modality>/<uuid>.created_at.i64           memory-mapped by searches (see :mod:`aios_memory.vectors`)
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
from collections.abc import Callable, Iterable, Iterator
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
_DATA_FILE_RE = re.compile(r"^[0-9a-f]{32}\.")  # fragments, their sidecars and index files: <uuid>.<what>
ROW_GROUP_ROWS = 1024


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

    def write_new(self, rel: str, chunks: Iterable[Any]) -> int:
        """Write a new immutable file from buffers (anything with the buffer protocol) and fsync it."""
        p = self.path(rel)
        with open(p, "xb") as f:
            for chunk in chunks:
                f.write(memoryview(chunk).cast("B"))
            f.flush()
            os.fsync(f.fileno())
        return p.stat().st_size

    def size(self, rel: str) -> int:
        return self.path(rel).stat().st_size

    def write_parquet(self, rel: str, table: pa.Table) -> int:
        """Write a new immutable file and fsync it; returns its size."""
        p = self.path(rel)
        if not p.parent.is_dir():  # a modality's first fragment: make its directory entry durable too
            p.parent.mkdir(parents=True, exist_ok=True)
            self.fsync_dir(str(Path(rel).parent.parent))
        with open(p, "xb") as f:
            # small row groups: a search reads back its k result rows without decoding whole fragments
            pq.write_table(table, f, compression="zstd", row_group_size=ROW_GROUP_ROWS)
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
    # Sidecar files written with the fragment, by suffix: ``embedding.f32`` names
    # ``<stem>.embedding.f32`` beside ``<stem>.parquet``. Empty in manifests from before sidecars.
    sidecars: tuple[str, ...] = ()
    sidecar_nbytes: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "sidecars", tuple(self.sidecars))  # JSON gives a list

    def sidecar_path(self, suffix: str) -> str:
        return f"{self.path.removesuffix('.parquet')}.{suffix}"

    def files(self) -> list[str]:
        return [self.path, *(self.sidecar_path(s) for s in self.sidecars)]


@dataclass(frozen=True)
class IndexFile:
    """A derived ANN index over one vector column of a table (see :mod:`aios_memory.ann`)."""

    path: str
    kind: str
    column: str
    nbytes: int
    # (fragment path, first key, rows) of every fragment whose rows it holds; key = first key + row
    covers: tuple[tuple[str, int, int], ...]
    rows: int
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "covers", tuple((str(p), int(f), int(r)) for p, f, r in self.covers))


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
    index: IndexFile | None = None  # optional ANN index (derived data), absent in older manifests

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
        if (
            self.history
        ):  # absent when empty: manifests of stores that never changed a memory stay as they were
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
                    index=IndexFile(**t["index"]) if t.get("index") else None,
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
                    t.index,
                )
                for m, t in self.tables.items()
            },
            list(self.history),
        )

    def fragment_paths(self) -> set[str]:
        """Every file this version names: fragments, their sidecars, index files, the change log."""
        out = {p for t in self.tables.values() for f in t.fragments for p in f.files()}
        out |= {t.index.path for t in self.tables.values() if t.index is not None}
        return out | {p for f in self.history for p in f.files()}


SMALL_FRAGMENT_BYTES = 64 << 20
MERGED_FRAGMENT_BYTES = 256 << 20
MAX_SMALL_FRAGMENTS = 8


def plan_compaction(
    fragments: list[Fragment],
    *,
    max_per_tier: int = MAX_SMALL_FRAGMENTS,
    small_bytes: int = SMALL_FRAGMENT_BYTES,
    fanout: int = 8,
) -> list[list[Fragment]]:
    """Which fragments of one table to merge, as groups (each becomes one fragment); ``[]``: none.

    Size-tiered: fragments under ``small_bytes`` (Parquet + sidecars) fall into tiers by size, a factor
    ``fanout`` apart (tier 0: under 1 KiB, tier 1: under 8 KiB, ...). A tier that holds more than
    ``max_per_tier`` fragments is merged into one, which is over ``fanout`` times its smallest member
    and so lands a tier up, so each row is rewritten about
    log_fanout(final size / first size) times over its life, not once per commit. Fragments of
    ``small_bytes`` or more are never rewritten. Pure: it reads nothing and the caller commits.
    """
    tiers: dict[int, list[Fragment]] = {}
    for f in fragments:
        size = f.nbytes + f.sidecar_nbytes
        if size >= small_bytes:
            continue
        tier = 0
        while size >= 1024 * fanout**tier:
            tier += 1
        tiers.setdefault(tier, []).append(f)
    return [group for _, group in sorted(tiers.items()) if len(group) > max_per_tier]


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
        self.manifest_reads = 0  # how many manifests this object has read (searches read one per call)
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
        self.manifest_reads += 1
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
        """Write ``table`` as a new fragment plus its sidecars (raw vectors, created_at), all fsynced."""
        from aios_memory.vectors import sidecar_buffers

        stem = f"{DATA}/{modality}/{uuid.uuid4().hex}"
        nbytes = self.backend.write_parquet(f"{stem}.parquet", table)
        suffixes, side = [], 0
        for suffix, chunks in sidecar_buffers(table):
            side += self.backend.write_new(f"{stem}.{suffix}", chunks)
            suffixes.append(suffix)
        return Fragment(f"{stem}.parquet", table.num_rows, nbytes, tuple(suffixes), side)

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
            rel
            for rel in self.backend.walk_files(DATA)
            if rel not in keep and _DATA_FILE_RE.match(Path(rel).name)
        )

    def cleanup(self, older_than: float = 3600.0, keep_versions: int = 1) -> dict[str, int]:
        """Delete manifests older than ``older_than`` seconds (always keeping the newest ``keep_versions``)
        and then the data files that no remaining manifest names and that are themselves that old.
        ``files_removed`` counts a fragment and its sidecars as one file."""
        removed_versions = 0
        removed_stems: set[str] = set()
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
                    removed_stems.add(str(Path(rel).parent / Path(rel).name.split(".")[0]))
        return {"versions_removed": removed_versions, "files_removed": len(removed_stems)}
