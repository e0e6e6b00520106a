"""An MCP server over a ``MemoryStore``: ``aios-memory serve --standalone`` (stdio), or per client of
the service's daemon.

Built on the official ``mcp`` SDK (``pip install "aios-memory[mcp]"``), imported only when a server is
built, so the rest of the CLI never loads it. Tools (``aios_memory.mcp_tools``): ``remember``,
``recall``, ``forget``, ``sql``, ``classify_image`` and ``history``; resources: ``memory://recent``,
``memory://recent/{modality}``, ``memory://stats`` and ``memory://{id}``; no prompts.

Everything goes through the store handle given, which carries the caller's scope: the store itself
enforces namespaces, rights and the media column. On top of that, no data leaves by surprise: media
arrive as base64 bytes; the server reads a file of its own only under directories its operator allows
(``--allow-read``); every ``AiosMemoryError`` becomes a tool error whose text names neither the store's
directory nor an allowed one; media bytes and vectors are never sent.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import decimal
import json
import logging
import math
import os
import stat
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from aios_memory.errors import (
    AccessDeniedError,
    AiosMemoryError,
    EmptyContentError,
    InputTooLargeError,
    InvalidInputError,
)

ROW_LIMIT = 1000  # most rows the sql tool returns
K_LIMIT = 100  # most memories one recall returns
SQL_TIMEOUT = 10.0  # seconds the sql and recall tools let one query run (serve --sql-timeout; 0: no limit)
RECENT = 20  # memories a memory://recent resource lists
MAX_UPLOAD_BYTES = 64 * 1024 * 1024  # most media bytes one tool call may bring (base64 data or a path)
MAX_PATH_CHARS = 4096
INSTALL_HINT = 'the MCP server needs the `mcp` package: pip install "aios-memory[mcp]"'
logger = logging.getLogger(__name__)

INSTRUCTIONS = """\
Long-term multimodal memory. `remember` stores text (`content`), or an image or audio file sent as
base64 `data`; `recall` finds memories by meaning (a text `query`, or an image or audio as base64
`data`), optionally within a namespace or filtered by an SQL predicate over the memory columns (values
as ? placeholders in `params`); `sql` runs read-only SQL over text_memories, image_memories and
audio_memories; `forget` deletes memories by id (forgetting one twice is harmless); `history` shows a
memory's changes. A `path` on the server's machine is read only inside directories the operator allows
(none by default)."""


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


def memory_dict(memory: Any) -> dict[str, Any]:
    """What a client sees of a memory (``Memory.as_dict``: the CLI's shape too), JSON-safe."""
    return {key: _jsonable(value) for key, value in memory.as_dict().items()}


def recent(store: Any, modality: str | None = None, limit: int = RECENT) -> list[dict[str, Any]]:
    """The ``limit`` newest memories the client may read (of one modality, or of all), newest first,
    without media bytes (``MemoryStore.recent``: no SQL right needed)."""
    return [memory_dict(m) for m in store.recent(limit, modality=modality)]


class Served:
    """What every tool and resource call shares: the store (resolved per call), the operator's limits
    and allowed directories, and the translation of errors into MCP errors that reveal no server paths."""

    def __init__(
        self,
        store: Any,
        *,
        dedupe: float | None,
        sql_timeout: float | None,
        allow_read: Sequence[Path | str],
    ) -> None:
        resolve = callable(store) and not hasattr(store, "search")  # a MemoryStore per request
        self._resolve: Callable[[], Any] = store if resolve else lambda: store
        self.dedupe = dedupe
        self.sql_timeout = sql_timeout
        self.allow_read = tuple(os.path.realpath(d) for d in allow_read)

    def store(self) -> Any:
        return self._resolve()

    # --- errors ------------------------------------------------------------------------------------
    def scrub(self, text: str, store: Any = None) -> str:
        """``text`` with the server's directories (the store's, the allowed ones, the models', the
        user's home) replaced by placeholders."""
        from aios_memory.home import home, models_dir

        roots: list[tuple[str, str]] = []
        if getattr(store, "path", None) is not None:
            roots += [(str(store.path), "<store>"), (os.path.realpath(store.path), "<store>")]
        roots += [(d, "<allowed>") for d in self.allow_read]
        for models in (models_dir(), home()):  # the models may be outside the home (a store's record)
            roots += [(str(models), "<models>"), (os.path.realpath(models), "<models>")]
        roots += [(str(Path.home()), "~"), (os.path.realpath(Path.home()), "~")]
        for root, placeholder in sorted(roots, key=lambda r: -len(r[0])):
            if len(root.rstrip(os.sep)) > 1:
                text = text.replace(root.rstrip(os.sep), placeholder)
        return text

    @contextlib.contextmanager
    def tool_call(self) -> Iterator[Any]:
        """Yields the store; any error becomes a ``ToolError`` (type name and scrubbed message)."""
        from mcp.server.mcpserver.exceptions import ToolError

        store = None
        try:
            store = self.store()
            yield store
        except ToolError:
            raise
        except Exception as exc:  # not only AiosMemoryError: an OSError's message names paths too
            if not isinstance(exc, AiosMemoryError):
                logger.exception("MCP tool call failed")
            raise ToolError(self.scrub(f"{type(exc).__name__}: {exc}", store)) from exc

    @contextlib.contextmanager
    def resource_read(self) -> Iterator[Any]:
        from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError

        from aios_memory.errors import MemoryNotFoundError

        store = None
        try:
            store = self.store()
            yield store
        except MemoryNotFoundError as exc:
            raise ResourceNotFoundError(self.scrub(str(exc), store)) from exc
        except Exception as exc:
            if not isinstance(exc, AiosMemoryError):
                logger.exception("MCP resource read failed")
            raise ResourceError(self.scrub(f"{type(exc).__name__}: {exc}", store)) from exc

    # --- media from clients ------------------------------------------------------------------------
    def media(
        self, data: str | None, path: str | None, media_type: str | None = None
    ) -> tuple[bytes, str | None]:
        """The media bytes a call brings (base64 ``data``, or an allowed server ``path``) and the
        source to record (the path as the client gave it)."""
        from aios_memory.modality import sniff

        if (data is None) == (path is None):
            raise InvalidInputError("give the media as base64 `data` or as a server `path`: one of the two")
        if data is not None:
            raw, declared = decode_base64(data)
            media_type = media_type or declared
            source = None
        else:
            raw, source = self.read_allowed(str(path)), Path(str(path)).as_uri()
        modality, mime = sniff(raw)
        if media_type and media_type.split("/")[0].strip().lower() != modality:
            raise InvalidInputError(f"media_type {media_type!r} does not match the bytes, which are {mime}")
        return raw, source

    def read_allowed(self, path: str) -> bytes:
        """The bytes of the regular file at absolute ``path`` whose real location (symlinks resolved)
        lies inside an allowed directory. Outside, present or not, the same ``AccessDeniedError``."""
        if not self.allow_read:
            raise AccessDeniedError(
                "this server reads no files for clients (its operator allows none: serve --allow-read "
                "DIR); send the file's bytes as base64 `data` instead"
            )
        if not path or len(path) > MAX_PATH_CHARS or "\x00" in path or not os.path.isabs(path):
            raise InvalidInputError("`path` must be an absolute path on the server's machine")
        denied = AccessDeniedError(  # the same text whether or not such a file exists
            "the server reads files only inside the directories its operator allows (serve --allow-read), "
            "and this path is not one of those files"
        )
        if not self._allowed(os.path.realpath(path)):
            raise denied
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(os.path.realpath(path), flags)
        except OSError as exc:
            raise InvalidInputError(f"cannot read {path!r}: {exc.strerror or 'unreadable'}") from None
        with os.fdopen(fd, "rb") as f:
            opened = f"/proc/self/fd/{fd}"  # Linux: where the opened file really is, whatever raced
            if os.path.islink(opened) and not self._allowed(os.readlink(opened)):
                raise denied
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise InvalidInputError(f"{path!r} is not a regular file")
            _check_size(st.st_size)
            raw = f.read(MAX_UPLOAD_BYTES + 1)
        _check_size(len(raw))
        return raw

    def _allowed(self, real: str) -> bool:
        return any(real == d or real.startswith(d.rstrip(os.sep) + os.sep) for d in self.allow_read)


def _check_size(size: int) -> None:
    if size == 0:
        raise EmptyContentError("the media is empty (0 bytes)")
    if size > MAX_UPLOAD_BYTES:
        raise InputTooLargeError(f"the media is over the limit of {MAX_UPLOAD_BYTES} bytes per call")


def decode_base64(data: str) -> tuple[bytes, str | None]:
    """Base64 (standard alphabet, whitespace ignored; a ``data:<type>;base64,`` URL too) → (bytes,
    the URL's media type or None). Over ``MAX_UPLOAD_BYTES`` decoded: ``InputTooLargeError``."""
    declared = None
    if data.startswith("data:") and ";base64," in data[:256]:
        header, data = data.split(",", 1)
        declared = header[5:].split(";")[0] or None
    if len(data) > 2 * (MAX_UPLOAD_BYTES // 3 + 1) * 4:  # refused before any copy, whitespace or not
        raise InputTooLargeError(f"the media is over the limit of {MAX_UPLOAD_BYTES} bytes per call")
    compact = "".join(data.split())
    if len(compact) > (MAX_UPLOAD_BYTES // 3 + 1) * 4:
        raise InputTooLargeError(f"the media is over the limit of {MAX_UPLOAD_BYTES} bytes per call")
    try:
        raw = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInputError(f"`data` is not valid base64: {exc}") from None
    _check_size(len(raw))
    return raw, declared


def _without_prompts(server: Any) -> None:
    """MCPServer always registers prompts/list and prompts/get, so it advertises a ``prompts``
    capability; this server has none, so it drops both handlers (then it advertises no prompts, and a
    prompts/list is 'method not found')."""
    handlers = getattr(server._lowlevel_server, "_request_handlers", None)
    if not isinstance(handlers, dict) or "prompts/list" not in handlers:
        raise RuntimeError(
            "this version of the mcp SDK registers prompts differently; update _without_prompts"
        )
    for method in ("prompts/list", "prompts/get"):
        handlers.pop(method, None)


def build_server(
    store: Any,
    *,
    dedupe: float | None = None,
    sql_timeout: float | None = SQL_TIMEOUT,
    allow_read: Sequence[Path | str] = (),
) -> Any:
    """An ``mcp.server.mcpserver.MCPServer`` exposing ``store`` to MCP clients.

    ``store``: a ``MemoryStore`` (usually a scoped view), or a zero-argument callable returning the one
    to use for the current request. ``sql_timeout``: seconds the ``sql`` and ``recall`` tools let one
    query run (None: no limit). ``allow_read``: directories whose files clients may name by ``path``
    (none by default: media come as base64 bytes)."""
    try:
        from mcp.server.mcpserver import MCPServer
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc

    from aios_memory import __version__
    from aios_memory.mcp_tools import register_tools

    served = Served(store, dedupe=dedupe, sql_timeout=sql_timeout, allow_read=allow_read)
    server = MCPServer("aios-memory", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING")
    _without_prompts(server)
    register_tools(server, served)

    @server.resource("memory://recent", mime_type="application/json", name="recent memories")
    def recent_all() -> str:
        """The newest memories of every modality, newest first (no media bytes)."""
        with served.resource_read() as s:
            return json.dumps(recent(s), ensure_ascii=False)

    @server.resource("memory://stats", mime_type="application/json", name="store statistics")
    def stats() -> str:
        """The store's version and memories per modality and namespace (those this client may read)."""
        with served.resource_read() as s:
            out = {k: v for k, v in s.stats().items() if k != "path"}  # no server paths
            return json.dumps(_jsonable(out), ensure_ascii=False)

    @server.resource(
        "memory://recent/{modality}", mime_type="application/json", name="recent memories of a modality"
    )
    def recent_of(modality: str) -> str:
        """The newest memories of one modality (text, image or audio), newest first."""
        with served.resource_read() as s:
            return json.dumps(recent(s, modality), ensure_ascii=False)

    @server.resource("memory://{id}", mime_type="application/json", name="one memory")
    def one(id: str) -> str:
        """One memory by id (no media bytes)."""
        with served.resource_read() as s:
            return json.dumps(memory_dict(s.get(id)), ensure_ascii=False)

    return server
