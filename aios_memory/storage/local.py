"""The local filesystem backend: every OS call the store makes goes through :class:`LocalBackend`.

Files are written once (``open(..., "xb")``), fsynced, hashed as they are written, and never changed; a
manifest is created exclusively (written to a temp file, then hard-linked to its name, which fails if the
name exists: the local form of an object store's create-only put). Nothing here follows a symlink out of
the store: :meth:`LocalBackend.contained` is checked before anything is deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aios_memory.storage.cache import map_file

ROW_GROUP_ROWS = 1024


def parquet_options(table: pa.Table) -> dict[str, Any]:
    """How a memory table's columns are encoded: float vectors plain (random floats neither compress nor
    repeat: zstd and a dictionary attempt cost ~5x the write of 100,000 vectors and save nothing), every
    other column zstd with dictionaries (namespaces, providers and metadata repeat)."""
    vectors = {
        f.name
        for f in table.schema
        if pa.types.is_fixed_size_list(f.type) and pa.types.is_floating(f.type.value_type)
    }
    others = [n for n in table.column_names if n not in vectors]
    if not vectors:
        return {"compression": "zstd"}
    return {
        "compression": {n: ("none" if n in vectors else "zstd") for n in table.column_names},
        "use_dictionary": others,
    }


class _HashingFile:
    """A write-only binary file that hashes what passes through it (pyarrow writes to it)."""

    def __init__(self, f: Any) -> None:
        self._f, self.sha = f, hashlib.sha256()
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.sha.update(view)
        return self._f.write(view)

    def flush(self) -> None:
        self._f.flush()

    def tell(self) -> int:
        return self._f.tell()

    def writable(self) -> bool:
        return True


class LocalBackend:
    """The storage seam: every file operation the store makes, on a local filesystem."""

    is_local = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self._fs: Any = None
        self._prefix = str(root).rstrip("/") + "/"

    def _abs(self, rel: str) -> str:
        """``str(self.root / rel)`` without pathlib's parsing (called for every file of every read) for the
        names the store makes (no empty or ``.`` segments); anything else goes through pathlib."""
        if (
            rel
            and "//" not in rel
            and "/./" not in rel
            and not rel.startswith(("/", "./"))
            and not rel.endswith(("/", "/."))
        ):
            return self._prefix + rel
        return str(self.root / rel)

    def lock_path(self) -> str:
        return str(self.root / ".lock")

    @property
    def fs(self) -> Any:
        if self._fs is None:
            import pyarrow.fs as pafs

            self._fs = pafs.LocalFileSystem()
        return self._fs

    def fs_path(self, rel: str) -> str:
        return self._abs(rel)

    def open_input(self, rel: str) -> Any:
        """The file for pyarrow to read with ``pread`` (no map: a file truncated under us is an error)."""
        return pa.OSFile(self._abs(rel))

    def dataset(self, rels: list[str], schema: pa.Schema | None = None) -> Any:
        import pyarrow.dataset as ds

        return ds.dataset([str(self.root / r) for r in rels], format="parquet", schema=schema)

    def map(self, rel: str) -> np.ndarray:
        return map_file(str(self.root / rel))

    @contextlib.contextmanager
    def local_copy(self, rel: str) -> Iterator[str]:
        yield str(self.root / rel)

    def is_file(self, rel: str) -> bool:
        return (self.root / rel).is_file()

    def path(self, rel: str) -> Path:
        return self.root / rel

    def uri(self, rel: str) -> str:
        """The location other engines open ``rel`` by (an absolute path here; ``s3://...`` remotely)."""
        return self._abs(rel)

    def exists(self, rel: str) -> bool:
        return self.path(rel).exists()

    def retained(self, rel: str) -> bool:
        return self.path(rel).exists()

    def retire(self, rel: str) -> None:
        """Delete: local writers share a lock, so no stalled writer can recreate the name."""
        self.delete(rel)

    def tombstones(self, rel: str) -> list[tuple[str, float]]:
        return []

    def list(self, rel: str, nonempty: bool = False) -> list[str]:
        try:
            return sorted(os.listdir(self.path(rel)))
        except FileNotFoundError:
            return []

    def read_bytes(self, rel: str) -> bytes:
        return self.path(rel).read_bytes()

    def fsync_dir(self, rel: str) -> None:
        fd = os.open(self.path(rel), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write(self, rel: str, write: Any) -> tuple[int, str]:
        """Create ``rel`` (never an existing file), let ``write(file)`` fill it, fsync; a failure (a full
        disk) removes the partial file. Returns (size, sha256)."""
        p = self.path(rel)
        if not p.parent.is_dir():  # a table's first fragment: make its directory entry durable too
            p.parent.mkdir(parents=True, exist_ok=True)
            self.fsync_dir(str(Path(rel).parent.parent))
        try:
            with open(p, "xb") as raw:
                f = _HashingFile(raw)
                write(f)
                raw.flush()
                os.fsync(raw.fileno())
                size = raw.tell()
        except BaseException:
            p.unlink(missing_ok=True)
            raise
        return size, f.sha.hexdigest()

    def write_new(self, rel: str, chunks: Iterable[Any]) -> tuple[int, str]:
        """Write a new immutable file from buffers (anything with the buffer protocol) and fsync it."""

        def write(f: _HashingFile) -> None:
            for chunk in chunks:
                f.write(chunk)

        return self._write(rel, write)

    def write_parquet(
        self, rel: str, table: pa.Table, row_group_size: int = ROW_GROUP_ROWS
    ) -> tuple[int, str]:
        """Write a new immutable Parquet file and fsync it; returns (size, sha256)."""
        # small row groups: a search reads back its k result rows without decoding whole fragments
        return self._write(
            rel, lambda f: pq.write_table(table, f, row_group_size=row_group_size, **parquet_options(table))
        )

    def write_file(self, rel: str, save: Callable[[str], None]) -> tuple[int, str]:
        """Let ``save(path)`` write ``rel`` (a library that writes by path), then fsync and hash it."""
        p = self.path(rel)
        try:
            save(str(p))
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
                size = os.fstat(fh.fileno()).st_size
            return size, self.sha256(rel)
        except BaseException:
            p.unlink(missing_ok=True)
            raise

    def size(self, rel: str) -> int:
        return self.path(rel).stat().st_size

    def sha256(self, rel: str, chunk: int = 8 << 20) -> str:
        h = hashlib.sha256()
        with open(self.path(rel), "rb") as f:
            while block := f.read(chunk):
                h.update(block)
        return h.hexdigest()

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Create ``rel`` with ``data`` atomically, only if it does not exist. False if it already does.

        Once the link exists the version is committed: nothing after it may raise (a failed directory
        fsync is left to the next commit's, which syncs the same directory)."""
        final = self.path(rel)
        tmp = final.with_name(f".tmp-{uuid.uuid4().hex}")
        try:
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, final)  # atomic, and fails when the name exists: no reader sees a partial file
        except BaseException as exc:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            if isinstance(exc, FileExistsError):
                return False
            raise
        for tidy in (lambda: tmp.unlink(missing_ok=True), lambda: self.fsync_dir(str(Path(rel).parent))):
            try:
                tidy()
            except OSError:
                pass  # committed already: a leftover temp file is cleanup's, the directory sync the next commit's
        return True

    def replace(self, rel: str, data: bytes) -> None:
        """Write ``rel`` by rename (atomic, not fsynced): for advisory files such as the version hint."""
        final = self.path(rel)
        tmp = final.with_name(f".tmp-{uuid.uuid4().hex}")
        try:
            with open(tmp, "xb") as f:
                f.write(data)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    def delete(self, rel: str) -> None:
        self.path(rel).unlink(missing_ok=True)

    def mtime(self, rel: str) -> float:
        return self.path(rel).stat().st_mtime

    def contained(self, rel: str) -> bool:
        """Whether ``rel`` is inside the store with no symlink on the way (the file itself may be one)."""
        real_root = os.path.realpath(self.root)
        parent = os.path.realpath(self.path(rel).parent)
        if parent != os.path.join(real_root, str(Path(rel).parent)):
            return False
        try:
            return not stat.S_ISDIR(os.lstat(self.path(rel)).st_mode)
        except FileNotFoundError:
            return True

    def containment_problems(self, rels: list[str]) -> list[str]:
        """Symlinked directories at or under ``rels``: a store makes none, and cleanup will not work through one."""
        return [
            f"{d} is a symlink (to {os.path.realpath(self.path(d))}); the store's own files never are"
            for rel in rels
            for d in self.symlinked_dirs(rel)
        ]

    def symlinked_dirs(self, rel: str) -> list[str]:
        """Directories at or under ``rel`` that are symlinks (a store never makes any)."""
        out = []
        if self.path(rel).is_symlink():
            return [rel]
        for dirpath, dirs, _files in os.walk(self.path(rel)):
            for d in dirs:
                if os.path.islink(os.path.join(dirpath, d)):
                    out.append(str(Path(dirpath, d).relative_to(self.root).as_posix()))
        return out

    def walk_files(self, rel: str) -> Iterator[str]:
        """Regular files under ``rel``, never through a symlinked directory."""
        if self.path(rel).is_symlink():
            return
        for dirpath, _dirs, files in os.walk(self.path(rel)):  # followlinks=False
            for name in files:
                yield str(Path(dirpath, name).relative_to(self.root).as_posix())
