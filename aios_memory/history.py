"""A memory's history: the change log that updates and deletes write in their own commit, and its reader.

Each update or delete appends the changed memories' *previous* state to ``data/_history/`` fragments named
in the manifest (``Manifest.history``), in the same atomic commit as the change. With the current row (or
its absence) that gives each memory's whole timeline; ``compact()`` merges the log's fragments too.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from aios_memory.errors import InvalidInputError, MemoryNotFoundError
from aios_memory.memory import Memory, check_utf8, now_utc
from aios_memory.schema import HISTORY_DIR, HISTORY_SCHEMA
from aios_memory.storage import Fragment, Manifest, Storage


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

        Each entry has ``operation``, ``at`` (when), ``version`` (the store version of the change; ``None``
        for the add) and the memory's state *after* that change: ``content``, ``metadata``, ``source``,
        ``media_type``, ``media_sha256``, ``transcript`` (all ``None`` after a delete). Works for deleted
        memories too: the log keeps what they were. Raises ``MemoryNotFoundError`` for an id never seen.
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
        keys = ("content", "source", "media_type", "media_sha256", "transcript")

        def state(c: dict[str, Any]) -> dict[str, Any]:
            return {**{k: c[k] for k in keys}, "metadata": json.loads(c["metadata"] or "{}")}

        first = changes[0] if changes else None
        created = first["created_at"] if first else mem.created_at
        states = [state(c) for c in changes] + [current]  # states[i]: the state after event i
        events = [("add", created, None)] + [(c["operation"], c["at"], c["version"]) for c in changes]
        out = []
        for (op, at, version), after in zip(events, states, strict=True):
            after = after or dict.fromkeys((*keys, "metadata"))
            out.append({"operation": op, "at": at, "version": version, **after})
        return out
