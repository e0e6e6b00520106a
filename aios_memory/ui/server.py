"""The web page's server: ``ThreadingHTTPServer`` on 127.0.0.1, a JSON API over ``MemoryStore``, static files.

Every request carries a token (``Authorization: Bearer``, or the cookie a visit to ``/?token=`` sets;
see :mod:`aios_memory.ui.auth`) and runs on the store seen through that token's scope.

API (every response is JSON except the page, its assets and media):

  GET  /                     the page (static/index.html with the caller's counts and newest memories
                             filled in, see render.py; app.js, style.css and icon.svg beside it)
  GET  /?token=<token>       sign in: the token goes into an HttpOnly cookie; redirects to /
  GET  /api/stats            the caller's namespaces' stats, who the caller is, what each table accepts
  GET  /api/memories         ?modality=text|image|audio &namespace= &limit= &offset=  newest first
  GET  /api/media/<id>       a memory's stored bytes, Content-Type from its media_type (byte ranges served)
  GET  /api/thumb/<id>       a PNG/JPEG thumbnail of an image memory, made with Pillow
  POST /api/search           {"query": text, "modality": ""|text|image|audio, "namespace": str|null, "k": n}
  POST /api/search/image     raw image bytes; ?modality= &namespace= &k= in the query string
  POST /api/memories         store one memory: the body (text/plain: UTF-8 text; else image or audio
                             bytes); ?namespace= &source=; 201 with the memory

Errors are ``{"error": message, "type": name}``: 400 for input the store refuses (its own message), 401
without a valid token (missing, wrong or revoked: the same answer on every path), 403 for what the
token's scope does not allow (``AccessDeniedError``) and for a foreign Host or Origin header (a guard
against DNS rebinding and cross-site requests), 404 for an unknown id (or one outside the scope) or
path, 413 for a body over the limit, 503 when a provider cannot run (weights missing). Messages never
name the server's directories (``<store>``, ``<home>``, ``~`` instead). Files are only ever read from
the package's own static folder, by a fixed table of names.
"""

from __future__ import annotations

import sys
import threading
import webbrowser
from collections import OrderedDict
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import click

from aios_memory.ui.api import MAX_UPLOAD_BYTES, ApiError, thumbnail
from aios_memory.ui.auth import COOKIE_PREFIX, Gate, Redactor, new_owner_token
from aios_memory.ui.handler import UiHandler

HOST = "127.0.0.1"
THUMB_CACHE = 256

__all__ = ["HOST", "MAX_UPLOAD_BYTES", "UiServer", "build_server", "new_owner_token", "ui"]


class UiServer(ThreadingHTTPServer):
    """The page for ``store`` on 127.0.0.1:``port`` (0: a free port), for ``aios-memory ui`` or any
    process that holds a store (the service's daemon can run it in a thread over its shared store).

    ``tokens``: the ``TokenStore`` whose live tokens are accepted, each with its scope (default: the
    store's own, ``TokenStore(store.path)``). ``owner_token``: a secret (see :func:`new_owner_token`)
    accepted with the store handle's full scope, held only in this object's memory; ``None``: none.
    ``login_url`` is the page's address with the owner token, for the owner's browser.

    Call ``serve_forever()`` (in a thread, for tests or a daemon), then ``shutdown()`` and
    ``server_close()``.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        store: Any,
        port: int = 0,
        max_upload: int = MAX_UPLOAD_BYTES,
        *,
        tokens: Any | None = None,
        owner_token: str | None = None,
    ) -> None:
        if tokens is None:
            from aios_memory.service.tokens import TokenStore

            tokens = TokenStore(store.path)
        self.gate = Gate(tokens, owner_token)
        self.redact = Redactor(store.path)
        super().__init__((HOST, port), UiHandler)
        self.store = store
        self.max_upload = max_upload
        self.owner_token = owner_token
        self.port = int(self.server_address[1])
        self.allowed_hosts = {f"127.0.0.1:{self.port}", f"localhost:{self.port}"}
        self.cookie_name = f"{COOKIE_PREFIX}{self.port}"
        self._thumbs: OrderedDict[tuple[str, Any], tuple[bytes, str]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def login_url(self) -> str:
        """The address that signs the owner's browser in (without an owner token: just ``url``)."""
        return self.url if self.owner_token is None else f"{self.url}?token={self.owner_token}"

    def thumb(self, store: Any, id: str) -> tuple[bytes, str]:
        """A thumbnail of image memory ``id`` as ``store`` (the caller's scoped view) sees it; a video
        segment's is the JPEG of its representative frame that the store keeps."""
        memory = store.get(id)  # first, always: the cache holds no rights of its own
        still = memory.extra.get("thumbnail") if memory.modality == "video" else None
        if isinstance(still, bytes) and still.startswith(b"\xff\xd8\xff"):
            return still, "image/jpeg"
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


def build_server(
    store: Any,
    port: int = 0,
    *,
    max_upload: int = MAX_UPLOAD_BYTES,
    create: bool = False,
    owner: bool = True,
    tokens: Any | None = None,
) -> UiServer:
    """A :class:`UiServer` for ``store`` (a ``MemoryStore`` or a directory) on 127.0.0.1:``port``.

    With ``owner`` (the default) it gets a fresh owner token: open ``server.login_url``, or send
    ``Authorization: Bearer <server.owner_token>``. The store's service tokens are accepted too.
    """
    from aios_memory.store import MemoryStore

    if not isinstance(store, MemoryStore):
        store = MemoryStore(store, create=create)
    owner_token = new_owner_token() if owner else None
    return UiServer(store, port, max_upload, tokens=tokens, owner_token=owner_token)


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
    help="Largest body, in bytes, that may be uploaded or dropped to search by (larger: HTTP 413).",
)
@click.pass_context
def ui(ctx: click.Context, store_path: Path | None, port: int, no_browser: bool, max_upload: int) -> None:
    """Serve a local web page (127.0.0.1 only) to browse the store and search it by text or image.

    The printed address carries a token made for this run (held only in memory): it signs your browser
    in with full access. Tokens from `aios-memory token create` work too, with their scopes: open
    /?token=<token>.
    """
    path = store_path or (ctx.obj or {}).get("store")
    if path is None:
        from aios_memory.home import default_store_path

        path = default_store_path()
    if isinstance(path, str) and "://" in path:
        raise click.UsageError(f"{path}: the page serves a local store directory, not object storage")
    if not 0 <= port <= 65535:
        raise click.BadParameter(f"{port} is not a port number", param_hint="--port")
    from aios_memory.settings import use_store_models

    use_store_models(path)  # this store's models (not the default store's), unless the environment says
    try:
        server = build_server(path, port, max_upload=max_upload)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {HOST}:{port}: {exc}") from exc
    click.echo(f"aios-memory ui: serving {server.store.path} at {server.login_url} (Ctrl-C stops it)")
    sys.stdout.flush()
    if not no_browser:
        threading.Thread(target=webbrowser.open, args=(server.login_url,), daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
