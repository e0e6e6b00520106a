"""``aios-memory serve``: relay an MCP host's stdio to the store's daemon, starting it when none runs.

Standard library only (no torch, no MCP SDK): the proxy starts in a fraction of a second and holds no
model. It connects to the daemon's Unix socket, sends the hello line (with the client's token, if any),
then copies MCP messages both ways, one JSON-RPC message per line.

When the daemon goes away (``kill -9``, a crash, ``daemon --stop``) the proxy answers the requests it
had in flight with a JSON-RPC error (whether their writes committed is for the client to check: a commit
is atomic, so each one either is in the store or is not), and the next message from the host starts a
daemon again, replays the session's ``initialize`` handshake (its answer is dropped: the host has had
one) and carries on.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

from aios_memory.service import runtime

START_TIMEOUT = 60.0  # seconds to wait for a daemon this proxy started to listen
HELLO_TIMEOUT = 30.0  # seconds a daemon has to answer the hello (a stuck one must not hang the host)
MAX_MESSAGE = 96 * 1024 * 1024  # the daemon's limit on one message: larger ones are refused here
GONE = -32001  # JSON-RPC error code of a request the daemon dropped by going away


class ProxyError(RuntimeError):
    pass


def _ids(message: Any) -> tuple[str | None, Any]:
    """(method or None, id or None) of a JSON-RPC message."""
    if not isinstance(message, dict):
        return None, None
    return message.get("method"), message.get("id")


class Link:
    """The connection to the daemon, opened (and the daemon started) on demand."""

    def __init__(self, store: Path, token: str | None, daemon_options: list[str]) -> None:
        self.store, self.token, self.options = store, token, daemon_options
        self.sock: socket.socket | None = None
        self.rfile: BinaryIO | None = None
        self.closed = False
        self.cond = threading.Condition()
        self.started: subprocess.Popen[bytes] | None = None
        self.hello: dict[str, Any] = {}

    def _try_connect(self) -> socket.socket | None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(runtime.socket_path(self.store)))
            return s
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            return None

    def _start_daemon(self) -> None:
        if self.started is not None and self.started.poll() is None:
            return  # ours is still starting
        log = open(runtime.log_path(self.store), "ab")  # noqa: SIM115 - handed to the child
        try:
            self.started = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                runtime.daemon_command(self.store, *self.options),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # not killed with the host's process group
                close_fds=True,
                cwd=runtime.runtime_dir(),  # not the host's directory: a daemon outlives it, paths are absolute
            )
        finally:
            log.close()

    def connect(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            s = self._try_connect()
            if s is not None:
                try:
                    reply, rfile = self._hello(s)
                    break
                except OSError:  # a daemon that died as we connected: start another
                    s.close()
            self._start_daemon()  # one that lost a start race to another proxy's exits at once
            if time.monotonic() > deadline:
                raise ProxyError(
                    f"the memory daemon did not start within {START_TIMEOUT:g} s; see {runtime.log_path(self.store)}"
                )
            time.sleep(0.02)
        if not reply.get("ok"):
            rfile.close()
            s.close()
            raise ProxyError(f"the memory daemon refused this client: {reply.get('error')}")
        self.hello = reply
        with self.cond:
            self.sock, self.rfile = s, rfile
            self.cond.notify_all()

    def _hello(self, s: socket.socket) -> tuple[dict[str, Any], BinaryIO]:
        hello = {"aios_memory": "hello", "client": "serve-proxy", "pid": os.getpid()}
        if self.token:
            hello["token"] = self.token
        s.settimeout(HELLO_TIMEOUT)
        s.sendall((json.dumps(hello) + "\n").encode())
        rfile = s.makefile("rb")
        try:
            line = rfile.readline()
        except TimeoutError:
            rfile.close()
            raise ProxyError(f"the memory daemon did not answer within {HELLO_TIMEOUT:g} s") from None
        s.settimeout(None)
        if not line:
            rfile.close()
            raise ConnectionResetError("the daemon closed the connection")
        try:
            return json.loads(line), rfile
        except ValueError:
            return {"ok": False, "error": "the daemon answered something that is not JSON"}, rfile

    def wait(self) -> tuple[socket.socket, BinaryIO] | None:
        """The live connection, waiting for one; ``None`` once the proxy is closing."""
        with self.cond:
            while self.sock is None and not self.closed:
                self.cond.wait()
            return None if self.sock is None else (self.sock, self.rfile)  # type: ignore[return-value]

    def lost(self, sock: socket.socket) -> None:
        with self.cond:
            if self.sock is sock:
                with contextlib.suppress(OSError):
                    sock.close()
                self.sock = self.rfile = None

    def close(self) -> None:
        with self.cond:
            self.closed = True
            if self.sock is not None:
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_WR)
            self.cond.notify_all()


class Proxy:
    def __init__(self, link: Link, stdin: BinaryIO, stdout: BinaryIO) -> None:
        self.link, self.stdin, self.stdout = link, stdin, stdout
        self.out_lock = threading.Lock()
        self.pending: dict[Any, socket.socket] = {}  # the host's unanswered requests: id -> connection
        self.swallow: set[Any] = set()  # ids of replayed requests whose answers the host must not see
        self.init: list[bytes] = []  # the session's initialize request and initialized notification
        self.state = threading.Lock()

    def write(self, line: bytes) -> None:
        with self.out_lock:
            self.stdout.write(line if line.endswith(b"\n") else line + b"\n")
            self.stdout.flush()

    def fail(self, id_: Any, message: str) -> None:
        self.write(
            json.dumps({"jsonrpc": "2.0", "id": id_, "error": {"code": GONE, "message": message}}).encode()
        )

    def from_daemon(self) -> None:
        """Reader thread: the daemon's messages to the host, connection after connection."""
        while (got := self.link.wait()) is not None:
            sock, rfile = got
            with contextlib.suppress(OSError):
                for line in iter(rfile.readline, b""):
                    _method, id_ = _ids(_parse(line))
                    with self.state:
                        self.pending.pop(id_, None)
                        if id_ is not None and id_ in self.swallow:
                            self.swallow.discard(id_)
                            if self.init and _ids(_parse(self.init[0]))[1] == id_:
                                remember_init(self.link.store, self.init[0], line)  # kept up to date
                            continue
                    if self.init and id_ is not None and _ids(_parse(self.init[0]))[1] == id_:
                        remember_init(self.link.store, self.init[0], line)
                    self.write(line)
            self.link.lost(sock)
            with self.state:  # requests sent on this connection will never be answered
                dropped = [i for i, conn in self.pending.items() if conn is sock]
                for i in dropped:
                    del self.pending[i]
            for id_ in dropped:
                self.fail(
                    id_,
                    "the memory daemon stopped while handling this request (it restarts on the next call); "
                    "a write either committed whole or not at all: check before repeating it",
                )

    def to_daemon(self) -> None:
        """Main thread: the host's messages to the daemon (reconnecting when it went away)."""
        for line in iter(self.stdin.readline, b""):
            self.relay(line)
        self.link.close()

    def relay(self, line: bytes) -> None:
        if not line.strip():
            return
        method, id_ = _ids(_parse(line))
        if len(line) > MAX_MESSAGE:  # the daemon would drop the connection: say why instead
            if method is not None and id_ is not None:
                self.fail(
                    id_,
                    f"the message is {len(line)} bytes; the most the memory daemon takes is {MAX_MESSAGE}",
                )
            return
        if method == "initialize":
            self.init = [line]
        elif method == "notifications/initialized" and len(self.init) == 1:
            self.init.append(line)
        try:
            self._send(line, method, id_)
        except (OSError, ProxyError) as exc:
            if method is not None and id_ is not None:
                self.fail(id_, f"the memory daemon is not reachable: {exc}")

    def _send(self, line: bytes, method: str | None, id_: Any) -> None:
        for attempt in (1, 2):  # a daemon that died since the last message: start one, send again
            sock = self.link.sock
            if sock is None:
                self.link.connect()
                sock = self.link.sock
                assert sock is not None
                if self.init and method != "initialize":
                    _m, init_id = _ids(_parse(self.init[0]))
                    with self.state:
                        self.swallow.add(init_id)
                    for m in self.init:
                        sock.sendall(m)
            if method is not None and id_ is not None:
                with self.state:
                    self.pending[id_] = sock
            try:
                sock.sendall(line)
                return
            except OSError:
                with self.state:
                    self.pending.pop(id_, None)
                self.link.lost(sock)
                if attempt == 2:
                    raise


