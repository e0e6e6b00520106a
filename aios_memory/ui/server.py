"""The web page's server: ``ThreadingHTTPServer`` on 127.0.0.1, a JSON API over ``MemoryStore``, static files.

API (every response is JSON except the page, its two assets and media):

  GET  /                     the page (static/index.html; app.js and style.css beside it)
  GET  /api/stats            the store's stats, and which queries each table accepts
  GET  /api/memories         ?modality=text|image|audio &namespace= &limit= &offset=  newest first
  GET  /api/media/<id>       a memory's stored bytes, Content-Type from its media_type (byte ranges served)
  GET  /api/thumb/<id>       a PNG/JPEG thumbnail of an image memory, made with Pillow
  POST /api/search           {"query": text, "modality": ""|text|image|audio, "namespace": str|null, "k": n}
  POST /api/search/image     raw image bytes; ?modality= &namespace= &k= in the query string

Errors are ``{"error": message, "type": name}``: 400 for input the store refuses (its own message), 404
for an unknown id or path, 413 for a body over the limit, 403 for a foreign Host or Origin header (a
guard against DNS rebinding and cross-site requests), 503 when a provider cannot run (weights missing).
Files are only ever read from the package's own static folder, by a fixed table of names.
"""

from __future__ import annotations

import io
import json
import re
import sys
import threading
import traceback
import webbrowser
from collections import OrderedDict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import click

from aios_memory.errors import (
    AiosMemoryError,
    InvalidInputError,
    MemoryNotFoundError,
    ProviderError,
    QueryError,
    QueryTimeoutError,
)

HOST = "127.0.0.1"
STATIC = Path(__file__).resolve().parent / "static"
STATIC_FILES = {  # URL path -> (file in STATIC, Content-Type); nothing else is ever read from disk
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
    "/icon.svg": ("icon.svg", "image/svg+xml"),
}
MODALITIES = ("text", "image", "audio")
MAX_UPLOAD_BYTES = 32 * 1024 * 1024  # a dropped image; larger bodies get 413 before any byte is read
MAX_JSON_BYTES = 64 * 1024
DRAIN_BYTES = 64 * 1024 * 1024  # a body this much over the limit is read (and dropped) before the 413
MAX_LIMIT = 200  # memories per page
SQL_TIMEOUT = (
    10.0  # seconds a page's listing query or search may run before it is stopped (QueryTimeoutError, 504)
)
MAX_K = 100  # search results per table
MAX_ID_CHARS = 128
THUMB_PX = 320
THUMB_CACHE = 256
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; media-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "ApiError") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


# --- what the API returns ----------------------------------------------------------------------------
def _iso(value: Any) -> str | None:
    return value.isoformat() if hasattr(value, "isoformat") else None


def memory_json(modality: str, row: dict[str, Any]) -> dict[str, Any]:
    """One memory for the page: never its media bytes or vectors (the page fetches media by id)."""
    meta = row.get("metadata")
    if isinstance(meta, str):
        meta = json.loads(meta) if meta else {}
    out = {
        "id": row["id"],
        "modality": modality,
        "namespace": row["namespace"],
        "created_at": _iso(row.get("created_at")),
        "source": row.get("source"),
        "content": row.get("content"),
        "media_type": row.get("media_type"),
        "metadata": meta or {},
        "provider": row.get("provider"),
    }
    for name in ("start_s", "end_s", "transcript", "score", "media_bytes"):
        if row.get(name) is not None:
            out[name] = row[name]
    return out


def _int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, str):
        if not re.fullmatch(r"-?\d{1,9}", value.strip()):
            raise ApiError(400, f"{name} must be an integer, got {value!r}", "InvalidInputError")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ApiError(
            400, f"{name} must be an integer from {low} to {high}, got {value!r}", "InvalidInputError"
        )
    return value


def _modality(value: Any, allow_all: bool) -> str | None:
    if value in (None, "") and allow_all:
        return None
    if value not in MODALITIES:
        raise ApiError(
            400, f"unknown modality {value!r}; expected one of {', '.join(MODALITIES)}", "InvalidInputError"
        )
    return str(value)


def _namespace(value: Any) -> str | None:
    if value in (None, ""):
        return None
    from aios_memory.memory import check_namespace

    return check_namespace(value)  # the store's own rule and message


def stats_json(store: Any) -> dict[str, Any]:
    """``store.stats()`` plus, per table, the kinds of query that can search it."""
    stats = store.stats()
    for modality, table in stats["tables"].items():
        accepts = []
        try:
            provider = store.provider_for(modality)
            accepts = sorted({provider.modality, *provider.query_modalities})
            text = store._text_provider_for(modality)  # audio: text queries rank transcripts
            if text is not None and "text" not in accepts:
                accepts.append("text")
        except AiosMemoryError as exc:
            table["error"] = str(exc)
        table["accepts"] = sorted(accepts)
    return stats


