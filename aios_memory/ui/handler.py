"""The page's HTTP routes: the guard (Host, Origin), authentication, then one route per path.

Every route runs on ``server.store.scoped(caller.scope)``: the store layer holds the caller's
namespaces and rights; no route filters results itself. Error messages go out with the server's own
directories replaced (``<store>``, ``<home>``, ``~``).
"""

from __future__ import annotations

import json
import re
import sys
import traceback
from collections.abc import Callable
from dataclasses import replace
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from aios_memory.errors import (
    AccessDeniedError,
    AiosMemoryError,
    InvalidInputError,
    MemoryNotFoundError,
    ProviderError,
    QueryError,
    QueryTimeoutError,
    StoreError,
)
from aios_memory.ui import api, render
from aios_memory.ui.api import ApiError
from aios_memory.ui.auth import Caller, clear_cookie_header, cookie_header, presented_token

if TYPE_CHECKING:
    from aios_memory.ui.server import UiServer

STATIC = Path(__file__).resolve().parent / "static"
STATIC_FILES = {  # URL path -> (file in STATIC, Content-Type); nothing else is ever read from disk
    # ("/" is static/index.html filled in by :mod:`aios_memory.ui.render`)
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
    "/icon.svg": ("icon.svg", "image/svg+xml"),
}
DRAIN_BYTES = 64 * 1024 * 1024  # a body this much over the limit is read (and dropped) before the 413
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; media-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {"Content-Security-Policy": CSP, "X-Frame-Options": "DENY"}
UNAUTHORIZED_PAGE = (
    b"<!doctype html><meta charset=utf-8><title>aios-memory: sign in</title>"
    b"<p>401: this page needs a token. Open the address <code>aios-memory ui</code> printed (it ends in "
    b"<code>?token=...</code>), or <code>/?token=</code> followed by a token from "
    b"<code>aios-memory token create</code>.</p>\n"
)


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

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj, ensure_ascii=False, default=api.iso, allow_nan=False).encode()
        self._send(status, body, "application/json; charset=utf-8", headers)

    def _error(self, status: int, message: str, kind: str) -> None:
        self.close_connection = True  # the body of a refused request may still be unread
        self._json(status, {"error": self.server.redact(message), "type": kind})

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

    def _authenticate(self) -> Caller | None:
        """The caller, or ``None`` once a 401 (or the sign-in redirect) has been sent."""
        url = urlsplit(self.path)
        cookie = self.server.cookie_name
        if url.path == "/" and self.command in ("GET", "HEAD"):
            visit = parse_qs(url.query).get("token")
            if visit:  # the sign-in link: keep the token in a cookie, then drop it from the address
                if self._caller(visit[-1]) is None:
                    self._unauthorized(api_route=False, clear=False)
                    return None
                self.close_connection = True
                self._send(
                    303, b"", "text/plain", {"Location": "/", "Set-Cookie": cookie_header(cookie, visit[-1])}
                )
                return None
        token, from_cookie = presented_token(self.headers, cookie)
        caller = self._caller(token)
        if caller is None:
            self._unauthorized(url.path.startswith("/api/"), clear=from_cookie)
        return caller

    def _caller(self, token: str | None) -> Caller | None:
        try:
            return self.server.gate.caller(token)
        except StoreError as exc:  # the tokens file is unreadable: the operator's log says why
            sys.stderr.write(f"aios-memory ui: cannot check tokens: {exc}\n")
            raise ApiError(
                503, "tokens cannot be checked now (see the server's log)", "Unavailable"
            ) from None

    def _unauthorized(self, api_route: bool, clear: bool) -> None:
        """401 saying only that a valid token is needed: the same answer for a missing, wrong or
        revoked token, on every path (whether it exists or not)."""
        self.close_connection = True
        headers = {"WWW-Authenticate": 'Bearer realm="aios-memory"'}
        if clear:  # a cookie that no longer works (revoked): the browser forgets it
            headers["Set-Cookie"] = clear_cookie_header(self.server.cookie_name)
        if api_route:
            message = "a valid token is required (Authorization: Bearer <token>, or sign in at /?token=...)"
            self._json(401, {"error": message, "type": "Unauthorized"}, headers)
        else:
            self._send(401, UNAUTHORIZED_PAGE, "text/html; charset=utf-8", {**PAGE_HEADERS, **headers})

    def _handle(self, route: Callable[[Any, Caller], None]) -> None:
        try:
            if not self._guard():
                return
            caller = self._authenticate()
            if caller is not None:
                route(self.server.store.scoped(caller.scope), caller)
        except ApiError as exc:
            self._error(exc.status, exc.message, exc.kind)
        except AccessDeniedError as exc:
            self._error(403, str(exc), type(exc).__name__)
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

    def _ctype(self) -> str:
        return (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        message = format % args
        if "token=" in message:  # the sign-in link's token never reaches the log
            message = re.sub(r"token=[^\s&\"]*", "token=<hidden>", message)
        sys.stderr.write(f"{self.address_string()} {message}\n")

    # --- routes ---------------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802
        self._handle(self._get)

    def do_HEAD(self) -> None:  # noqa: N802
        self._handle(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._handle(self._post)

    def _get(self, store: Any, caller: Caller) -> None:
        url = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        if url.path == "/":  # the page, with the caller's counts and newest memories in it
            body = render.render_page(store, self._listing(caller), caller.name, self.server.redact)
            self._send(200, body, "text/html; charset=utf-8", PAGE_HEADERS)
        elif url.path in STATIC_FILES:
            name, ctype = STATIC_FILES[url.path]
            self._send(200, (STATIC / name).read_bytes(), ctype, PAGE_HEADERS)
        elif url.path == "/api/stats":
            self._json(200, api.stats_json(store, caller.name, self.server.redact))
        elif url.path == "/api/memories":
            modality = api.check_modality(q.get("modality", "text"), allow_all=False)
            assert modality is not None
            limit = api.check_int(q.get("limit", "24"), "limit", 1, api.MAX_LIMIT)
            offset = api.check_int(q.get("offset", "0"), "offset", 0, 10**9)
            namespace = api.check_namespace(q.get("namespace"))
            self._json(200, api.list_memories(self._listing(caller), modality, namespace, limit, offset))
        elif m := re.fullmatch(r"/api/(media|thumb)/([^/]+)", url.path):
            id = self._id(m.group(2))
            if m.group(1) == "thumb":
                body, ctype = self.server.thumb(store, id)
                self._send(200, body, ctype)
            else:
                self._media(store, id)
        else:
            raise ApiError(404, f"no such page: {url.path}", "NotFound")

    def _listing(self, caller: Caller) -> Any:
        """The store for the listing's fixed queries, which are no SQL of the caller's: they run for a
        token without the SQL right too, on views that hold the token's namespaces only."""
        return self.server.store.scoped(replace(caller.scope, sql=True))

    @staticmethod
    def _id(raw: str) -> str:
        id = unquote(raw)
        if not id or len(id) > api.MAX_ID_CHARS:
            raise ApiError(404, f"no memory with id {id[: api.MAX_ID_CHARS]!r}", "MemoryNotFoundError")
        return id

    def _media(self, store: Any, id: str) -> None:
        memory = store.get(id)  # a memory outside the caller's namespaces: MemoryNotFoundError
        if not memory.media:
            raise ApiError(404, f"memory {id!r} has no media (it is a {memory.modality} memory)", "NoMedia")
        ctype = memory.media_type or ""
        if not re.fullmatch(r"(image|audio|video)/[a-z0-9.+-]+", ctype):
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

    def _post(self, store: Any, caller: Caller) -> None:
        url = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        redact = self.server.redact
        if url.path == "/api/search":
            if self._ctype() != "application/json":
                raise ApiError(415, "send the search as application/json", "UnsupportedMediaType")
            try:
                body = json.loads(self._body(api.MAX_JSON_BYTES))
            except ValueError as exc:
                raise ApiError(400, f"the body is not valid JSON: {exc}", "InvalidInputError") from None
            if not isinstance(body, dict):
                raise ApiError(400, "the body must be a JSON object", "InvalidInputError")
            query = body.get("query")
            if not isinstance(query, str):
                raise ApiError(400, "query must be a string of text", "InvalidInputError")
            k = api.check_int(body.get("k", 10), "k", 1, api.MAX_K)
            modality = api.check_modality(body.get("modality"), True)
            namespace = api.check_namespace(body.get("namespace"))
            mode = body.get("mode")
            if mode not in (None, "vector", "hybrid", "keyword"):
                raise ApiError(400, "mode must be 'vector', 'hybrid' or 'keyword'", "InvalidInputError")
            self._json(200, api.search_json(store, query, modality, namespace, k, redact, mode))
        elif url.path == "/api/search/image":
            from aios_memory.modality import sniff

            modality = api.check_modality(q.get("modality", "image"), True)
            k = api.check_int(q.get("k", "10"), "k", 1, api.MAX_K)
            namespace = api.check_namespace(q.get("namespace"))
            data = self._body(self.server.max_upload)
            if not data:
                raise ApiError(400, "the body is empty: send the image's bytes", "EmptyContentError")
            if sniff(data)[0] != "image":
                raise ApiError(
                    400, "the file is not an image (PNG, JPEG, GIF, WebP, TIFF, BMP)", "ModalityError"
                )
            self._json(200, api.search_json(store, data, modality, namespace, k, redact))
        elif url.path == "/api/memories":  # an upload: the store refuses a namespace outside the scope
            namespace = api.check_namespace(q.get("namespace"))
            data = self._body(self.server.max_upload)
            memory = api.add_memory(store, data, self._ctype(), namespace, q.get("source"))
            self._json(201, memory)
        else:
            raise ApiError(404, f"no such endpoint: POST {url.path}", "NotFound")
