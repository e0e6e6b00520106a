"""Time travel: a store as it was at a past version or moment, the versions a store retains, and the
retention period that decides how far back it can look.

Every commit is a new immutable manifest naming immutable fragments (see :mod:`aios_memory.storage`), so
the store as of version ``v`` is exactly manifest ``v``'s files: ``MemoryStore(path, as_of=v)`` pins its
reads there, read-only (a write would go to the newest version, not to the past). ``as_of`` may be a
moment: the newest version committed at or before it. Versions live until ``cleanup`` removes those
superseded longer than the store's retention period, a setting kept in the manifest (so it travels with
the store, local or on object storage) and changed by a commit.
"""

from __future__ import annotations

import bisect
import datetime as dt
from typing import Any

from aios_memory.errors import InvalidInputError, VersionNotFoundError
from aios_memory.storage import DEFAULT_RETENTION, Manifest, Storage

RETENTION = "retention"


def moment(value: dt.datetime) -> float:
    """``value`` as epoch seconds; a naive datetime is taken as UTC (as the store's timestamps are)."""
    return (value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)).timestamp()


def resolve_as_of(storage: Storage, as_of: Any) -> int:
    """The version ``as_of`` names: a retained version number, or the newest committed by a moment."""
    if isinstance(as_of, bool) or not isinstance(as_of, (int, dt.datetime)):
        raise InvalidInputError(f"as_of must be a version number or a datetime, got {type(as_of).__name__}")
    if isinstance(as_of, int):
        if as_of < 0:
            raise InvalidInputError(f"as_of must be a version >= 0, got {as_of}")
        if not storage.has_version(as_of):
            raise storage.version_gone(as_of)
        return as_of
    when = _utc(moment(as_of))  # compared at microseconds, as versions() prints commit times
    versions = storage.versions()  # commit times ascend with versions: a binary search reads log2(n)
    at = bisect.bisect_right(versions, when, key=lambda v: _utc(storage.read_manifest(v).created_at))
    if at == 0:  # before every retained version
        if not versions or versions[0] == 1:
            return 0  # before the first commit: the empty store
        raise VersionNotFoundError(
            f"store {storage.root} retains no version from {as_of.isoformat()}: the oldest it keeps is "
            f"version {versions[0]}, committed {_iso(storage.read_manifest(versions[0]).created_at)} "
            "(cleanup removed older ones)"
        )
    return versions[at - 1]


def version_log(storage: Storage, limit: int | None = None) -> list[dict[str, Any]]:
    """Each retained version, newest first: when it was committed, by which operation, the rows of each
    table, and how many rows each table gained or lost against the version before it (when retained)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidInputError(f"limit must be a positive integer, got {limit!r}")
    versions = storage.versions()
    chosen = versions[-limit:] if limit else versions
    out = []
    before: dict[str, int] | None = None
    first = versions.index(chosen[0]) if chosen else 0
    if first > 0:
        before = _rows(storage.read_manifest(versions[first - 1]))
    for v in chosen:
        m = storage.read_manifest(v)
        rows = _rows(m)
        change = None
        if before is not None:
            change = {t: rows.get(t, 0) - before.get(t, 0) for t in sorted({*rows, *before})}
            change = {t: d for t, d in change.items() if d}
        out.append({
            "version": v,
            "committed_at": _iso(m.created_at),
            "operation": m.operation,
            "rows": rows,
            "change": change,
        })  # fmt: skip
        before = rows
    return out[::-1]


def retention_of(m: Manifest) -> float:
    """The retention period (seconds) recorded in ``m``, else the default (one hour)."""
    value = m.settings.get(RETENTION)
    return (
        float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else DEFAULT_RETENTION
    )


def set_retention(storage: Storage, seconds: float) -> Manifest:
    """Record a new retention period: one commit (the versions it covers are those cleanup keeps)."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < float("inf"):
        raise InvalidInputError(f"retention must be a finite number of seconds >= 0, got {seconds!r}")

    def build(m: Manifest) -> Manifest:
        m.settings = {**m.settings, RETENTION: float(seconds)}
        return m

    with storage.writer_lock():
        return storage.commit(f"set retention {float(seconds):g} s", build)


def _rows(m: Manifest) -> dict[str, int]:
    return {t: s.rows for t, s in sorted(m.tables.items())}


def _utc(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc)


def _iso(epoch: float) -> str:
    return _utc(epoch).isoformat(timespec="microseconds")


class VersionsMixin:
    """Mixed into ``MemoryStore`` (which sets the attributes annotated here): versions, pinning, the
    past as a read-only view, and the retention setting."""

    _storage: Storage
    _pinned: int | None
    _retention: float | None
    _scope: Any
    _manifest: Any

    @property
    def version(self) -> int:
        return self._manifest().version

    def checkout(self, version: int | None) -> None:
        """Pin reads to ``version`` (``None``: follow the newest again)."""
        self._scope.check_admin("pin versions")
        if version is not None:
            self._storage.read_manifest(version)
        self._pinned = version

    def _open_as_of(self, as_of: Any) -> None:
        from aios_memory.scope import Scope

        version = resolve_as_of(self._storage, as_of)
        why = f"this store is opened as of version {version} (read-only: the past is not changed)"
        self._pinned = version
        self._scope = self._scope.narrow(Scope(write=False, admin=False, why=why))

    def versions(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The retained versions, newest first (see :func:`version_log`); ``limit``: the newest few."""
        return version_log(self._storage, limit)

    @property
    def retention(self) -> float:
        """Seconds a superseded version stays readable: the value this handle was opened with, else the
        store's setting (:meth:`set_retention`), else one hour."""
        if self._retention is not None:
            return self._retention
        return retention_of(self._storage.read_manifest())

    def set_retention(self, seconds: float) -> int:
        """Keep superseded versions ``seconds`` long from now on (a store setting: one commit, seen by
        every process and host that opens the store); returns the version that records it."""
        self._scope.check_admin("change the retention period")
        return set_retention(self._storage, seconds).version
