"""What a version is: the manifest naming a store's fragments, sidecars, index files and change log.

A manifest is JSON with a sha256 over its canonical form. Every file it names carries its size and
sha256, and every path it names must have the one shape a store writes
(``data/<table>/<32 hex>.<suffix>``): a manifest naming ``../..``, an absolute path or any other name is
damaged, whatever wrote it, so nothing a manifest says can make the store read or delete outside itself.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from aios_memory.errors import StoreCorruptError

STORE_FORMAT = 1
VERSIONS = "_versions"
DATA = "data"
DERIVED = "_derived"  # data/<table>/_derived/: sidecars and index files, out of a Parquet reader's way
_NAME = r"[a-z_][a-z0-9_]{0,63}"
# data/<table>/[_derived/]<uuid hex>.<suffix>: the only file names a manifest may hold
DATA_PATH_RE = re.compile(
    rf"^{DATA}/{_NAME}/({DERIVED}/)?[0-9a-f]{{32}}\.[a-z0-9_]{{1,64}}(\.[a-z0-9_]{{1,64}})*$"
)
SUFFIX_RE = re.compile(r"^[a-z0-9_]{1,64}(\.[a-z0-9_]{1,64})*$")


def check_path(rel: str, where: str) -> str:
    """``rel`` if it is a path a store writes; else :class:`StoreCorruptError` (it could point outside)."""
    if not isinstance(rel, str) or not DATA_PATH_RE.fullmatch(rel):
        raise StoreCorruptError(
            f"{where} names {rel!r}, which is not a file of this store (outside it, or not a name a store "
            "writes); it was refused, nothing was read"
        )
    return rel


def _table_body(t: TableState) -> dict[str, Any]:
    """``dataclasses.asdict(t)`` without its deep copy: the manifest is encoded and then dropped."""
    out = dict(t.__dict__)
    out["fragments"] = [f.__dict__ for f in t.fragments]
    out["index"] = None if t.index is None else t.index.__dict__
    if t.text_fingerprint is None:
        del out["text_fingerprint"]  # tables without a derived text column keep their manifests' bytes
    return out


def manifest_name(version: int) -> str:
    return f"{VERSIONS}/{version:020d}.manifest.json"


@dataclass(frozen=True)
class Fragment:
    path: str  # relative to the store root, posix separators
    rows: int
    nbytes: int
    # Sidecar files written with the fragment, by suffix: ``embedding.f32`` names
    # ``<stem>.embedding.f32`` beside ``<stem>.parquet``. Empty in manifests from before sidecars.
    sidecars: tuple[str, ...] = ()
    sidecar_nbytes: int = 0
    # sha256 of each file, by suffix ("parquet" for the fragment itself); empty in older manifests
    checksums: tuple[tuple[str, str], ...] = ()
    # True: sidecars live in ``data/<table>/_derived/`` (stores written before keep them beside)
    derived: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "sidecars", tuple(self.sidecars))  # JSON gives a list
        object.__setattr__(self, "checksums", tuple((str(s), str(h)) for s, h in self.checksums))

    def sidecar_path(self, suffix: str) -> str:
        stem = self.path.removesuffix(".parquet")
        if self.derived:
            folder, name = stem.rsplit("/", 1)
            return f"{folder}/{DERIVED}/{name}.{suffix}"
        return f"{stem}.{suffix}"

    def files(self) -> list[str]:
        return [self.path, *(self.sidecar_path(s) for s in self.sidecars)]

    def checksum(self, suffix: str = "parquet") -> str | None:
        return dict(self.checksums).get(suffix)

    def check_paths(self, where: str) -> None:
        check_path(self.path, where)
        if not self.path.endswith(".parquet") or f"/{DERIVED}/" in self.path:
            raise StoreCorruptError(f"{where} names fragment {self.path!r}, which is not a Parquet file")
        for s in self.sidecars:
            if not isinstance(s, str) or not SUFFIX_RE.match(s):
                raise StoreCorruptError(f"{where} names a sidecar suffix {s!r} that a store never writes")


@dataclass(frozen=True)
class IndexFile:
    """A derived ANN index over one vector column of a table (see :mod:`aios_memory.storage.ann`)."""

    path: str
    kind: str
    column: str
    nbytes: int
    # (fragment path, first key, rows) of every fragment whose rows it holds; key = first key + row
    covers: tuple[tuple[str, int, int], ...]
    rows: int
    params: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""  # of the index file; "" in manifests from before checksums
    entries: int = -1  # vectors in the graph (null vectors are not indexed); -1: not recorded

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
    # The fingerprint of ``text_provider`` (its weights too); absent in older manifests and tables without
    text_fingerprint: dict[str, Any] | None = None

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
    # Store settings that travel with the store (local or object storage): {"retention": seconds}
    settings: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """Compact canonical JSON (sorted keys) with its sha256 as a last ``checksum`` member: the body
        is encoded once (no deep copy, no second pretty-printed pass), and a reader checks those bytes
        as they are (:meth:`from_bytes`)."""
        body: dict[str, Any] = {
            "format": STORE_FORMAT,
            "version": self.version,
            "created_at": self.created_at,
            "operation": self.operation,
            "tables": {m: _table_body(t) for m, t in self.tables.items()},
        }
        if self.history:  # absent when empty: stores that never changed a memory keep their manifests
            body["history"] = [f.__dict__ for f in self.history]
        if self.settings:  # absent when none: older builds read these manifests (unknown keys ignored)
            body["settings"] = self.settings
        canon = json.dumps(body, sort_keys=True, separators=(",", ":"))
        checksum = hashlib.sha256(canon.encode()).hexdigest()
        return f'{canon[:-1]},"checksum":"{checksum}"}}'.encode()

    @classmethod
    def from_bytes(cls, raw: bytes, where: str) -> Manifest:
        try:
            body = json.loads(raw)
            checksum = body.pop("checksum")
            tail = f',"checksum":"{checksum}"}}'.encode() if isinstance(checksum, str) else b"\0"
            if raw.endswith(tail):  # written by to_bytes: the canonical bytes are the file's own
                canon_bytes = raw[: -len(tail)] + b"}"
            else:  # an older manifest (pretty-printed): its canonical form re-encoded
                canon_bytes = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
            if hashlib.sha256(canon_bytes).hexdigest() != checksum:
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
                    text_fingerprint=t.get("text_fingerprint"),
                )
                for m, t in body["tables"].items()
            }
            history = [Fragment(**f) for f in body.get("history", [])]
            settings = body.get("settings", {})
            if not isinstance(settings, dict):
                raise ValueError("settings is not an object")
            m = cls(body["version"], body["created_at"], body["operation"], tables, history, settings)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StoreCorruptError(
                f"manifest {where} is damaged ({exc}); run `aios-memory doctor` to inspect the store"
            ) from exc
        for f in [*(f for t in tables.values() for f in t.fragments), *history]:
            f.check_paths(f"manifest {where}")
            if not isinstance(f.derived, bool) or not all(
                isinstance(x, int) and x >= 0 for x in (f.rows, f.nbytes, f.sidecar_nbytes)
            ):
                raise StoreCorruptError(f"manifest {where} gives fragment {f.path} non-integer sizes")
        for t in tables.values():
            if t.index is not None:
                check_path(t.index.path, f"manifest {where}")
                if not isinstance(t.index.params, dict) or not isinstance(t.index.nbytes, int):
                    raise StoreCorruptError(f"manifest {where} describes index {t.index.path} wrongly")
                for path, _first, _rows in t.index.covers:
                    check_path(path, f"manifest {where}")
        return m

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
                    None if t.text_fingerprint is None else dict(t.text_fingerprint),
                )
                for m, t in self.tables.items()
            },
            list(self.history),
            dict(self.settings),
        )

    def fragment_paths(self) -> set[str]:
        """Every file this version names: fragments, their sidecars, index files, the change log."""
        out = {p for t in self.tables.values() for f in t.fragments for p in f.files()}
        out |= {t.index.path for t in self.tables.values() if t.index is not None}
        return out | {p for f in self.history for p in f.files()}

    def checksums(self) -> dict[str, tuple[int | None, str | None]]:
        """``path -> (size or None, sha256 or None)`` of every file this version names."""
        out: dict[str, tuple[int | None, str | None]] = {}
        for f in [*(f for t in self.tables.values() for f in t.fragments), *self.history]:
            out[f.path] = (f.nbytes, f.checksum())
            for s in f.sidecars:
                out[f.sidecar_path(s)] = (None, f.checksum(s))
        for t in self.tables.values():
            if t.index is not None:
                out[t.index.path] = (t.index.nbytes, t.index.sha256 or None)
        return out


SMALL_FRAGMENT_BYTES = 64 << 20
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