VIEWS = {"text": "text_memories", "image": "image_memories", "audio": "audio_memories"}


def list_memories(
    store: Any, modality: str, namespace: str | None, limit: int, offset: int
) -> dict[str, Any]:
    from aios_memory.schema import EXTRA_COLUMNS

    if modality not in store.stats()["tables"]:
        return {"modality": modality, "total": 0, "offset": offset, "limit": limit, "memories": []}
    view = VIEWS[modality]  # a fixed identifier: nothing of the request is formatted into the SQL
    where, params = ("WHERE namespace = ?", [namespace]) if namespace is not None else ("", [])
    extra = "".join(f", {f.name}" for f in EXTRA_COLUMNS[modality])
    cols = "id, namespace, created_at, source, content, media_type, metadata, provider"
    rows = store.sql(
        f"SELECT {cols}, octet_length(media) AS media_bytes{extra} FROM {view} {where} "  # noqa: S608
        "ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
        [*params, limit, offset],
        timeout=SQL_TIMEOUT,
    ).to_pylist()
    count = f"SELECT count(*) AS n FROM {view} {where}"  # noqa: S608
    total = store.sql(count, params, timeout=SQL_TIMEOUT).to_pylist()[0]["n"]
    return {
        "modality": modality,
        "total": total,
        "offset": offset,
        "limit": limit,
        "memories": [memory_json(modality, r) for r in rows],
    }


def search_json(
    store: Any, query: Any, modality: str | None, namespace: str | None, k: int
) -> dict[str, Any]:
    """Results of one query, best first per table. With no modality, every table the query can rank."""
    if modality is not None:
        targets = [modality]
    else:
        targets = [m for m in MODALITIES if m in store.stats()["tables"]] or ["text"]
    results: list[dict[str, Any]] = []
    searched: list[str] = []
    skipped: dict[str, str] = {}
    for target in targets:
        try:
            found = store.search(query, k=k, modality=target, namespace=namespace, timeout=SQL_TIMEOUT)
        except (InvalidInputError, ProviderError) as exc:
            if modality is not None or not _skippable(exc):
                raise
            skipped[target] = str(exc)
            continue
        searched.append(target)
        for m in found:
            row = {**m.__dict__, **m.extra}
            results.append(memory_json(m.modality, row))
    return {"results": results, "searched": searched, "skipped": skipped}


def _skippable(exc: Exception) -> bool:
    """Errors that say "this table cannot take this query", as opposed to a bad query."""
    from aios_memory.errors import ModalityError

    return isinstance(exc, (ModalityError, ProviderError))


