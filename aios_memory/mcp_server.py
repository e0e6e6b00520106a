"""An MCP server over a ``MemoryStore``: ``aios-memory serve --store PATH`` (stdio, or ``--http``).

Built on the official ``mcp`` SDK (``pip install "aios-memory[mcp]"``), imported only when a server is
built, so the rest of the CLI never loads it. Tools: ``remember``, ``recall``, ``forget``, ``sql``,
``classify_image`` and ``history``; resources: ``memory://recent``, ``memory://recent/{modality}``, ``memory://stats``
and ``memory://{id}``. Every ``AiosMemoryError`` the store raises becomes an MCP tool error carrying the
store's message; media bytes and vectors never leave the server.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import json
import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aios_memory.errors import AiosMemoryError, InvalidInputError

ROW_LIMIT = 1000  # most rows the sql tool returns
SQL_TIMEOUT = 10.0  # seconds the sql and recall tools let one query run (serve --sql-timeout; 0: no limit)
RECENT = 20  # memories a memory://recent resource lists
MAX_PATH_CHARS = 4096
HTTP_HOST = "127.0.0.1"  # --http never listens beyond loopback
DEFAULT_PORT = 8765
INSTALL_HINT = 'the MCP server needs the `mcp` package: pip install "aios-memory[mcp]"'

INSTRUCTIONS = """\
Long-term multimodal memory. `remember` stores text, or an image/audio file given by its path;
`recall` finds memories by meaning (a text query, or an image path), optionally within a namespace or
filtered by an SQL predicate over the memory columns (values as ? placeholders in `params`); `sql` runs
read-only SQL over text_memories, image_memories and audio_memories; `forget` deletes memories by id."""


def _jsonable(value: Any) -> Any:
    """A JSON-safe copy of a value DuckDB or Arrow returned: bytes summarised, never sent."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return _jsonable(value.tolist())
    return str(value)


def media_path(value: str) -> tuple[Path, str] | None:
    """``(path, modality)`` when ``value`` names an existing file whose bytes are a known image or audio
    format; ``None`` otherwise (the value is text)."""
    from aios_memory.errors import UnsupportedMediaError
    from aios_memory.modality import sniff

    if not value or len(value) > MAX_PATH_CHARS or "\n" in value or "\x00" in value:
        return None
    try:
        path = Path(value).expanduser()
        if not path.is_file():
            return None
        with path.open("rb") as f:
            modality, _ = sniff(f.read(64))
    except (OSError, ValueError, UnsupportedMediaError):
        return None
    return path, modality


def memory_dict(memory: Any) -> dict[str, Any]:
    """What a client sees of a memory: everything but the media bytes and the vectors."""
    out = {
        "id": memory.id,
        "modality": memory.modality,
        "namespace": memory.namespace,
        "created_at": _jsonable(memory.created_at),
        "updated_at": _jsonable(memory.updated_at),
        "content": memory.content,
        "source": memory.source,
        "media_type": memory.media_type,
        "metadata": _jsonable(memory.metadata),
    }
    if memory.score is not None:
        out["score"] = float(memory.score)
    for key, value in (memory.extra or {}).items():  # audio: start_s, end_s, transcript
        out[key] = _jsonable(value)
    return out


@contextlib.contextmanager
def _tool_errors() -> Iterator[None]:
    from mcp.server.mcpserver.exceptions import ToolError

    try:
        yield
    except AiosMemoryError as exc:
        raise ToolError(f"{type(exc).__name__}: {exc}") from exc


@contextlib.contextmanager
def _resource_errors() -> Iterator[None]:
    from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError

    from aios_memory.errors import MemoryNotFoundError

    try:
        yield
    except MemoryNotFoundError as exc:
        raise ResourceNotFoundError(str(exc)) from exc
    except AiosMemoryError as exc:
        raise ResourceError(f"{type(exc).__name__}: {exc}") from exc


