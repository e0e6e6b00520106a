"""LangGraph long-term memory: ``AiosMemoryStore``, a ``langgraph.store.base.BaseStore`` over a MemoryStore.

    from aios_memory.integrations.langgraph import AiosMemoryStore
    store = AiosMemoryStore("agent-memory", index={"fields": ["text"]})
    store.put(("users", "alice"), "pet", {"text": "Alice's cat is called Miso"})
    store.search(("users",), query="what animal does Alice have?")
    graph = builder.compile(store=store)          # or create_react_agent(..., store=store)

Items live as memories of the store (see :mod:`aios_memory.integrations.langgraph_items`): the namespace
``("users", "alice")`` is the store namespace ``users.alice``, so SQL, MCP and the web page see the same
memories. Texts are embedded by the store's text provider (MiniLM); a ``bytes`` or ``pathlib.Path`` leaf
of a value (an image or audio file) by CLIP or Whisper, so ``search(query="the whiteboard photo")`` finds
a photo. ``index`` takes ``fields`` (LangGraph's path syntax; default ``["$"]``, the whole value) and
optionally ``dims``; an ``embed`` function is refused (the store embeds with its own models). TTLs are
supported (``ttl`` minutes per put, ``TTLConfig`` defaults, refresh on read); expired items are never
returned and :meth:`AiosMemoryStore.sweep_ttl` deletes them.

Writes: a batch is checked whole before anything is written (a bad value, key, namespace or ttl changes
nothing); its puts of one namespace are then one commit, and replacing or deleting items a second commit
that removes their older rows. Puts from threads of one process are serialised. Between processes two puts of
one key may both land: every read takes the newest ``rev`` of a key, so each key still reads as one item
(the last writer's), and the next put of that key removes every older row.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aios_memory.integrations._common import require

try:
    from langgraph.store.base import (
        BaseStore,
        GetOp,
        IndexConfig,
        Item,
        ListNamespacesOp,
        Op,
        PutOp,
        Result,
        SearchItem,
        SearchOp,
        TTLConfig,
        validate_op_namespace,
    )
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise require("langgraph", "langgraph") from exc

import duckdb

from aios_memory.errors import AccessDeniedError, InvalidInputError, QueryError
from aios_memory.integrations import langgraph_items as li
from aios_memory.memory import check_namespace
from aios_memory.provider import MODALITIES
from aios_memory.query import run
from aios_memory.search import MAX_K
from aios_memory.store import MemoryStore

_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()
KEY, PART, REV, UPDATED, INDEXED, UNSCORED = (
    li.field_sql(f) for f in ("key", "part", "rev", "updated_at", "indexed", "unscored")
)
HEAD = f"{PART} = '0' AND json_type(metadata, '$.{li.META}.value') = 'OBJECT' AND {REV} IS NOT NULL"
MAX_PAGE = 2**40  # limit and offset beyond it mean "all"


def _lock(path: Any) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(str(Path(str(path)).resolve()), threading.Lock())


class AiosMemoryStore(BaseStore):
    """A LangGraph ``BaseStore`` whose items are memories of a ``MemoryStore`` (a path or an open store)."""

    supports_ttl = True

    def __init__(
        self,
        store: MemoryStore | str | Path = "langgraph-memories",
        *,
        index: IndexConfig | None = None,
        ttl: TTLConfig | None = None,
    ) -> None:
        self.store = store if isinstance(store, MemoryStore) else MemoryStore(store)
        config = dict(index or {})
        if config.get("embed") is not None:
            raise InvalidInputError(
                "AiosMemoryStore embeds with the store's own models (text: MiniLM, images: CLIP, audio: "
                "Whisper); leave out index['embed']"
            )
        fields, dims = li.index_fields(config), config.get("dims")
        if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int)):
            raise InvalidInputError(f"index['dims'] is an integer, got {dims!r}")
        if dims is not None and dims != int(self.store.provider_for("text").dim):
            raise InvalidInputError(
                f"index['dims'] is {dims}, but this store's text provider embeds "
                f"{self.store.provider_for('text').dim} dimensions"
            )
        self.index_config = {"fields": fields, "dims": dims}
        self._fields = li.tokens(fields)
        self.ttl_config = ttl
        self._lock = _lock(self.store.path)
        self._con: tuple[int, Any, list[str]] | None = None
        self._con_guard = threading.RLock()

    # --- the two methods BaseStore leaves abstract ----------------------------------------------

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run ``ops`` in order; as in LangGraph's stores, reads see the state before this batch's puts,
        and of several puts to one key the last counts. Every put is checked before anything is written."""
        ops = list(ops)
        puts: dict[tuple[tuple[str, ...], str], PutOp] = {}
        for op in ops:
            validate_op_namespace(op)
            if isinstance(op, PutOp):
                if not op.namespace or op.namespace[0] == "langgraph":
                    raise InvalidInputError(f"cannot put an item in namespace {op.namespace!r}")
                check_namespace(li.store_namespace(op.namespace))
                if op.value is not None:
                    li.item_rows(op, self._fields, "", li.now())  # checks it; nothing is kept
                    li.check_media(op.value)
                puts[(tuple(op.namespace), str(op.key))] = op
            elif not isinstance(op, (GetOp, SearchOp, ListNamespacesOp)):
                raise InvalidInputError(f"unknown operation {type(op).__name__}")
        results: list[Result] = [None] * len(ops)
        refresh: dict[tuple[str, str], dict[str, Any]] = {}
        for i, op in enumerate(ops):
            if isinstance(op, GetOp):
                results[i] = self._get(op, refresh)
            elif isinstance(op, SearchOp):
                results[i] = self._search(op, refresh)
            elif isinstance(op, ListNamespacesOp):
                results[i] = self._list_namespaces(op)
        if refresh:
            self._refresh(refresh, {(li.store_namespace(ns), k) for ns, k in puts})
        if puts:
            self._put(list(puts.values()))
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return await asyncio.to_thread(self.batch, list(ops))

    # --- reads ----------------------------------------------------------------------------------

    def _connection(self) -> tuple[Any, list[str]]:
        """A connection over the newest version, and its tables: opened once per version (opening one
        costs more than a lookup), so reads between two commits share it."""
        version = self.store.version
        with self._con_guard:
            if self._con is None or self._con[0] != version:
                if self._con is not None:
                    self._con[1].close()
                con = self.store.connection()
                self._con = (version, con, [m for m in MODALITIES if self._holds(m)])
            return self._con[1], self._con[2]

    def _holds(self, modality: str) -> bool:
        try:
            return bool(self.store.files(modality))
        except AccessDeniedError:  # a handle that may not list files: ask the (slower) statistics
            return modality in self.store.stats()["tables"]

    def _tables(self) -> list[str]:
        return self._connection()[1]

    def _sql(self, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        for attempt in range(2):
            with self._con_guard:  # the views are the connection's own: one statement at a time
                con, _ = self._connection()
                try:
                    return run(con, sql, params).to_pylist()
                except (duckdb.IOException, QueryError):  # a file of its version was cleaned up: reopen once
                    if attempt:
                        raise
                    con.close()
                    self._con = None
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the cached DuckDB connection (the next read opens another)."""
        with self._con_guard:
            if self._con is not None:
                self._con[1].close()
                self._con = None

    def _heads(self, where: str, params: list[Any], tail: str = "") -> list[tuple[str, dict[str, Any]]]:
        """Well-formed items (their newest rev) whose head rows match ``where``, with their namespaces."""
        rows = self._sql(
            f"SELECT namespace, metadata FROM text_memories WHERE {HEAD} AND {where} "  # noqa: S608 - our own predicate text; values are parameters
            f"QUALIFY row_number() OVER (PARTITION BY namespace, {KEY} ORDER BY {UPDATED} DESC, {REV} DESC) = 1 "
            f"{tail}",
            params,
        )
        return [(r["namespace"], meta) for r in rows if (meta := li.head_of(r)) is not None]

    def _get(self, op: GetOp, refresh: dict[tuple[str, str], dict[str, Any]]) -> Item | None:
        if "text" not in self._tables():
            return None
        live, live_params = li.live_sql(li.now())
        found = self._heads(
            f"namespace = ? AND {KEY} = ? AND {live}",
            [li.store_namespace(op.namespace), str(op.key), *live_params],
        )
        if not found:
            return None
        namespace, meta = found[0]
        if op.refresh_ttl and meta.get("ttl") is not None:
            refresh[(namespace, meta["key"])] = meta
        return self._item(namespace, meta)

    def _item(self, namespace: str, meta: dict[str, Any], score: Any = False) -> Item:
        media = meta.get("media") or []
        data = self._media(namespace, meta) if any(file is None for _, _, file in media) else {}
        kw = {
            "namespace": li.item_namespace(namespace),
            "key": meta["key"],
            "value": li.restore(meta["value"], media, data),
            "created_at": meta["_created"],
            "updated_at": meta["_updated"],
        }
        return Item(**kw) if score is False else SearchItem(score=score, **kw)

    def _media(self, namespace: str, meta: dict[str, Any]) -> dict[int, bytes]:
        found: dict[int, bytes] = {}
        for mod in ("image", "audio"):
            if mod not in self._tables():
                continue
            for row in self._sql(
                f"SELECT {PART} AS part, media FROM {mod}_memories WHERE namespace = ? AND {KEY} = ? "  # noqa: S608 - a fixed table name and our own field paths
                f"AND {REV} = ? ORDER BY created_at",
                [namespace, meta["key"], meta["rev"]],
            ):
                found.setdefault(int(row["part"]), row["media"])
        return found

    def _where(self, op: SearchOp) -> tuple[str, list[Any]]:
        """The head rows a search selects: under the prefix, not expired, matching the filter."""
        parts = [li.prefix_sql(tuple(op.namespace_prefix)), li.live_sql(li.now()), li.filter_sql(op.filter)]
        return " AND ".join(p for p, _ in parts), [x for _, ps in parts for x in ps]

    def _search(self, op: SearchOp, refresh: dict[tuple[str, str], dict[str, Any]]) -> list[SearchItem]:
        for name, n in (("limit", op.limit), ("offset", op.offset)):
            if isinstance(n, bool) or not isinstance(n, int):
                raise InvalidInputError(f"{name} must be an integer, got {n!r}")
        limit, offset = min(max(op.limit, 0), MAX_PAGE), min(max(op.offset, 0), MAX_PAGE)
        tables = self._tables()
        if "text" not in tables or limit == 0:
            return []
        where, params = self._where(op)
        if isinstance(op.query, str) and op.query.strip():
            if op.filter:  # the items the filter selects, by rev: ranking then scores their rows only
                revs = self._sql(f"SELECT {REV} AS rev FROM text_memories WHERE {HEAD} AND {where}", params)  # noqa: S608 - our own predicate text; values are parameters
                rows, row_params = (
                    f"{INDEXED} = 'true' AND list_contains(?, {REV})",
                    [[r["rev"] for r in revs]],
                )
            else:  # no subquery: the store's search maps a predicate's rows by position, in scan order
                prefix, row_params = li.prefix_sql(tuple(op.namespace_prefix))
                rows = f"{INDEXED} = 'true' AND {prefix}"
            hits = self._ranked(op.query, limit, offset, tables, rows, row_params)
            if len(hits) < limit:  # as LangGraph's stores do: unscored items fill the page
                hits += [(ns, m, None) for ns, m in self._heads(
                    f"{where} AND {UNSCORED} = 'true'", params, f"ORDER BY {UPDATED} DESC LIMIT {limit - len(hits)}"
                )]  # fmt: skip
        else:
            tail = f"ORDER BY {UPDATED} DESC, namespace, {KEY} LIMIT {limit} OFFSET {offset}"
            hits = [(ns, m, None) for ns, m in self._heads(where, params, tail)]
        out = []
        for namespace, meta, score in hits:
            if op.refresh_ttl and meta.get("ttl") is not None:
                refresh[(namespace, meta["key"])] = meta
            out.append(self._item(namespace, meta, score))
        return out

    def _ranked(
        self, query: str, limit: int, offset: int, tables: list[str], rows: str, params: list[Any]
    ) -> list[tuple[str, dict[str, Any], float]]:
        """Items ranked by their best-scoring row among the rows ``rows`` selects; an item counts only
        if its head row is live (an expired item's passages may rank: it is dropped here)."""
        need = offset + limit
        spaces: dict[str, dict[tuple[str, str], tuple[str, dict[str, Any], float]]] = {}
        for mod in tables:
            k = min(max(2 * need, 10), MAX_K)
            while True:
                found = self.store.search(query, k, modality=mod, where=rows, params=params)
                pooled: dict[tuple[str, str], tuple[str, dict[str, Any], float]] = {}
                for m in found:
                    meta = m.metadata.get(li.META) or {}
                    key = (m.namespace, meta.get("key"))
                    if key not in pooled:  # results come best first: the first row of an item is its best
                        pooled[key] = (m.namespace, meta, float(m.score))
                if len(found) < k or len(pooled) >= need or k >= MAX_K:
                    break
                k = min(k * 4, MAX_K)
            space = spaces.setdefault(li.space(self.store, mod), {})
            for key, hit in pooled.items():
                if key not in space or hit[2] > space[key][2]:
                    space[key] = hit
        ranked = li.fuse(spaces)[offset:need]
        live, live_params = li.live_sql(li.now())
        revs = [m.get("rev") for _, m, _ in ranked]
        heads = {  # the items as their head rows hold them (a passage row carries no value)
            (ns, meta["key"]): meta
            for ns, meta in self._heads(f"list_contains(?, {REV}) AND {live}", [revs, *live_params])
        }
        return [(ns, heads[(ns, m["key"])], score) for ns, m, score in ranked if (ns, m.get("key")) in heads]

    def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        if "text" not in self._tables():
            return []
        live, live_params = li.live_sql(li.now())
        rows = self._sql(
            f"SELECT DISTINCT namespace FROM text_memories WHERE {HEAD} AND {KEY} IS NOT NULL AND {live}",  # noqa: S608 - our own field paths
            live_params,
        )
        names = [li.item_namespace(r["namespace"]) for r in rows]
        names = [n for n in names if all(li.matches(c, n) for c in op.match_conditions or ())]
        if op.max_depth is not None:
            names = list({n[: op.max_depth] for n in names})
        return sorted(names)[op.offset : op.offset + op.limit]

    # --- writes ---------------------------------------------------------------------------------

    def _existing(self, keys: set[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
        """Every row of the items ``(store namespace, key)`` (well-formed or not: a put replaces them all),
        and the creation time of the live item: ``{"ids": [...], "created_at": ...}``."""
        found: dict[tuple[str, str], dict[str, Any]] = {}
        live = li.stamp(li.now())
        for mod in self._tables():
            rows = self._sql(
                f"SELECT id, namespace, {KEY} AS key, metadata FROM {mod}_memories WHERE {KEY} IS NOT NULL "  # noqa: S608 - a fixed table name and our own field paths
                f"AND list_contains(?, namespace) AND list_contains(?, {KEY})",
                [sorted({ns for ns, _ in keys}), sorted({k for _, k in keys})],
            )
            for r in rows:
                k = (r["namespace"], r["key"])
                if k not in keys:
                    continue
                entry = found.setdefault(k, {"ids": [], "created_at": None})
                entry["ids"].append(r["id"])
                head = li.head_of(r) if mod == "text" else None
                if head is not None and (head.get("expires_at") is None or head["expires_at"] > live):
                    entry["created_at"] = entry["created_at"] or head["created_at"]
        return found

    def _put(self, puts: list[PutOp]) -> None:
        with self._lock:
            at = li.now()
            keys = {(li.store_namespace(op.namespace), str(op.key)) for op in puts}
            old = self._existing(keys)
            groups: dict[str, list[tuple[Any, dict[str, Any]]]] = {}
            for op in puts:
                if op.value is None:
                    continue
                ns = li.store_namespace(op.namespace)
                created = (old.get((ns, str(op.key))) or {}).get("created_at") or li.stamp(at)
                groups.setdefault(ns, []).extend(li.item_rows(op, self._fields, created, at))
            for ns, rows in groups.items():
                self.store.add_many(
                    [c for c, _ in rows], namespace=ns, metadata=[{li.META: m} for _, m in rows], dedupe=False
                )
            doomed = [i for entry in old.values() for i in entry["ids"]]
            if doomed:
                self.store.delete(doomed, missing_ok=True)

    def _refresh(self, items: dict[tuple[str, str], dict[str, Any]], being_put: set[tuple[str, str]]) -> None:
        """Move the expiry of items read with ``refresh_ttl``: one metadata update of each head row."""
        at = li.now()
        with self._lock:
            for (ns, key), meta in items.items():
                if (ns, key) in being_put:
                    continue
                for r in self._sql(
                    f"SELECT id, metadata FROM text_memories WHERE namespace = ? AND {KEY} = ? AND {REV} = ? "  # noqa: S608 - our own field paths
                    f"AND {PART} = '0'",
                    [ns, key, meta["rev"]],
                ):
                    m = li.meta_of(r)
                    m["expires_at"] = li.stamp(at + dt.timedelta(minutes=meta["ttl"]))
                    self.store.update(r["id"], metadata={li.META: m})

    def sweep_ttl(self) -> int:
        """Delete every row of expired items; returns how many memories were deleted."""
        live, params = li.live_sql(li.now())
        with self._lock:
            expired = f"SELECT {REV} FROM text_memories WHERE {PART} = '0' AND NOT {live}"  # noqa: S608 - our own field paths
            ids = [
                r["id"]
                for mod in self._tables()
                for r in self._sql(f"SELECT id FROM {mod}_memories WHERE {REV} IN ({expired})", params)  # noqa: S608 - a fixed table name and our own field paths
            ]
            return self.store.delete(ids, missing_ok=True) if ids else 0