def thumbnail(data: bytes) -> tuple[bytes, str]:
    """A small PNG (images with alpha) or JPEG of an image memory, at most THUMB_PX on its long side."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (THUMB_PX, THUMB_PX))  # JPEG: decode at a reduced scale
        img = ImageOps.exif_transpose(img)
        img.thumbnail((THUMB_PX, THUMB_PX))
        alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
        img = img.convert("RGBA" if alpha else "RGB")
        buf = io.BytesIO()
        if alpha:
            img.save(buf, format="PNG", optimize=True)
            return buf.getvalue(), "image/png"
        img.save(buf, format="JPEG", quality=85)
        return buf.getvalue(), "image/jpeg"


# --- HTTP ------------------------------------------------------------------------------------------------
class UiServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, store: Any, port: int = 0, max_upload: int = MAX_UPLOAD_BYTES) -> None:
        super().__init__((HOST, port), UiHandler)
        self.store = store
        self.max_upload = max_upload
        self.port = int(self.server_address[1])
        self.allowed_hosts = {f"127.0.0.1:{self.port}", f"localhost:{self.port}"}
        self._thumbs: OrderedDict[tuple[str, Any], tuple[bytes, str]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def thumb(self, id: str) -> tuple[bytes, str]:
        memory = self.store.get(id)
        if memory.modality != "image" or not memory.media:
            raise ApiError(404, f"memory {id!r} is not an image", "MemoryNotFoundError")
        key = (id, memory.updated_at)  # an update that replaces the image changes updated_at
        with self._lock:
            if key in self._thumbs:
                self._thumbs.move_to_end(key)
                return self._thumbs[key]
        try:
            out = thumbnail(memory.media)
        except Exception as exc:  # noqa: BLE001 - a format Pillow cannot draw: say so, don't crash
            raise ApiError(
                415, f"cannot draw a thumbnail of memory {id!r}: {exc}", "UnsupportedMediaError"
            ) from None
        with self._lock:
            self._thumbs[key] = out
            while len(self._thumbs) > THUMB_CACHE:
                self._thumbs.popitem(last=False)
        return out


class UiHandler(BaseHTTPRequestHandler):
    server: UiServer
    server_version = "aios-memory-ui"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    # --- plumbing ------------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        body = json.dumps(obj, ensure_ascii=False, default=_iso, allow_nan=False).encode()
        self._send(status, body, "application/json; charset=utf-8")

    def _error(self, status: int, message: str, kind: str) -> None:
        self.close_connection = True  # the body of a refused request may still be unread
        self._json(status, {"error": message, "type": kind})

    def _guard(self) -> bool:
        """Only requests addressed to this loopback server, from its own page (or no page at all)."""
        host = (self.headers.get("Host") or "").strip().lower()
        if host not in self.server.allowed_hosts:
            self._error(
                403, f"refused Host {host!r}: this server answers only {self.server.url}", "HostRefused"
            )
            return False
        origin = self.headers.get("Origin")
        if origin is not None and origin.lower() not in {f"http://{h}" for h in self.server.allowed_hosts}:
            self._error(403, f"refused Origin {origin!r}", "OriginRefused")
            return False
        return True

    def _handle(self, route: Callable[[], None]) -> None:
        try:
            if self._guard():
                route()
        except ApiError as exc:
            self._error(exc.status, exc.message, exc.kind)
        except MemoryNotFoundError as exc:
            self._error(404, str(exc), type(exc).__name__)
        except QueryTimeoutError as exc:  # the request was fine; the work took too long
            self._error(504, str(exc), type(exc).__name__)
        except (InvalidInputError, QueryError) as exc:
            self._error(400, str(exc), type(exc).__name__)
        except ProviderError as exc:
            self._error(503, str(exc), type(exc).__name__)
        except AiosMemoryError as exc:
            self._error(500, str(exc), type(exc).__name__)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:  # noqa: BLE001 - one request's bug must not end the server
            traceback.print_exc(file=sys.stderr)
            self._error(500, "internal error (see the server's log)", "InternalError")

    def _body(self, limit: int) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise ApiError(411, "a Content-Length header is required", "LengthRequired")
        if int(length) > limit:
            if int(length) <= limit + DRAIN_BYTES:  # read and drop it, so the client sees the answer
                left = int(length)
                while left > 0 and (chunk := self.rfile.read(min(left, 1 << 16))):
                    left -= len(chunk)
            raise ApiError(
                413, f"request body is {int(length)} bytes; the limit is {limit}", "InputTooLargeError"
            )
        return self.rfile.read(int(length))

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        sys.stderr.write(f"{self.address_string()} {format % args}\n")

    # --- routes ---------------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802
        self._handle(self._get)

    def do_HEAD(self) -> None:  # noqa: N802
        self._handle(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._handle(self._post)

    def _get(self) -> None:
        url = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        store = self.server.store
        if url.path in STATIC_FILES:
            name, ctype = STATIC_FILES[url.path]
            headers = {"Content-Security-Policy": CSP, "X-Frame-Options": "DENY"}
            self._send(200, (STATIC / name).read_bytes(), ctype, headers)
        elif url.path == "/api/stats":
            self._json(200, stats_json(store))
        elif url.path == "/api/memories":
            modality = _modality(q.get("modality", "text"), allow_all=False)
            assert modality is not None
            limit = _int(q.get("limit", "24"), "limit", 1, MAX_LIMIT)
            offset = _int(q.get("offset", "0"), "offset", 0, 10**9)
            self._json(200, list_memories(store, modality, _namespace(q.get("namespace")), limit, offset))
        elif m := re.fullmatch(r"/api/(media|thumb)/([^/]+)", url.path):
            id = self._id(m.group(2))
            if m.group(1) == "thumb":
                body, ctype = self.server.thumb(id)
                self._send(200, body, ctype)
            else:
                self._media(id)
        else:
            raise ApiError(404, f"no such page: {url.path}", "NotFound")

    def _id(self, raw: str) -> str:
        from urllib.parse import unquote

        id = unquote(raw)
        if not id or len(id) > MAX_ID_CHARS:
            raise ApiError(404, f"no memory with id {id[:MAX_ID_CHARS]!r}", "MemoryNotFoundError")
        return id

    def _media(self, id: str) -> None:
        memory = self.server.store.get(id)
        if not memory.media:
            raise ApiError(404, f"memory {id!r} has no media (it is a {memory.modality} memory)", "NoMedia")
        ctype = memory.media_type or ""
        if not re.fullmatch(r"(image|audio)/[a-z0-9.+-]+", ctype):
            ctype = "application/octet-stream"
        data, size = memory.media, len(memory.media)
        headers = {"Accept-Ranges": "bytes", "Content-Disposition": "inline"}
        rng = re.fullmatch(r"bytes=(\d*)-(\d*)", (self.headers.get("Range") or "").strip())
        if rng and rng.group(1) + rng.group(2):
            if rng.group(1):
                start, end = int(rng.group(1)), int(rng.group(2) or size - 1)
            else:  # the last N bytes
                start, end = max(0, size - int(rng.group(2))), size - 1
            end = min(end, size - 1)
            if start > end:
                self._send(416, b"", ctype, {"Content-Range": f"bytes */{size}"})
                return
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            self._send(206, data[start : end + 1], ctype, headers)
            return
        self._send(200, data, ctype, headers)

    def _post(self) -> None:
        url = urlsplit(self.path)
        store = self.server.store
        if url.path == "/api/search":
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if ctype != "application/json":
                raise ApiError(415, "send the search as application/json", "UnsupportedMediaType")
            try:
                body = json.loads(self._body(MAX_JSON_BYTES))
            except ValueError as exc:
                raise ApiError(400, f"the body is not valid JSON: {exc}", "InvalidInputError") from None
            if not isinstance(body, dict):
                raise ApiError(400, "the body must be a JSON object", "InvalidInputError")
            query = body.get("query")
            if not isinstance(query, str):
                raise ApiError(400, "query must be a string of text", "InvalidInputError")
            k = _int(body.get("k", 10), "k", 1, MAX_K)
            result = search_json(
                store, query, _modality(body.get("modality"), True), _namespace(body.get("namespace")), k
            )
            self._json(200, result)
        elif url.path == "/api/search/image":
            from aios_memory.modality import sniff

            q = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            modality = _modality(q.get("modality", "image"), True)
            k = _int(q.get("k", "10"), "k", 1, MAX_K)
            namespace = _namespace(q.get("namespace"))
            data = self._body(self.server.max_upload)
            if not data:
                raise ApiError(400, "the body is empty: send the image's bytes", "EmptyContentError")
            if sniff(data)[0] != "image":
                raise ApiError(
                    400, "the file is not an image (PNG, JPEG, GIF, WebP, TIFF, BMP)", "ModalityError"
                )
            self._json(200, search_json(store, data, modality, namespace, k))
        else:
            raise ApiError(404, f"no such endpoint: POST {url.path}", "NotFound")


def build_server(
    store: Any, port: int = 0, *, max_upload: int = MAX_UPLOAD_BYTES, create: bool = False
) -> UiServer:
    """A server for ``store`` (a ``MemoryStore`` or a directory) on 127.0.0.1:``port`` (0: a free port).

    Call ``serve_forever()`` on it (in a thread, for tests), then ``shutdown()`` and ``server_close()``.
    """
    from aios_memory.store import MemoryStore

    if not isinstance(store, MemoryStore):
        store = MemoryStore(store, create=create)
    return UiServer(store, port, max_upload)


@click.command("ui")
@click.option(
    "--store",
    "store_path",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Store directory (default: the group's --store, else $AIOS_MEMORY_HOME/store).",
)
@click.option("--port", default=8765, show_default=True, help="Port on 127.0.0.1 (0: any free port).")
@click.option("--no-browser", is_flag=True, help="Do not open a browser tab.")
@click.option(
    "--max-upload",
    default=MAX_UPLOAD_BYTES,
    show_default=True,
    help="Largest image, in bytes, that may be dropped to search by (larger: HTTP 413).",
)
@click.pass_context
def ui(ctx: click.Context, store_path: Path | None, port: int, no_browser: bool, max_upload: int) -> None:
    """Serve a local web page (127.0.0.1 only) to browse the store and search it by text or image."""
    path = store_path or (ctx.obj or {}).get("store")
    if path is None:
        from aios_memory.home import default_store_path

        path = default_store_path()
    if not 0 <= port <= 65535:
        raise click.BadParameter(f"{port} is not a port number", param_hint="--port")
    try:
        server = build_server(path, port, max_upload=max_upload)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {HOST}:{port}: {exc}") from exc
    click.echo(f"aios-memory ui: serving {server.store.path} at {server.url} (Ctrl-C stops it)")
    sys.stdout.flush()
    if not no_browser:
        threading.Thread(target=webbrowser.open, args=(server.url,), daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
