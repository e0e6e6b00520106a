"""The store's daemon: one process holds the store and the models once and serves many MCP clients.

Clients connect over a Unix socket (mode 0600 in a private runtime directory, see
:mod:`aios_memory.service.runtime`); ``aios-memory serve`` is such a client, relaying an MCP host's stdio.
Each connection starts with one line of hello, ``{"aios_memory": "hello", "token": ...}`` (the token is
optional: the socket's file permissions already admit only this user; a token narrows the scope), answered
by ``{"ok": true, "pid", "version", "scope"}``; after that the connection carries MCP, one JSON-RPC
message per line, served by :func:`aios_memory.mcp_server.build_server` on ``store.scoped(scope)``.

One daemon per store: it holds an exclusive ``flock`` on the runtime lock file for its whole life (the
kernel releases it when the process dies, ``kill -9`` included), so a second one exits at once and a
stale socket of a dead one is replaced. Writes still go through the store's commit protocol, so daemons
of one store on different runtime directories (or other processes) keep the single-writer commits.

Long life: models unload after ``unload_after`` idle seconds (the next call loads them again); an
auto-started daemon exits after ``idle_exit`` seconds without clients. SIGTERM/SIGINT stop it cleanly.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import os
import signal
import socket
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

from aios_memory.scope import FULL, Scope
from aios_memory.service import runtime

HELLO_TIMEOUT = 10.0  # seconds a new connection has to send its hello line
MAX_LINE = 96 * 1024 * 1024  # longest MCP message accepted (a base64 image or clip fits)
WATCH_EVERY = 1.0  # seconds between idle checks
MAX_SERVERS = 64  # MCP servers kept built, one per scope in use (a connection keeps its own alive)
STOP_GRACE = 5.0  # seconds running requests get after SIGTERM before the process exits anyway


@dataclass(frozen=True)
class DaemonConfig:
    store: Path
    http_port: int | None = None
    dedupe: float | None = None
    sql_timeout: float | None = 10.0
    allow_read: tuple[Path, ...] = ()
    allow_media_sql: bool = False
    unload_after: float | None = 600.0
    idle_exit: float | None = None
    socket: Path | None = None  # default: runtime.socket_path(store)
    ui_port: int | None = None  # also serve the web page (service tokens only) on 127.0.0.1:ui_port
    cleanup_every: float | None = 600.0  # seconds between cleanups of versions past the store's retention
    retention: float | None = None  # seconds a superseded version stays readable; None: the store's setting


class AlreadyRunning(RuntimeError):
    """Another daemon serves this store."""


def _malloc_trim() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise), after models are unloaded."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


class _Lines:
    """The connection's incoming lines, as the SDK's stdio transport reads them (``async for``). A
    session opened with a token ends at the first message after the token is revoked."""

    def __init__(self, stream: BufferedByteReceiveStream, daemon: Daemon, token: str | None) -> None:
        self.stream, self.daemon, self.token = stream, daemon, token

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> str:
        try:
            line = await self.stream.receive_until(b"\n", MAX_LINE)
        except (
            anyio.EndOfStream,
            anyio.IncompleteRead,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
        ):
            raise StopAsyncIteration from None
        except anyio.DelimiterNotFound:
            self.daemon.log("a client sent a message over the size limit; closing its connection")
            raise StopAsyncIteration from None
        self.daemon.touch()
        if self.token is not None and self.daemon.tokens.verify(self.token) is None:
            self.daemon.log("a client's token was revoked: closing its session")
            raise StopAsyncIteration
        return line.decode("utf-8", "replace")


class _Writer:
    """The connection's outgoing side, as the SDK's stdio transport writes it."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    async def write(self, text: str) -> None:
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self.stream.send(text.encode("utf-8"))

    async def flush(self) -> None:
        return None


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        from aios_memory.service.tokens import TokenStore
        from aios_memory.store import MemoryStore

        self.config = config
        self.socket_path = config.socket or runtime.socket_path(config.store)
        self.store = MemoryStore(config.store, retention=config.retention)
        self.tokens = TokenStore(self.store.path)
        self.base_scope = FULL.with_media(config.allow_media_sql)
        self.clients = 0
        self.served = 0  # connections accepted so far
        self.last_activity = time.monotonic()
        self._servers: OrderedDict[tuple[Scope, str], Any] = OrderedDict()  # by scope, least recent first
        self._lock_fd: int | None = None

    # --- bookkeeping --------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        print(f"aios-memory daemon [{os.getpid()}]: {message}", file=sys.stderr, flush=True)

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def server_for(self, scope: Scope) -> Any:
        """The MCP server of a scope (built once per scope; every one shares the store and its models)."""
        key = (scope, scope.label)
        if key in self._servers:
            self._servers.move_to_end(key)
        else:
            from aios_memory.mcp_server import build_server

            self._servers[key] = build_server(
                self.store.scoped(scope),
                dedupe=self.config.dedupe,
                sql_timeout=self.config.sql_timeout,
                allow_read=list(self.config.allow_read),
            )
            while len(self._servers) > MAX_SERVERS:  # tokens come and go over weeks: keep the recent ones
                self._servers.popitem(last=False)
        return self._servers[key]

    def options(self) -> dict[str, Any]:
        """What the operator chose, for a proxy to compare with what its host asked for."""
        return {
            "allow_read": [str(d) for d in self.config.allow_read],
            "allow_media_sql": self.config.allow_media_sql,
            "sql_timeout": self.config.sql_timeout,
            "dedupe": self.config.dedupe,
        }

    def scope_for(self, token: str | None) -> Scope:
        """The scope of a client presenting ``token`` (None: the socket's own); ``PermissionError`` if
        the token is not live."""
        if token is None:
            return self.base_scope
        info = self.tokens.verify(token)
        if info is None:
            raise PermissionError("the token is not a live token of this store (wrong or revoked)")
        return self.base_scope.narrow(info.scope)

    # --- life -------------------------------------------------------------------------------------------
    def _take_lock(self) -> None:
        path = runtime.lock_path(self.config.store)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(
                f"a daemon already serves {self.store.path} (socket {self.socket_path})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "socket": str(self.socket_path)}).encode())
        self._lock_fd = fd

    def _bind(self) -> socket.socket:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)  # a dead daemon's socket: we hold the lock, so it is not live
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket file is created 0600: no window where others may connect
        try:
            sock.bind(str(self.socket_path))
        finally:
            os.umask(old)
        os.chmod(self.socket_path, 0o600)
        sock.listen(256)
        sock.setblocking(False)
        return sock

    def run(self) -> int:
        try:
            self._take_lock()
        except AlreadyRunning as exc:
            self.log(str(exc))
            return 1
        sock = self._bind()
        page = self._start_page() if self.config.ui_port is not None else None
        try:
            anyio.run(self._main, sock)
        finally:
            if page is not None:
                page.shutdown()
                page.server_close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)
            sock.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
        self.log("stopped")
        return 0

    def _start_page(self) -> Any:
        """The web page in a thread, over the daemon's store and models. No owner token: sign in with a
        service token (``aios-memory token create``) at ``/?token=...``."""
        import threading

        from aios_memory.ui.server import UiServer

        page = UiServer(self.store, self.config.ui_port or 0, tokens=self.tokens)
        threading.Thread(target=page.serve_forever, name="aios-memory-page", daemon=True).start()
        self.log(f"web page on {page.url} (sign in with a token: {page.url}?token=...)")
        return page

    async def _main(self, sock: socket.socket) -> None:
        listener = await anyio.abc.SocketListener.from_socket(sock)
        self.log(
            f"serving {self.store.path} on {self.socket_path}"
            + (f" and http://127.0.0.1:{self.config.http_port}/mcp" if self.config.http_port else "")
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch, tg.cancel_scope)
            if self.config.http_port is not None:
                from aios_memory.service.http import serve_http

                async def http_then_stop() -> None:
                    await serve_http(self, self.config.http_port)  # returns on SIGTERM/SIGINT (uvicorn's)
                    self._stop(tg.cancel_scope)

                tg.start_soon(http_then_stop)
            else:
                tg.start_soon(self._signals, tg.cancel_scope)
            tg.start_soon(listener.serve, self._handle)

    async def _signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                self.log(f"signal {signal.Signals(signum).name}: stopping")
                self._stop(scope)
                return

    def _stop(self, scope: anyio.CancelScope) -> None:
        """Stop serving; a request still running in a worker thread (a long query, an embedding) gets
        ``STOP_GRACE`` seconds, then the process exits anyway: a commit is atomic, so nothing committed
        is lost, and what was not committed was never acknowledged."""
        import threading

        def hard_exit() -> None:
            self.log(f"requests still running after {STOP_GRACE:g} s: exiting without them")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)
            os._exit(0)

        timer = threading.Timer(STOP_GRACE, hard_exit)
        timer.daemon = True
        timer.start()
        scope.cancel()

    async def _watch(self, scope: anyio.CancelScope) -> None:
        """Unload idle models; exit when idle (auto-started daemons)."""
        from aios_memory.plugins import get_providers

        last_cleanup = time.monotonic()
        while True:
            await anyio.sleep(WATCH_EVERY)
            every = self.config.cleanup_every
            if every is not None and time.monotonic() - last_cleanup >= every:
                last_cleanup = time.monotonic()
                await self._cleanup()
            idle = time.monotonic() - self.last_activity
            after = self.config.unload_after
            if after is not None and idle >= after:
                loaded = [p for p in get_providers().values() if p.loaded]
                unloaded = [p.name for p in loaded if await anyio.to_thread.run_sync(p.unload, after)]
                if unloaded:
                    gc.collect()
                    _malloc_trim()
                    self.log(f"unloaded {', '.join(unloaded)} after {idle:.0f} s idle")
            if self.config.idle_exit is not None and self.clients == 0 and idle >= self.config.idle_exit:
                self.log(f"no clients for {idle:.0f} s: exiting")
                scope.cancel()
                return

    async def _cleanup(self) -> None:
        """A long-lived writer's versions and superseded files go after the store's retention period
        (readers pinned to them have had that long); the heap the work freed goes back to the OS."""
        try:
            done = await anyio.to_thread.run_sync(self.store.cleanup)
        except Exception as exc:  # the next round tries again; serving goes on
            self.log(f"cleanup failed: {type(exc).__name__}: {exc}")
            return
        _malloc_trim()
        if done.get("versions_removed") or done.get("files_removed"):
            self.log(f"cleanup: {json.dumps(done, default=str)}")

    async def _handle(self, conn: Any) -> None:
        self.clients += 1
        self.served += 1
        self.touch()
        try:
            async with conn:
                await self._session(conn)
        except Exception as exc:  # one client's failure never stops the daemon
            self.log(f"client connection ended with {type(exc).__name__}: {exc}")
        finally:
            self.clients -= 1
            self.touch()

    async def _session(self, conn: Any) -> None:
        from mcp.server.stdio import stdio_server

        if not _same_user(conn):
            return
        buffered = BufferedByteReceiveStream(conn)
        hello: Any = None
        with anyio.move_on_after(HELLO_TIMEOUT):
            try:
                hello = json.loads(await buffered.receive_until(b"\n", 64 * 1024))
            except (
                anyio.EndOfStream,
                anyio.IncompleteRead,
                anyio.DelimiterNotFound,
                ValueError,
                RecursionError,
            ):
                hello = None
        if not isinstance(hello, dict) or hello.get("aios_memory") != "hello":
            await _reply(conn, {"ok": False, "error": "expected a hello line first"})
            return
        try:
            scope = self.scope_for(hello.get("token"))
        except PermissionError as exc:
            await _reply(conn, {"ok": False, "error": str(exc)})
            return
        from aios_memory import __version__

        await _reply(
            conn,
            {
                "ok": True,
                "pid": os.getpid(),
                "version": __version__,
                "scope": scope.describe(),
                "options": self.options(),
            },
        )
        server = self.server_for(scope)
        low = server._lowlevel_server
        lines = _Lines(buffered, self, hello.get("token"))
        async with stdio_server(stdin=lines, stdout=_Writer(conn)) as (read, write):  # type: ignore[arg-type]
            await low.run(read, write, low.create_initialization_options())


async def _reply(conn: Any, obj: dict[str, Any]) -> None:
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
        await conn.send((json.dumps(obj) + "\n").encode())


def _same_user(conn: Any) -> bool:
    """The peer runs as this user (the socket's 0600 mode already says so; this checks again)."""
    raw = conn.extra(anyio.abc.SocketAttribute.raw_socket, None)
    if raw is None or not hasattr(socket, "SO_PEERCRED"):
        return True
    import struct

    creds = raw.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid == os.getuid()
