"""Opening a store on object storage: locations, ``storage_options``, credentials, typed failures.

Everything a user can get wrong is refused before a request is made, with ``InvalidInputError``; what
the server refuses (a missing bucket, a wrong secret, a server gone) is ``ObjectStoreError``/``StoreError``;
credentials that may only read open a read-only handle. Real SeaweedFS and moto servers on loopback.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from s3_servers import SeaweedS3
from test_objectstore import _store, _versions

from aios_memory import MemoryStore
from aios_memory.errors import InvalidInputError, StoreError
from aios_memory.storage.objectstore import _CHECKED


@pytest.fixture(autouse=True)
def _trigram():
    import trigram_provider

    trigram_provider.register()


def test_bad_locations_and_options_are_refused(tmp_path, s3_store_uri):
    uri, opts = s3_store_uri
    with pytest.raises(InvalidInputError, match="unknown storage_options"):
        MemoryStore(uri, storage_options={**opts, "endpiont": "x"})
    with pytest.raises(InvalidInputError, match="object storage"):
        MemoryStore(tmp_path / "local", storage_options=opts)
    with pytest.raises(StoreError, match="no store at"):
        MemoryStore(uri + "-absent", storage_options=opts, create=False)


class _SeaweedWithReader(SeaweedS3):
    """SeaweedFS with two identities: the usual keys (may write) and a reader (Read and List only)."""

    reader = ("reader-key", "reader-secret-0123")

    def _command(self) -> list[str]:
        cmd = super()._command()
        ids = [
            ((self.access_key, self.secret_key), ["Admin", "Read", "List", "Write"]),
            (self.reader, ["Read", "List"]),
        ]
        conf = [{"name": f"u{i}", "credentials": [{"accessKey": k, "secretKey": s}], "actions": a}
                for i, ((k, s), a) in enumerate(ids)]  # fmt: skip
        path = Path(str(self.dir)) / "s3.json"
        path.write_text(json.dumps({"identities": conf}))
        return [*cmd, f"-s3.config={path}"]


def test_credentials_that_may_only_read_open_the_store_and_are_refused_writes(tmp_path):
    """The open-time probe is a write: credentials without write permission still open the store
    (reads work) and a write is a StoreError with nothing committed."""
    with _SeaweedWithReader() as server:
        bucket = server.make_bucket()
        opts = server.storage_options()
        _store(f"s3://{bucket}/s", opts, tmp_path).add_many(["one", "two"])
        _CHECKED.clear()  # as in a fresh process: the reader's open probes again
        ro = {**opts, "access_key_id": server.reader[0], "secret_access_key": server.reader[1]}
        reader = _store(f"s3://{bucket}/s", ro, tmp_path, create=False)
        assert reader._storage.backend.read_only
        assert reader.sql("SELECT count(*) AS n FROM text_memories").to_pylist() == [{"n": 2}]
        assert [m.content for m in reader.search("one", k=1)] == ["one"]
        with pytest.raises(StoreError, match="may read but not write"):
            reader.add("three")
        assert reader.version == 1 and _versions(reader) == [1]


def test_storage_options_and_locations_are_checked_before_any_request(no_condition_s3, tmp_path):
    bucket = no_condition_s3.make_bucket()
    opts = {**no_condition_s3.storage_options(), "lock_dir": str(tmp_path / "l")}
    _CHECKED.clear()
    with pytest.raises(StoreError, match="ignores create-only puts"):  # "false" is false
        MemoryStore(f"s3://{bucket}/s", storage_options={**opts, "single_writer": "false"})
    assert MemoryStore(f"s3://{bucket}/s", storage_options={**opts, "single_writer": "true"}).version == 0
    bad = [
        {**opts, "single_writer": "maybe"},
        {**opts, "endpoint": no_condition_s3.endpoint.removeprefix("http://")},
        {**opts, "endpoint": ""},
        {**opts, "region": 5},
        {**opts, "lock_dir": str(Path(__file__))},
        ["endpoint"],
    ]
    for options in bad:
        with pytest.raises(InvalidInputError):
            MemoryStore(f"s3://{bucket}/s", storage_options=options)
    for location in ("gs://b/x", "s3://Upper/x", "s3://bucket/a/../b", "s3://b"):
        with pytest.raises(InvalidInputError):
            MemoryStore(location, storage_options=opts)


def test_object_store_failures_are_typed(seaweed_s3, moto_s3, tmp_path):
    from aios_memory.errors import ObjectStoreError

    with pytest.raises(ObjectStoreError, match="does not exist"):  # (SeaweedFS makes buckets on upload)
        MemoryStore("s3://no-such-bucket-here/s", storage_options=moto_s3.storage_options())
    opts = {**seaweed_s3.storage_options(), "lock_dir": str(tmp_path / "l")}
    _CHECKED.clear()
    with pytest.raises(ObjectStoreError):
        MemoryStore(
            f"s3://{seaweed_s3.make_bucket()}/s", storage_options={**opts, "secret_access_key": "wrong"}
        )
    gone = _SeaweedWithReader()
    with gone:
        bucket = gone.make_bucket()
        st = _store(f"s3://{bucket}/s", gone.storage_options(), tmp_path)
        st.add("kept")
    for call in (lambda: st.search("kept", k=1), lambda: st.sql("SELECT 1"), lambda: st.add("lost")):
        with pytest.raises(StoreError):  # ObjectStoreError, or StoreError("... nothing was committed")
            call()


def test_service_commands_refuse_an_object_store(tmp_path):
    from conftest import run_cli

    for args in (["token", "create", "--name", "x", "--all-namespaces"], ["daemon"], ["ui", "--port", "0"]):
        out = run_cli("--store", "s3://bucket/p", *args, check=False)
        assert out.returncode != 0 and "local store" in out.stderr, out.stderr
    assert not (Path.cwd() / "s3:").exists()