def _parse(line: bytes) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None


def run_proxy(
    store: str | Path,
    *,
    token: str | None = None,
    daemon_options: list[str] | None = None,
    wanted: dict[str, Any] | None = None,
    stdin: BinaryIO | None = None,
    stdout: BinaryIO | None = None,
) -> int:
    """Relay until the host closes stdin; returns the exit status. ``wanted``: the options this host
    asked for (``allow_read``, ``allow_media_sql``); a running daemon started with others is used as it
    is, and the proxy says so on stderr."""
    link = Link(Path(store), token, list(daemon_options or []))
    proxy = Proxy(link, stdin or sys.stdin.buffer, stdout or sys.stdout.buffer)
    first = None
    cold = link._try_connect()
    if cold is None:  # no daemon yet: start one, and answer `initialize` while it starts (if known)
        link._start_daemon()
        first = proxy.stdin.readline()
        answer = known_init(link.store, first)
        if answer is not None:
            proxy.write(answer)
            proxy.swallow.add(_ids(_parse(first))[1])  # the daemon's own answer: the host has one
    else:
        cold.close()
    try:
        link.connect()  # now, so that a refused token or a daemon that cannot start is said at once
    except ProxyError as exc:
        print(f"aios-memory serve: {exc}", file=sys.stderr)
        return 1
    _warn_options(link.hello.get("options") or {}, wanted or {})
    reader = threading.Thread(target=proxy.from_daemon, name="aios-memory-proxy-reader", daemon=True)
    reader.start()
    if first:
        proxy.relay(first)
    proxy.to_daemon()
    reader.join(timeout=30)
    return 0


