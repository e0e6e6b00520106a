"""OpenAI Agents SDK adapter: ``AiosMemorySession``, a ``Session`` (conversation history) over a store.

    from aios_memory.integrations.openai_agents import AiosMemorySession
    session = AiosMemorySession("user-42", store="agent-memory")
    result = await Runner.run(agent, "Hi", session=session)
    await session.search("what did we say about the trip?")

It implements the SDK's ``Session`` protocol (structurally, as the SDK asks of third-party sessions)
with ``SQLiteSession``'s semantics. Each item is one text memory: its content is the text a person
would search for (a message's text, a tool call as ``name(arguments)``, a tool's output, a reasoning
summary; else the item's JSON), and its metadata holds ``session_id``, the ordering key (``seq``,
``batch``, ``pos``), the item's ``type`` and ``role``, and ``item``: the item's JSON text, which is
what ``get_items`` returns. One ``add_items`` call is one atomic commit.

Sessions map onto namespaces: ``openai-agents/<session_id>`` by default, or a ``namespace`` given by
the caller that several sessions share (each reads and clears only items with its ``session_id``).

Order: items sort by ``(seq, batch, pos)``. ``seq`` numbers the ``add_items`` calls of a session (one
more than the largest stored), ``pos`` is the item's index in its call, ``batch`` (the call's start
time in ns, then a random id) breaks ties. Within one process, sessions on the same store directory
and session id hold a lock from reading the largest ``seq`` to the commit, so the order is the order
of the commits, as with ``SQLiteSession``. Across processes the store has no such lock: no item is
lost or duplicated, a call's items stay together and in order, each writer's calls stay in its own
order, and every reader sees the same order, which never changes; only two calls that overlap in time
(neither committed before the other read) share a ``seq`` and are ordered by their start times, so a
reader may see the later-committed one first and the other appear just before it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
import weakref
from pathlib import Path
from typing import Any

from aios_memory.integrations._common import add_kwargs, require

try:
    from agents.items import TResponseInputItem
    from agents.memory import SessionSettings, await_session_mutation, coerce_session_settings
    from agents.memory.session_settings import resolve_session_limit
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise require("agents", "openai-agents") from exc

from aios_memory.errors import InvalidInputError
from aios_memory.integrations.openai_agents_items import content_of, item_json
from aios_memory.memory import check_namespace
from aios_memory.store import MemoryStore

NAMESPACE_PREFIX = "openai-agents/"
Item = dict[str, Any]  # an item as stored and read back: a JSON object

_SESSION = "json_extract_string(metadata, '$.session_id')"
_ITEM = "json_extract_string(metadata, '$.item')"
_SEQ = "TRY_CAST(json_extract_string(metadata, '$.seq') AS BIGINT)"
_WHERE = f"namespace = ? AND {_SESSION} = ? AND {_ITEM} IS NOT NULL"
_NEWEST_FIRST = (
    f"{_SEQ} DESC, json_extract_string(metadata, '$.batch') DESC, "
    "TRY_CAST(json_extract_string(metadata, '$.pos') AS BIGINT) DESC"
)


class _Lock:
    __slots__ = ("lock", "__weakref__")

    def __init__(self) -> None:
        self.lock = threading.Lock()


_LOCKS: weakref.WeakValueDictionary[tuple[str, str, str], _Lock] = weakref.WeakValueDictionary()
_LOCKS_GUARD = threading.Lock()


def _lock_for(key: tuple[str, str, str]) -> _Lock:
    """The process-wide lock of one session of one store (kept while a session object holds it)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(key)
        if lock is None:
            lock = _LOCKS[key] = _Lock()
        return lock