def recent(store: Any, modality: str | None = None, limit: int = RECENT) -> list[dict[str, Any]]:
    """The ``limit`` newest memories (of one modality, or of all), newest first."""
    from aios_memory.provider import MODALITIES
    from aios_memory.query import vector_columns, view_name

    if modality is not None and modality not in MODALITIES:
        raise InvalidInputError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    rows: list[dict[str, Any]] = []
    for mod in [modality] if modality else MODALITIES:
        exclude = ", ".join(["media", *vector_columns(mod)])
        sql = (
            f"SELECT * EXCLUDE ({exclude}) FROM {view_name(mod)} "  # noqa: S608 - our own identifiers
            "ORDER BY created_at DESC, id LIMIT ?"
        )
        for row in store.sql(sql, [int(limit)]).to_pylist():
            row["modality"] = mod
            row["metadata"] = json.loads(row["metadata"]) if row.get("metadata") else {}
            rows.append(row)
    rows.sort(key=lambda r: (r["created_at"], r["id"]), reverse=True)
    return [_jsonable({k: v for k, v in r.items() if k != "provider"}) for r in rows[:limit]]


def build_server(store: Any, *, dedupe: float | None = None, sql_timeout: float | None = SQL_TIMEOUT) -> Any:
    """An ``mcp.server.mcpserver.MCPServer`` exposing ``store`` (a ``MemoryStore``) to MCP clients.

    ``sql_timeout``: seconds the ``sql`` and ``recall`` tools let one query run (None: no limit)."""
    try:
        from mcp.server.mcpserver import MCPServer
        from mcp.types import ToolAnnotations
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc

    from aios_memory import __version__

    server = MCPServer("aios-memory", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING")
    add_kwargs: dict[str, Any] = {}
    if dedupe is not None:
        add_kwargs["dedupe"] = dedupe
    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False))
    def remember(
        content: str, namespace: str = "default", metadata: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Store a memory. `content` is text, or the path of an image or audio file on this machine
        (PNG, JPEG, GIF, WebP, TIFF, BMP; WAV, FLAC, Ogg, MP3, AIFF, M4A), which is stored as that media.
        Returns the new ids (long audio becomes one memory per 30 s window)."""
        with _tool_errors():
            media = media_path(content)
            item = media[0] if media is not None else content
            ids = store.add_many([item], namespace=namespace, metadata=metadata, **add_kwargs)
            return {"ids": ids, "modality": media[1] if media is not None else "text"}

    def _recall(
        query: str,
        modality: str | None,
        namespace: str | None,
        k: int,
        where: str | None,
        params: list[Any] | None,
        **extra: Any,
    ) -> dict[str, Any]:
        with _tool_errors():
            media = media_path(query)
            results = store.search(
                media[0] if media is not None else query,
                k=k,
                modality=modality,
                namespace=namespace,
                where=where,
                params=params,
                timeout=sql_timeout,  # the where predicate and the ranking stop with the same limit
                **{key: v for key, v in extra.items() if v is not None},
            )
            return {"memories": [memory_dict(m) for m in results]}

    recall_doc = """Find memories by meaning. `query` is text, or the path of an image file to search by
        (image→image, or text→image with a joint text-image model). `modality` picks the table searched
        (text, image or audio; default: the query's own). `where` is an SQL predicate over the memory
        columns (e.g. "metadata->>'$.kind' = ?") whose values come from `params`. Returns id, modality,
        score (cosine similarity), namespace, created_at, content/transcript/source and metadata."""

    def recall(
        query: str,
        modality: str | None = None,
        namespace: str | None = None,
        k: int = 5,
        where: str | None = None,
        params: list[Any] | None = None,
        half_life_s: float | None = None,
        order: str | None = None,
        min_score: float | None = None,
    ) -> dict[str, Any]:
        return _recall(
            query,
            modality,
            namespace,
            k,
            where,
            params,
            half_life=half_life_s,
            order=order,
            min_score=min_score,
        )

    recall.__doc__ = recall_doc + (
        "\n        `half_life_s` (seconds) multiplies each score by 0.5 ** (age / half_life_s); "
        "`min_score` drops results scoring below it (after the decay); `order` is 'score' (default) "
        "or 'newest' (the top k by score, newest first)."
    )
    server.add_tool(recall, annotations=read_only)

    @server.tool(
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True)
    )
    def forget(ids: list[str]) -> dict[str, Any]:
        """Delete memories by id, all or none (an unknown id deletes nothing and is an error)."""
        with _tool_errors():
            return {"deleted": store.delete(list(ids))}

    if callable(getattr(store, "history", None)):

        @server.tool(annotations=read_only)
        def history(id: str) -> dict[str, Any]:
            """A memory's timeline, oldest first: its add, each update and its delete (if deleted), each
            with `operation`, `at`, `version` and the memory's content and metadata after that change."""
            with _tool_errors():
                return {"history": _jsonable(store.history(id))}

    @server.tool(annotations=read_only)
    def sql(query: str, params: list[Any] | None = None, max_rows: int = 200) -> dict[str, Any]:
        """Run one read-only SQL statement (SELECT or EXPLAIN) over the views text_memories,
        image_memories and audio_memories, values as ? placeholders in `params`. `embed_text(?)` embeds
        text for vector SQL. Returns at most `max_rows` rows (limit 1000), `row_count` of them, and
        `truncated` when the result had more; bytes are summarised. A query past the server's time limit
        (10 s by default) is stopped with a QueryTimeoutError: narrow it (WHERE, LIMIT)."""
        from aios_memory.errors import QueryTimeoutError
        from aios_memory.query import timeout_error

        with _tool_errors():
            if isinstance(max_rows, bool) or not 1 <= max_rows <= ROW_LIMIT:
                raise InvalidInputError(f"max_rows must be from 1 to {ROW_LIMIT}, got {max_rows!r}")
            try:  # one row more than asked for says whether the result was cut
                table = store.sql(query, params, timeout=sql_timeout, max_rows=max_rows + 1)
            except QueryTimeoutError as exc:
                hint = (
                    "narrow the query (WHERE, LIMIT); the limit is set by `aios-memory serve --sql-timeout`"
                )
                raise timeout_error("the query", sql_timeout or 0.0, hint) from exc
            rows = table.slice(0, max_rows).to_pylist()
            return {
                "columns": table.column_names,
                "rows": _jsonable(rows),
                "row_count": len(rows),
                "truncated": table.num_rows > max_rows,
            }

    @server.tool(annotations=read_only)
    def classify_image(image: str, labels: list[str]) -> dict[str, Any]:
        """Zero-shot classification of the image file at path `image` over `labels` with the store's
        joint text-image model (CLIP). Returns each label's probability, best first."""
        with _tool_errors():
            if not labels:
                raise InvalidInputError("labels must be a non-empty list of strings")
            media = media_path(image)
            if media is None or media[1] != "image":
                raise InvalidInputError(f"{image!r} is not the path of an image file")
            probs = store.zero_shot_classification(media[0], list(labels))
            ranked = sorted(probs.items(), key=lambda kv: -kv[1])
            return {"best": ranked[0][0], "probabilities": {label: float(p) for label, p in ranked}}

    @server.resource("memory://recent", mime_type="application/json", name="recent memories")
    def recent_all() -> str:
        """The newest memories of every modality, newest first (no media bytes)."""
        with _resource_errors():
            return json.dumps(recent(store), ensure_ascii=False)

    @server.resource("memory://stats", mime_type="application/json", name="store statistics")
    def stats() -> str:
        """Counts per modality and namespace, the store's version and path."""
        with _resource_errors():
            return json.dumps(_jsonable(store.stats()), ensure_ascii=False)

    @server.resource(
        "memory://recent/{modality}", mime_type="application/json", name="recent memories of a modality"
    )
    def recent_of(modality: str) -> str:
        """The newest memories of one modality (text, image or audio), newest first."""
        with _resource_errors():
            return json.dumps(recent(store, modality), ensure_ascii=False)

    @server.resource("memory://{id}", mime_type="application/json", name="one memory")
    def one(id: str) -> str:
        """One memory by id (no media bytes)."""
        with _resource_errors():
            return json.dumps(memory_dict(store.get(id)), ensure_ascii=False)

    return server