def _warn_options(running: dict[str, Any], wanted: dict[str, Any]) -> None:
    missing = sorted(set(wanted.get("allow_read") or []) - set(running.get("allow_read") or []))
    notes = [f"--allow-read {d}" for d in missing]
    if bool(wanted.get("allow_media_sql")) != bool(running.get("allow_media_sql")):
        notes.append(f"--allow-media-sql is {'on' if running.get('allow_media_sql') else 'off'} there")
    if notes:
        print(
            "aios-memory serve: the store's daemon was started with other options, and they hold for every "
            f"client ({'; '.join(notes)}); stop it (aios-memory daemon --stop) to start it with these",
            file=sys.stderr,
        )


def _init_cache(store: Path) -> Path:
    return runtime.runtime_dir() / f"{runtime.store_key(store)}.init.json"


def _cache_key(protocol: str) -> str:
    """An answer holds for one protocol version of one installation (an upgrade asks the daemon again)."""
    from importlib.metadata import PackageNotFoundError, version

    from aios_memory import __version__

    try:
        sdk = version("mcp")
    except PackageNotFoundError:
        sdk = "?"
    return f"{protocol} aios-memory {__version__} mcp {sdk}"


def remember_init(store: Path, request: bytes, response: bytes) -> None:
    """Keep the daemon's answer to an ``initialize`` (per protocol version), for a cold start's host."""
    req, resp = _parse(request), _parse(response)
    try:
        version = _cache_key(req["params"]["protocolVersion"])
        result = resp["result"]
    except (KeyError, TypeError):
        return
    path = _init_cache(store)
    with contextlib.suppress(OSError, ValueError):
        known = json.loads(path.read_text()) if path.exists() else {}
        if known.get(version) != result:
            known[version] = result
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(known))
            os.replace(tmp, path)


def known_init(store: Path, request: bytes) -> bytes | None:
    """The answer the daemon gave to the same ``initialize`` before (the server's name, version,
    capabilities and instructions do not change between runs of one installation), or ``None``."""
    req = _parse(request)
    method, id_ = _ids(req)
    if method != "initialize" or id_ is None:
        return None
    try:
        result = json.loads(_init_cache(store).read_text())[_cache_key(req["params"]["protocolVersion"])]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return json.dumps({"jsonrpc": "2.0", "id": id_, "result": result}).encode() + b"\n"


def stop_daemon(store: str | Path, timeout: float = 30.0) -> dict[str, Any]:
    """SIGTERM the store's daemon and wait until it has let go of its lock."""
    path = runtime.lock_path(store)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return {"running": False}
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return {"running": False}  # nobody holds it
        except BlockingIOError:
            pass
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        pid = int(info["pid"])
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return {"running": False, "stopped": pid}
            except BlockingIOError:
                time.sleep(0.05)
        return {"running": True, "pid": pid, "error": f"still running after {timeout:g} s"}
    finally:
        os.close(fd)