class AiosMemorySession:
    """An OpenAI Agents SDK session whose items are memories of a ``MemoryStore``.

    ``store`` is a ``MemoryStore`` or the path of its directory (default: the default store).
    ``namespace`` (default ``openai-agents/<session_id>``) may be shared by several sessions.
    ``session_settings.limit`` is the default of ``get_items(limit=None)``, as in ``SQLiteSession``.
    """

    session_id: str
    session_settings: SessionSettings | None = None

    def __init__(
        self,
        session_id: str,
        store: MemoryStore | str | Path | None = None,
        *,
        namespace: str | None = None,
        session_settings: SessionSettings | dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(session_id, str):
            raise InvalidInputError(f"session_id must be a string, got {type(session_id).__name__}")
        self.session_id = session_id
        self.store = store if isinstance(store, MemoryStore) else MemoryStore(store)
        self.namespace = check_namespace(namespace or f"{NAMESPACE_PREFIX}{session_id}")
        self.session_settings = (
            coerce_session_settings(session_settings) if session_settings is not None else SessionSettings()
        )
        where = self.store.path
        root = str(where.resolve()) if isinstance(where, Path) else str(where)
        self._lock = _lock_for((root, self.namespace, session_id))

    def __repr__(self) -> str:
        return f"AiosMemorySession({self.session_id!r}, namespace={self.namespace!r}, store={self.store!r})"

    # --- the Session protocol ----------------------------------------------------------------------
    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        """The session's items, oldest first; with ``limit`` (or ``session_settings.limit``), the newest
        ``limit`` of them, oldest first (0: none; a negative limit: all, as ``SQLiteSession`` does)."""
        return await asyncio.to_thread(self.get_items_sync, limit)

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        """Append ``items`` (dicts) in one commit. Repeats are kept: the store's deduplication is off."""
        payload = self._prepare(items)  # checked here: a bad item raises before anything is stored
        if payload:
            await await_session_mutation(asyncio.to_thread(self._add, payload))

    async def pop_item(self) -> TResponseInputItem | None:
        """Remove and return the newest item (``None`` if the session is empty)."""
        return await await_session_mutation(asyncio.to_thread(self.pop_item_sync))

    async def clear_session(self) -> None:
        """Remove every item of this session (other sessions, and other memories, are kept)."""
        await await_session_mutation(asyncio.to_thread(self.clear_session_sync))

    # --- search ------------------------------------------------------------------------------------
    async def search(self, query: str, k: int = 5) -> list[TResponseInputItem]:
        """The session's items ranked by meaning (cosine similarity to ``query``), best first."""
        return [item for item, _ in await asyncio.to_thread(self.search_sync, query, k)]

    async def search_with_scores(self, query: str, k: int = 5) -> list[tuple[TResponseInputItem, float]]:
        """``(item, cosine similarity)`` pairs, best first."""
        return await asyncio.to_thread(self.search_sync, query, k)

    def search_sync(self, query: str, k: int = 5) -> list[tuple[TResponseInputItem, float]]:
        """``search_with_scores`` for synchronous code (e.g. a function tool)."""
        hits = self.store.search(
            query, k=k, modality="text", namespace=self.namespace, filter={"session_id": self.session_id}
        )
        pairs = ((_parse(hit.metadata.get("item")), float(hit.score or 0.0)) for hit in hits)
        return [(item, score) for item, score in pairs if item is not None]  # a row not ours is skipped

    # --- synchronous forms -------------------------------------------------------------------------
    def get_items_sync(self, limit: int | None = None) -> list[TResponseInputItem]:
        """``get_items`` for synchronous code."""
        limit = resolve_session_limit(limit, self.session_settings)
        rows = self._rows(limit if limit is not None and limit >= 0 else None)  # < 0: all, as in SQLite
        items = [_parse(row["item"]) for row in reversed(rows)]
        return [item for item in items if item is not None]  # not ours: skipped, as SQLiteSession skips

    def add_items_sync(self, items: list[TResponseInputItem]) -> None:
        """``add_items`` for synchronous code."""
        payload = self._prepare(items)
        if payload:
            self._add(payload)

    def pop_item_sync(self) -> TResponseInputItem | None:
        """``pop_item`` for synchronous code."""
        with self._lock.lock:
            while True:
                rows = self._rows(1)
                if not rows:
                    return None
                # the delete is the claim: a popper in another process that took it first leaves 0
                if self.store.delete([rows[0]["id"]], missing_ok=True):
                    item = _parse(rows[0]["item"])
                    if item is not None:
                        return item  # a damaged item is dropped and the next one popped, as in SQLite

    def clear_session_sync(self) -> None:
        """``clear_session`` for synchronous code."""
        with self._lock.lock:
            ids = [r["id"] for r in self._rows(None)]
            if ids:
                self.store.delete(ids, missing_ok=True)

    # --- internals ---------------------------------------------------------------------------------
    def _prepare(self, items: Any) -> list[tuple[str, str, Item]]:
        if isinstance(items, (str, bytes, dict)) or not isinstance(items, (list, tuple)):
            raise InvalidInputError(f"add_items takes a list of items, got {type(items).__name__}")
        checked = [(item_json(item), item) for item in items]  # every item, before anything is stored
        return [(content_of(item), text, item) for text, item in checked]

    def _add(self, payload: list[tuple[str, str, Item]]) -> None:
        with self._lock.lock:
            batch = f"{time.time_ns():020d}-{uuid.uuid4().hex}"
            sql = f"SELECT max({_SEQ}) AS seq FROM text_memories WHERE {_WHERE}"  # noqa: S608 - our own SQL text
            top = self.store.sql(sql, self._params()).column("seq")[0].as_py()
            seq = 0 if top is None else int(top) + 1
            metadata = [
                {
                    "session_id": self.session_id,
                    "seq": seq,
                    "batch": batch,
                    "pos": pos,
                    "type": item.get("type", "message"),
                    "role": item.get("role"),
                    "item": text,
                }
                for pos, (_, text, item) in enumerate(payload)
            ]
            self.store.add_many(
                [content for content, _, _ in payload],
                modality="text",
                namespace=self.namespace,
                metadata=metadata,
                **add_kwargs(self.store),
            )

    def _params(self) -> list[Any]:
        return [self.namespace, self.session_id]

    def _rows(self, limit: int | None) -> list[dict[str, Any]]:
        """The session's rows (``id``, ``item``), newest first; the newest ``limit`` of them if given."""
        sql = f"SELECT id, {_ITEM} AS item FROM text_memories WHERE {_WHERE} ORDER BY {_NEWEST_FIRST}"  # noqa: S608 - our own SQL text; values are parameters
        if limit is None:
            return self.store.sql(sql, self._params()).to_pylist()
        return self.store.sql(f"{sql} LIMIT ?", [*self._params(), int(limit)]).to_pylist()


def _parse(text: Any) -> Any:
    """A stored item (a JSON object), or ``None`` for a row that holds none (not written by a session)."""
    try:
        item = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    return item if isinstance(item, dict) else None
