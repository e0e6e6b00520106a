"""The daemon's HTTP transport: MCP over streamable HTTP on 127.0.0.1, every request with a bearer token.

A pure ASGI layer in front of the SDK's app checks ``Authorization: Bearer <token>`` against the store's
:class:`~aios_memory.service.tokens.TokenStore` (hashed, constant-time, revocation seen on the next
request): a missing, wrong or revoked token gets 401 and reaches nothing. A valid one sets the request's
scoped store in a context variable, which the SDK carries to the tool call; the tools resolve their store
from it, so the scope is enforced by the store layer for every tool and resource.
"""

from __future__ import annotations

import contextvars
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aios_memory.service.daemon import Daemon

HOST = "127.0.0.1"  # never beyond loopback
CURRENT: contextvars.ContextVar[Any] = contextvars.ContextVar("aios_memory_http_store", default=None)


def _no_store() -> Any:
    store = CURRENT.get()
    if store is None:  # a request that did not pass the token check never gets here; be sure anyway
        from aios_memory.errors import AccessDeniedError

        raise AccessDeniedError("no authenticated caller for this request")
    return store


class BearerAuth:
    """ASGI middleware: 401 without a live token; the token's scoped store for the request otherwise."""

    def __init__(self, app: Any, daemon: Daemon) -> None:
        self.app, self.daemon = app, daemon

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # the SDK's session manager starts here
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # a websocket (or anything else) is not served at all
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        kind, _, token = header.partition(" ")
        info = self.daemon.tokens.verify(token) if kind.lower() == "bearer" and token else None
        if info is None:
            await _unauthorized(send, "missing" if not header else "invalid or revoked")
            return
        self.daemon.touch()
        reset = CURRENT.set(self.daemon.store.scoped(self.daemon.base_scope.narrow(info.scope)))
        try:
            await self.app({**scope, "user": _user(info)}, receive, send)
        finally:
            CURRENT.reset(reset)


def _user(info: Any) -> Any:
    """The SDK's authenticated user for a token: an MCP session is bound to the token that opened it
    (another token's requests on it are answered as if it did not exist)."""
    from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
    from mcp.server.auth.provider import AccessToken

    return AuthenticatedUser(AccessToken(token=info.id, client_id=f"aios-memory-token-{info.id}", scopes=[]))


async def _unauthorized(send: Any, why: str) -> None:
    body = json.dumps({"error": "unauthorized", "message": f"bearer token {why}"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"www-authenticate", b'Bearer realm="aios-memory"'),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def serve_http(daemon: Daemon, port: int) -> None:
    """Serve until SIGTERM/SIGINT (uvicorn's handlers), then return."""
    import uvicorn

    from aios_memory.mcp_server import build_server

    server = build_server(
        _no_store,
        dedupe=daemon.config.dedupe,
        sql_timeout=daemon.config.sql_timeout,
        allow_read=list(daemon.config.allow_read),
    )
    from aios_memory.mcp_server import MAX_UPLOAD_BYTES

    # a request carries at most one upload, base64 (4/3 of its bytes) plus the JSON-RPC around it
    limit = MAX_UPLOAD_BYTES * 4 // 3 + 1024 * 1024
    app = BearerAuth(server.streamable_http_app(host=HOST, max_request_body_size=limit), daemon)
    config = uvicorn.Config(app, host=HOST, port=port, log_level="warning", lifespan="on")
    await uvicorn.Server(config).serve()
