"""The object-storage backend (S3 and S3-compatible servers): the store at ``s3://bucket/prefix``.

Object stores have no rename, no file lock and no ``O_EXCL``; what they have is a create-only put
(``If-None-Match: *``), and that is the commit point here exactly as the hard link is locally. Writes,
listings, heads and conditional puts go through ``obstore``; Parquet reads (single files with range
requests, and the Arrow datasets DuckDB scans) through ``pyarrow.fs.S3FileSystem``: both well-kept,
both configured from the one ``storage_options`` mapping.

``storage_options`` (each falls back to the usual ``AWS_*`` environment variable):
``endpoint`` (``AWS_ENDPOINT_URL``), ``access_key_id``, ``secret_access_key``, ``session_token``,
``region`` (``AWS_REGION``/``AWS_DEFAULT_REGION``, default ``us-east-1``), ``allow_http`` (default: true
when the endpoint is ``http://``); and aios-memory's own: ``lock_dir`` (where this host's writers' lock
lives: an optimisation that keeps this host's writers from racing each other, never the guarantee) and
``single_writer`` (``True`` skips the open-time check that the server honours create-only puts: for a
server that ignores them, when exactly one process ever writes).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aios_memory.errors import InvalidInputError, ObjectStoreError, StoreError
from aios_memory.storage.local import parquet_options
from aios_memory.storage.s3config import SCHEMES, io_errors, os_error, parse_options

_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_CHECKED: dict[tuple[str, str], bool] = {}  # (endpoint, bucket) -> honours create-only puts (per process)
_CHECK_LOCK = threading.Lock()


class S3Backend:
    """Every file operation of a store whose root is ``s3://bucket/prefix``."""

    is_local = False

    def __init__(self, uri: str, options: Mapping[str, Any] | None = None) -> None:
        try:
            from obstore.store import S3Store
        except ImportError:
            raise StoreError(
                f"{uri} is on object storage, which needs obstore: pip install 'aios-memory[s3]'"
            ) from None

        parts = urlsplit(uri.strip())
        if parts.scheme.lower() not in SCHEMES or not parts.netloc or parts.query or parts.fragment:
            raise InvalidInputError(f"{uri!r} is not an s3://bucket/prefix location")
        if not _BUCKET_RE.fullmatch(parts.netloc):
            raise InvalidInputError(f"{parts.netloc!r} is not an S3 bucket name (3-63 of a-z 0-9 . -)")
        prefix = parts.path.strip("/")
        if any(p in (".", "..") for p in prefix.split("/")):
            raise InvalidInputError(f"{uri!r}: a prefix may not hold '.' or '..' segments")
        self.bucket, self.prefix = parts.netloc, prefix
        self.root = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.options = parse_options(options)
        o = self.options
        config = {
            k: v
            for k, v in {
                "endpoint": o["endpoint"],
                "access_key_id": o["access_key_id"],
                "secret_access_key": o["secret_access_key"],
                "session_token": o["session_token"],
                "region": o["region"],
            }.items()
            if v
        }
        try:
            self._store = S3Store(
                self.bucket,
                prefix=self.prefix or None,
                config=config,  # type: ignore[arg-type]
                client_options={"allow_http": bool(o["allow_http"])},
            )
        except Exception as exc:  # obstore's configuration errors
            raise InvalidInputError(f"storage_options for {uri} are not usable: {exc}") from exc
        self._fs: Any = None
        self.read_only = False  # the open-time probe was denied: these credentials only read
        self._lock = threading.Lock()
        self._datasets: dict[tuple[Any, ...], Any] = {}  # the last few datasets queried, footers read
        self._mtimes: dict[str, float] = {}  # last_modified of keys seen in the latest listing

    # --- identity -----------------------------------------------------------------------------------
    def uri(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def lock_path(self) -> str:
        base = self.options.get("lock_dir") or os.path.join(
            tempfile.gettempdir(), f"aios-memory-locks-{os.getuid()}"
        )
        try:
            os.makedirs(base, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise InvalidInputError(f"lock_dir {base!r} is not a usable directory ({exc})") from exc
        key = hashlib.sha256(f"{self.options.get('endpoint')}|{self.root}".encode()).hexdigest()[:24]
        return os.path.join(base, f"{key}.lock")

    @property
    def fs(self) -> Any:
        """The pyarrow filesystem that reads this bucket (range requests for Parquet)."""
        if self._fs is None:
            import pyarrow.fs as pafs

            o, kw = self.options, {}
            if o["endpoint"]:
                ep = urlsplit(o["endpoint"])
                kw["endpoint_override"] = ep.netloc or ep.path
                kw["scheme"] = ep.scheme or "https"
            self._fs = pafs.S3FileSystem(
                access_key=o["access_key_id"],
                secret_key=o["secret_access_key"],
                session_token=o["session_token"],
                region=o["region"],
                **kw,
            )
        return self._fs

    def fs_path(self, rel: str) -> str:
        return f"{self.bucket}/{self.prefix}/{rel}" if self.prefix else f"{self.bucket}/{rel}"

    # --- the conditional-put self-test ----------------------------------------------------------------
    def check_conditional_put(self) -> None:
        """Refuse a server that ignores ``If-None-Match: *`` (two writers could both "create" one
        version): a probe object is created twice; the second must be refused. Once per process."""
        if self.options.get("single_writer"):
            return
        key = (str(self.options.get("endpoint")), self.bucket)
        with _CHECK_LOCK:
            if key not in _CHECKED:
                import obstore
                from obstore.exceptions import (
                    AlreadyExistsError,
                    BaseError,
                    PermissionDeniedError,
                    PreconditionError,
                )

                probe = f"_versions/.probe-{uuid.uuid4().hex}"
                try:
                    obstore.put(self._store, probe, b"1", mode="create")
                except PermissionDeniedError:
                    self.read_only = True  # credentials that may only read: nothing to check
                    return
                except FileNotFoundError as exc:  # obstore raises the built-in for a 404
                    raise ObjectStoreError(f"{self.root}: the bucket {self.bucket!r} does not exist") from exc
                except BaseError as exc:
                    raise os_error(exc) from exc
                with io_errors():
                    try:
                        obstore.put(self._store, probe, b"2", mode="create")
                        honoured = False
                    except (AlreadyExistsError, PreconditionError):
                        honoured = True
                    finally:
                        obstore.delete(self._store, probe)
                _CHECKED[key] = honoured
        if not _CHECKED[key]:
            raise StoreError(
                f"the object store at {self.options.get('endpoint') or 'AWS'} ignores create-only puts "
                "(If-None-Match: *): two writers could both commit the same version, so multi-writer "
                f"mode is refused for {self.root}. If exactly one process ever writes this store, open it "
                "with storage_options={'single_writer': True}"
            )

    # --- reading ----------------------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        import obstore

        try:
            with io_errors():
                obstore.head(self._store, rel)
        except FileNotFoundError:
            return False
        return True

    is_file = exists

    def _head(self, rel: str) -> dict[str, Any]:
        import obstore

        with io_errors():
            return dict(obstore.head(self._store, rel))

    def list(self, rel: str, nonempty: bool = False) -> list[str]:
        """Names directly under ``rel`` (one level, like ``os.listdir``); ``nonempty``: no tombstones."""
        import obstore

        with io_errors():
            got = obstore.list_with_delimiter(self._store, rel.rstrip("/") + "/")
        names = [o["path"].rsplit("/", 1)[-1] for o in got["objects"] if not nonempty or o["size"]]
        names += [p.rstrip("/").rsplit("/", 1)[-1] for p in got["common_prefixes"]]
        return sorted(names)

    def walk_files(self, rel: str) -> Iterator[str]:
        import obstore

        with io_errors():
            for batch in obstore.list(self._store, rel.rstrip("/") + "/"):
                for o in batch:
                    self._mtimes[o["path"]] = o["last_modified"].timestamp()
                    yield o["path"]

    def retained(self, rel: str) -> bool:
        """Whether ``rel`` exists and is not a tombstone (an emptied manifest cleanup retired)."""
        try:
            return self.size(rel) > 0
        except FileNotFoundError:
            return False

    def retire(self, rel: str) -> None:
        """Empty ``rel`` instead of deleting it: a writer that stalled on an old version can then never
        create that name again (its create-only put fails), so the version chain cannot fork."""
        self.replace(rel, b"")

    def tombstones(self, rel: str) -> list[tuple[str, float]]:
        """``(key, last modified)`` of the retired (empty) objects under ``rel``."""
        import obstore

        with io_errors():
            return [
                (o["path"], o["last_modified"].timestamp())
                for batch in obstore.list(self._store, rel.rstrip("/") + "/")
                for o in batch
                if not o["size"]
            ]

    def read_bytes(self, rel: str) -> bytes:
        import obstore

        with io_errors():
            return bytes(obstore.get(self._store, rel).bytes())

    def size(self, rel: str) -> int:
        return int(self._head(rel)["size"])

    def mtime(self, rel: str) -> float:
        if rel in self._mtimes:
            return self._mtimes.pop(rel)
        return float(self._head(rel)["last_modified"].timestamp())

    def sha256(self, rel: str) -> str:
        return hashlib.sha256(self.read_bytes(rel)).hexdigest()

    def open_input(self, rel: str) -> Any:
        """A random-access file pyarrow reads (Parquet footers, row groups: range requests)."""
        try:
            return self.fs.open_input_file(self.fs_path(rel))
        except FileNotFoundError:
            raise
        except OSError as exc:
            if "NoSuchKey" in str(exc) or "does not exist" in str(exc):
                raise FileNotFoundError(f"{self.uri(rel)} does not exist") from exc
            raise

    def dataset(self, rels: list[str], schema: pa.Schema | None = None) -> Any:
        """An Arrow dataset over these fragments, kept with their footers read (the files never change),
        so a second query over the same version fetches no footer again."""
        import pyarrow.dataset as ds

        key = (tuple(rels), None if schema is None else schema.to_string())
        with self._lock:
            got = self._datasets.get(key)
        if got is None:
            got = ds.dataset(
                [self.fs_path(r) for r in rels], format="parquet", filesystem=self.fs, schema=schema
            )
            for fragment in got.get_fragments():
                fragment.ensure_complete_metadata()
            with self._lock:
                self._datasets[key] = got
                while len(self._datasets) > 16:
                    self._datasets.pop(next(iter(self._datasets)))
        return got

    def map(self, rel: str) -> np.ndarray:
        """The whole object in memory (an object store has nothing to map); immutable, so cached."""
        import obstore

        with io_errors():
            data = obstore.get(self._store, rel).bytes()
        return np.frombuffer(memoryview(data), dtype=np.uint8)

    @contextlib.contextmanager
    def local_copy(self, rel: str) -> Iterator[str]:
        """A temporary local copy of ``rel`` (for libraries that open files by path)."""
        fd, tmp = tempfile.mkstemp(prefix="aios-memory-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self.read_bytes(rel))
            yield tmp
        finally:
            os.unlink(tmp)

    # --- writing ----------------------------------------------------------------------------------------
    def _writable(self) -> None:
        if self.read_only:
            raise PermissionError(
                f"the credentials for {self.root} may read but not write (the store is read-only to them)"
            )

    def _put_new(self, rel: str, data: Any) -> tuple[int, str]:
        import obstore

        self._writable()
        view = memoryview(data).cast("B")
        with io_errors():
            obstore.put(self._store, rel, view, mode="create", use_multipart=False)
        return view.nbytes, hashlib.sha256(view).hexdigest()

    def write_new(self, rel: str, chunks: Iterable[Any]) -> tuple[int, str]:
        return self._put_new(rel, b"".join(memoryview(c).cast("B") for c in chunks))

    def write_parquet(self, rel: str, table: pa.Table, row_group_size: int) -> tuple[int, str]:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, row_group_size=row_group_size, **parquet_options(table))
        return self._put_new(rel, sink.getvalue())

    def write_file(self, rel: str, save: Callable[[str], None]) -> tuple[int, str]:
        """Let ``save(path)`` write a local temp file, then put it as ``rel``."""
        fd, tmp = tempfile.mkstemp(prefix="aios-memory-", suffix=".tmp")
        os.close(fd)
        try:
            save(tmp)
            with open(tmp, "rb") as f:
                return self._put_new(rel, f.read())
        finally:
            os.unlink(tmp)

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Put ``rel`` only if no object has that key (``If-None-Match: *``); False if one does.

        A put whose answer was lost and that the client retried finds its own object there: the bytes
        are compared, so a commit that landed is never taken for a lost race (and committed twice)."""
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        self._writable()
        with io_errors():
            try:
                obstore.put(self._store, rel, data, mode="create", use_multipart=False)
            except (AlreadyExistsError, PreconditionError):
                try:
                    return self.read_bytes(rel) == data
                except FileNotFoundError:
                    return False  # taken, then removed: a lost race all the same
        return True

    def replace(self, rel: str, data: bytes) -> None:
        import obstore

        with io_errors():
            obstore.put(self._store, rel, data, use_multipart=False)

    def delete(self, rel: str) -> None:
        import obstore

        try:
            with io_errors():
                obstore.delete(self._store, rel)
        except FileNotFoundError:
            pass

    def fsync_dir(self, rel: str) -> None:
        """Nothing to do: a completed put is durable."""

    # --- containment: keys are checked by the manifest's path rules; an object store has no links ----
    def contained(self, rel: str) -> bool:
        return True

    def containment_problems(self, rels: list[str]) -> list[str]:
        return []
