"""A memory's history: the change log that updates and deletes write in their own commit, and its reader.

Each update or delete appends the changed memories' *previous* state to ``data/_history/`` fragments named
in the manifest (``Manifest.history``), in the same atomic commit as the change. With the current row (or
its absence) that gives each memory's whole timeline; ``compact()`` merges the log's fragments too.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from aios_memory.errors import (
    InvalidInputError,
    MemoryNotFoundError,
    StoreCorruptError,
    VersionNotFoundError,
)
from aios_memory.memory import Memory, check_utf8, now_utc
from aios_memory.schema import HISTORY_DIR, HISTORY_SCHEMA
from aios_memory.storage import Fragment, Manifest, Storage

ENTRY_KEYS = (
    "operation",
    "at",
    "version",
    "content",
    "metadata",
    "source",
    "media_type",
    "media_sha256",
    "transcript",
)  # every entry of ``history()``, in this order, whatever its operation


class HistoryMixin:
    """Mixed into ``WritesMixin``; needs ``_storage``, ``_manifest``, ``get`` and ``_read_fragment``."""

    _storage: Storage

    def _manifest(self) -> Manifest:
        raise NotImplementedError

    def get(self, id: str) -> Memory:
        raise NotImplementedError

    def _read_fragment(self, frag: Fragment, columns: list[str] | None = None) -> pa.Table:
        raise NotImplementedError

    def _log_changes(self, m: Manifest, operation: str, rows: list[tuple[str, dict[str, Any]]]) -> None:
        """Append the before-state of changed memories to the change log, in the same commit."""
        import hashlib

        if not rows:
            return
        at = now_utc()
        log = {
            "memory_id": [r["id"] for _, r in rows],
            "modality": [mod for mod, _ in rows],
            "namespace": [r["namespace"] for _, r in rows],
            "version": [m.version + 1] * len(rows),  # the version this commit creates
            "at": [at] * len(rows),
            "operation": [operation] * len(rows),
            "created_at": [r.get("created_at") for _, r in rows],
            "updated_at": [r.get("updated_at") for _, r in rows],
            "source": [r.get("source") for _, r in rows],
            "content": [r.get("content") for _, r in rows],
            "media_type": [r.get("media_type") for _, r in rows],
            "media_sha256": [
                hashlib.sha256(r["media"]).hexdigest() if r.get("media") is not None else None
                for _, r in rows
            ],
            "metadata": [r.get("metadata") for _, r in rows],
            "transcript": [r.get("transcript") for _, r in rows],
        }
        table = pa.table([log[f.name] for f in HISTORY_SCHEMA], schema=HISTORY_SCHEMA)
        m.history.append(self._storage.write_fragment(HISTORY_DIR, table))

    def history(self, id: str) -> list[dict[str, Any]]:
        """A memory's timeline, oldest first: ``add``, each ``update``, and ``delete`` if it was deleted.

        Every entry has the same keys in the same order (:data:`ENTRY_KEYS`): ``operation``, ``at`` (when),
        ``version`` (the store version that committed the change) and the memory's state *after* that
        change: ``content``, ``metadata``, ``source``, ``media_type``, ``media_sha256``, ``transcript`` (all
        ``None`` after a delete). The add's ``version`` is found from the retained versions (the first one
        holding the memory); it is ``None`` when ``cleanup`` has removed the version before it, which is
        what would tell. Works for deleted memories too: the log keeps what they were. Raises
        ``MemoryNotFoundError`` for an id never seen.
        """
        import hashlib
        import json

        import pyarrow.compute as pc

        if not isinstance(id, str):
            raise InvalidInputError(f"memory ids are strings, got {type(id).__name__}")
        check_utf8(id, "a memory id")
        m = self._manifest()
        changes: list[dict[str, Any]] = []
        for frag in m.history:
            t = self._read_fragment(frag)
            changes.extend(t.filter(pc.equal(t.column("memory_id"), id)).to_pylist())
        scope = getattr(self, "_scope", None)
        if scope is not None:  # a handle sees the history of its scope's memories only
            changes = [c for c in changes if scope.sees(c["namespace"])]
        changes.sort(key=lambda c: c["version"])
        current: dict[str, Any] | None = None
        try:
            mem = self.get(id)
            current = {
                "content": mem.content,
                "metadata": mem.metadata,
                "source": mem.source,
                "media_type": mem.media_type,
                "media_sha256": hashlib.sha256(mem.media).hexdigest() if mem.media is not None else None,
                "transcript": mem.extra.get("transcript"),
            }
        except MemoryNotFoundError:
            if not changes:
                raise

        def state(c: dict[str, Any]) -> dict[str, Any]:
            return {k: json.loads(c[k] or "{}") if k == "metadata" else c[k] for k in ENTRY_KEYS[3:]}

        first = changes[0] if changes else None
        created = first["created_at"] if first else mem.created_at
        modality = first["modality"] if first else mem.modality
        # the add is in every version from its own to the one before the first change (or to this one)
        last_with_add = first["version"] - 1 if first else m.version
        added = self._added_in(id, modality, last_with_add)
        states = [state(c) for c in changes] + [current]  # states[i]: the state after event i
        events = [("add", created, added)] + [(c["operation"], c["at"], c["version"]) for c in changes]
        out = []
        for (op, at, version), after in zip(events, states, strict=True):
            entry = {
                **dict.fromkeys(ENTRY_KEYS),
                **(after or {}),
                "operation": op,
                "at": at,
                "version": version,
            }
            out.append({k: entry[k] for k in ENTRY_KEYS})
        return out

    def _added_in(self, id: str, modality: str, newest: int) -> int | None:
        """The version whose commit added memory ``id``, given that version ``newest`` holds it: a binary
        search for the first retained version holding it (``O(log versions)`` manifests; each fragment's
        ids are read once, and a fragment known to hold the memory answers without reading). ``None``
        when the version before that one is gone (``cleanup``) or unreadable: the add may be older. Ids
        are never reused, so every version from the add's on holds the memory, until its first change."""
        import pyarrow.compute as pc

        in_fragment: dict[str, bool] = {}  # fragments are immutable: each is read once
        known: dict[int, bool | None] = {0: False}  # version 0 is the empty store

        def holds(version: int) -> bool | None:  # None: that version cannot be read (gone, damaged)
            if version in known:
                return known[version]
            try:
                table = self._storage.read_manifest(version).tables.get(modality)
                frags = table.fragments if table else []
                found = any(in_fragment.get(f.path) for f in frags)
                for frag in frags:
                    if found:
                        break
                    if frag.path not in in_fragment:
                        ids = self._read_fragment(frag, ["id"]).column("id")
                        in_fragment[frag.path] = found = bool(pc.any(pc.equal(ids, id)).as_py())
                known[version] = found
            except (VersionNotFoundError, StoreCorruptError):
                known[version] = None
            return known[version]

        lo, hi = 1, newest  # the first version holding it is in [lo, hi], if it is retained
        while lo < hi:
            mid = (lo + hi) // 2
            if holds(mid):
                hi = mid
            else:
                lo = mid + 1
        # checked, not assumed: a version that could not be read above makes the answer unknown
        return hi if holds(hi) and holds(hi - 1) is False else None
