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

Writes: a batch's puts of one namespace are one commit; replacing or deleting items is a second commit that
removes their older rows. Puts from threads of one process are serialised. Between processes two puts of
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
from aios_memory.provider import MODALITIES
from aios_memory.query import run
from aios_memory.schema import TEXT_COLUMN
from aios_memory.store import MemoryStore

_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()
KEY, PART, REV, UPDATED, INDEXED, UNSCORED = (
    li.field_sql(f) for f in ("key", "part", "rev", "updated_at", "indexed", "unscored")
)


def _lock(path: Any) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(str(path), threading.Lock())


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
        fields = list(config.get("fields") or ["$"])
        dims = config.get("dims")
        if dims is not None and int(dims) != int(self.store.provider_for("text").dim):
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
        and of several puts to one key the last counts."""
        ops = list(ops)
        results: list[Result] = [None] * len(ops)
        puts: dict[tuple[tuple[str, ...], str], PutOp] = {}
        refresh: dict[tuple[str, str], dict[str, Any]] = {}
        for i, op in enumerate(ops):
            validate_op_namespace(op)
            if isinstance(op, GetOp):
                results[i] = self._get(op, refresh)
            elif isinstance(op, SearchOp):
                results[i] = self._search(op, refresh)
            elif isinstance(op, ListNamespacesOp):
                results[i] = self._list_namespaces(op)
            elif isinstance(op, PutOp):
                if not op.namespace or op.namespace[0] == "langgraph":
                    raise InvalidInputError(f"cannot put an item in namespace {op.namespace!r}")
                puts[(tuple(op.namespace), str(op.key))] = op
            else:
                raise InvalidInputError(f"unknown operation {type(op).__name__}")
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

    def _get(self, op: GetOp, refresh: dict[tuple[str, str], dict[str, Any]]) -> Item | None:
        if "text" not in self._tables():
            return None
        live, live_params = li.live_sql(li.now())
        rows = self._sql(
            f"SELECT namespace, metadata FROM text_memories WHERE namespace = ? AND {KEY} = ? "  # noqa: S608 - our own field paths; values are parameters
            f"AND {PART} = '0' AND {live} ORDER BY {UPDATED} DESC, {REV} DESC LIMIT 1",
            [li.store_namespace(op.namespace), str(op.key), *live_params],
        )
        if not rows:
            return None
        meta = li.meta_of(rows[0])
        if op.refresh_ttl and meta.get("ttl"):
            refresh[(rows[0]["namespace"], meta["key"])] = meta
        return self._item(rows[0]["namespace"], meta)

    def _item(self, namespace: str, meta: dict[str, Any], score: Any = False) -> Item:
        value = meta["value"]
        media = self._media(namespace, meta) if li.has_media(value) else {}
        kw = {
            "namespace": li.item_namespace(namespace),
            "key": meta["key"],
            "value": li.restore(value, media),
            "created_at": dt.datetime.fromisoformat(meta["created_at"]),
            "updated_at": dt.datetime.fromisoformat(meta["updated_at"]),
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
        parts = [li.prefix_sql(tuple(op.namespace_prefix)), li.live_sql(li.now()), li.filter_sql(op.filter)]
        return " AND ".join(p for p, _ in parts), [x for _, ps in parts for x in ps]

    def _search(self, op: SearchOp, refresh: dict[tuple[str, str], dict[str, Any]]) -> list[SearchItem]:
        for name, n in (("limit", op.limit), ("offset", op.offset)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise InvalidInputError(f"{name} must be a non-negative integer, got {n!r}")
        tables = self._tables()
        if "text" not in tables or op.limit == 0:
            return []
        where, params = self._where(op)
        if op.query:
            hits = self._ranked(op, tables, where, params)
            hits += self._unranked(f"{where} AND {UNSCORED} = 'true'", params, op.limit - len(hits), 0)
        else:
            hits = self._unranked(where, params, op.limit, op.offset)
        out = []
        for namespace, meta, score in hits:
            if op.refresh_ttl and meta.get("ttl"):
                refresh[(namespace, meta["key"])] = meta
            out.append(self._item(namespace, meta, score))
        return out

    def _unranked(
        self, where: str, params: list[Any], limit: int, offset: int
    ) -> list[tuple[str, dict, None]]:
        """Items (their newest rev) matching ``where``, most recently updated first."""
        if limit <= 0:
            return []
        rows = self._sql(
            f"SELECT namespace, metadata FROM text_memories WHERE {PART} = '0' AND {where} "  # noqa: S608 - our own predicate text; values are parameters
            f"QUALIFY row_number() OVER (PARTITION BY namespace, {KEY} ORDER BY {UPDATED} DESC, {REV} DESC) = 1 "
            f"ORDER BY {UPDATED} DESC, namespace, {KEY} LIMIT {int(limit)} OFFSET {int(offset)}",
            params,
        )
        return [(r["namespace"], li.meta_of(r), None) for r in rows]

    def _space(self, modality: str) -> str:
        """The embedding space a text query is ranked in on ``modality``'s table: the text provider's for
        text and for tables ranked by a derived text (audio transcripts), else the table's provider's."""
        provider = self.store.provider_for(modality)
        if modality == "text" or ("text" not in provider.query_modalities and modality in TEXT_COLUMN):
            return "text"
        return provider.name

    def _ranked(self, op: SearchOp, tables: list[str], where: str, params: list[Any]) -> list[Any]:
        """Items ranked by their best-scoring row. Rows scored in one embedding space (text, transcripts)
        merge by cosine; rankings of different spaces (CLIP's) fuse by reciprocal rank, equal fused ranks
        going to the text space first. Scores are cosines when one space ranked, else the fused score."""
        need = op.offset + op.limit
        spaces: dict[str, dict[tuple[str, str], tuple[str, dict[str, Any], float]]] = {}
        for mod in tables:
            k = max(2 * need, 10)
            while True:
                found = self.store.search(
                    op.query, k, modality=mod, where=f"{where} AND {INDEXED} = 'true'", params=params
                )
                pooled: dict[tuple[str, str], tuple[str, dict[str, Any], float]] = {}
                for m in found:
                    key = (m.namespace, m.metadata[li.META]["key"])
                    if key not in pooled:  # results come best first: the first row of an item is its best
                        pooled[key] = (m.namespace, m.metadata[li.META], float(m.score))
                if len(found) < k or len(pooled) >= need:
                    break
                k *= 4
            space = spaces.setdefault(self._space(mod), {})
            for key, hit in pooled.items():
                if key not in space or hit[2] > space[key][2]:
                    space[key] = hit
        ranked = li.fuse(spaces)
        return [self._current(ns, meta, score) for ns, meta, score in ranked[op.offset : need]]

    def _current(self, namespace: str, meta: dict[str, Any], score: float) -> tuple[str, dict, float]:
        """A ranked row's item as its newest rev holds it (a row of a rev being replaced may rank)."""
        if meta.get("part") == 0:
            return namespace, meta, score
        rows = self._sql(
            f"SELECT namespace, metadata FROM text_memories WHERE namespace = ? AND {KEY} = ? AND {PART} = '0' "  # noqa: S608 - our own field paths
            f"ORDER BY {UPDATED} DESC, {REV} DESC LIMIT 1",
            [namespace, meta["key"]],
        )
        return (namespace, li.meta_of(rows[0]), score) if rows else (namespace, meta, score)

    def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        if "text" not in self._tables():
            return []
        live, live_params = li.live_sql(li.now())
        rows = self._sql(
            f"SELECT DISTINCT namespace FROM text_memories WHERE {KEY} IS NOT NULL AND {PART} = '0' AND {live}",  # noqa: S608 - our own field paths
            live_params,
        )
        names = [li.item_namespace(r["namespace"]) for r in rows]
        names = [n for n in names if all(li.matches(c, n) for c in op.match_conditions or ())]
        if op.max_depth is not None:
            names = list({n[: op.max_depth] for n in names})
        return sorted(names)[op.offset : op.offset + op.limit]

    # --- writes ---------------------------------------------------------------------------------

    def _existing(self, keys: set[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
        """Every row of the items ``(store namespace, key)``: ``{"ids": [...], "created_at": ...}``."""
        found: dict[tuple[str, str], dict[str, Any]] = {}
        live = li.stamp(li.now())
        for mod in self._tables():
            rows = self._sql(
                f"SELECT id, namespace, metadata FROM {mod}_memories WHERE {KEY} IS NOT NULL "  # noqa: S608 - a fixed table name and our own field paths
                f"AND list_contains(?, namespace) AND list_contains(?, {KEY})",
                [sorted({ns for ns, _ in keys}), sorted({k for _, k in keys})],
            )
            for r in rows:
                meta = li.meta_of(r)
                k = (r["namespace"], meta["key"])
                if k in keys:
                    entry = found.setdefault(k, {"ids": [], "created_at": None})
                    entry["ids"].append(r["id"])
                    if meta.get("expires_at") is None or meta["expires_at"] > live:
                        entry["created_at"] = entry["created_at"] or meta["created_at"]
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
        """Move the expiry of items read with ``refresh_ttl`` (one metadata update per row)."""
        at = li.now()
        with self._lock:
            for (ns, key), meta in items.items():
                if (ns, key) in being_put:
                    continue
                expires = li.stamp(at + dt.timedelta(minutes=meta["ttl"]))
                for mod in self._tables():
                    for r in self._sql(
                        f"SELECT id, metadata FROM {mod}_memories WHERE namespace = ? AND {KEY} = ? AND {REV} = ?",  # noqa: S608 - a fixed table name and our own field paths
                        [ns, key, meta["rev"]],
                    ):
                        m = li.meta_of(r)
                        self.store.update(r["id"], metadata={li.META: {**m, "expires_at": expires}})

    def sweep_ttl(self) -> int:
        """Delete every row of expired items; returns how many memories were deleted."""
        live, params = li.live_sql(li.now())
        with self._lock:
            ids = [
                r["id"]
                for mod in self._tables()
                for r in self._sql(
                    f"SELECT id FROM {mod}_memories WHERE {KEY} IS NOT NULL AND NOT {live}",  # noqa: S608 - a fixed table name and our own field paths
                    params,
                )
            ]
            return self.store.delete(ids, missing_ok=True) if ids else 0
