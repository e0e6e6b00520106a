"""The inputs of a distributed job: files listed as ``aios-memory import`` lists them, or the objects under
``s3://bucket/prefix`` URIs, and each input's modality from its first bytes (the rest is read where it is
embedded: an actor reads an object's bytes itself, through :class:`Objects`). Imports no Ray."""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aios_memory.errors import AiosMemoryError, InputTooLargeError, InvalidInputError, ObjectStoreError
from aios_memory.memory import metadata_json
from aios_memory.modality import MAX_MEDIA_BYTES, MAX_TEXT_CHARS, sniff
from aios_memory.provider import MODALITIES
from aios_memory.storage.s3config import is_remote

HEAD_BYTES = 64  # what the modality is sniffed from
LISTING_THREADS = 16  # objects whose first bytes the driver reads at once


@dataclass(frozen=True)
class S3Object:
    """An input that is an object on S3 (``uri``: ``s3://bucket/key``), read by the actor that embeds it."""

    uri: str


class Objects:
    """Objects on S3 through pyarrow's ``S3FileSystem``, built from ``options`` (a store's
    ``storage_options``: endpoint, credentials, region; unset ones from the ``AWS_*`` environment) exactly
    as a store on S3 builds its own. Thread-safe; one filesystem for every bucket."""

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options = dict(options) if options else None
        self._fs: Any = None
        self._lock = threading.Lock()

    def fs(self, uri: str) -> tuple[Any, str]:
        """The filesystem and ``bucket/key`` path of ``uri`` (checked as a store location is)."""
        from aios_memory.storage.objectstore import S3Backend

        backend = S3Backend(uri, self.options)
        with self._lock:
            if self._fs is None:
                self._fs = backend.fs
        return self._fs, f"{backend.bucket}/{backend.prefix}".rstrip("/")

    def list(self, uri: str) -> list[str]:
        """The ``s3://`` URI of every object under ``uri`` (a prefix, recursively, sorted as folders are
        listed), or ``[uri]`` for one object. No object there: ``InvalidInputError``."""
        import pyarrow.fs as pafs

        fs, path = self.fs(uri)
        try:
            if fs.get_file_info(path).type == pafs.FileType.File:
                return [f"s3://{path}"]
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        except FileNotFoundError:
            infos = []
        except OSError as exc:
            raise ObjectStoreError(f"object storage: cannot list {uri}: {exc}") from exc
        keys = sorted((i.path for i in infos if i.type == pafs.FileType.File), key=lambda k: k.split("/"))
        if not keys:
            raise InvalidInputError(f"no objects under {uri} (a missing prefix, or an empty one)")
        return [f"s3://{k}" for k in keys]

    def head(self, uri: str) -> tuple[int, bytes]:
        """An object's size and first ``HEAD_BYTES`` bytes (a ranged read)."""
        fs, path = self.fs(uri)
        with _errors(uri), fs.open_input_file(path) as f:
            return f.size(), f.read(HEAD_BYTES)

    def read(self, uri: str) -> Any:
        """What ``prepare`` takes, as ``ingest.read_path`` returns it for a file: media as its bytes, UTF-8
        text as its text; over the limits, refused from its size before its body is read."""
        fs, path = self.fs(uri)
        with _errors(uri), fs.open_input_file(path) as f:
            size, head = f.size(), f.read(HEAD_BYTES)
            media = _modality(head) != "text"
            if media and size > MAX_MEDIA_BYTES:
                raise InputTooLargeError(f"media content is {size} bytes; the limit is {MAX_MEDIA_BYTES}")
            if not media and size > 4 * MAX_TEXT_CHARS:  # UTF-8 takes at most 4 bytes a character
                limit = f"{4 * MAX_TEXT_CHARS} bytes; the limit is {MAX_TEXT_CHARS} characters"
                raise InputTooLargeError(f"text file is over {limit}")
            data = head + f.read()
        if media:
            return data
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInputError("not an image, audio or UTF-8 text file") from None
        if not text.strip():
            raise InvalidInputError("the file holds no text")
        return text


@contextlib.contextmanager
def _errors(uri: str) -> Iterator[None]:
    """A missing object is an ``InvalidInputError`` (as a missing file is), a failure ``ObjectStoreError``."""
    try:
        yield
    except FileNotFoundError:
        raise InvalidInputError(f"no such object: {uri}") from None
    except OSError as exc:
        if isinstance(exc, AiosMemoryError):
            raise
        raise ObjectStoreError(f"object storage: cannot read {uri}: {exc}") from exc


def list_files(
    sources: Iterable[str | os.PathLike[str]], options: Mapping[str, Any] | None = None
) -> list[Path | str]:
    """Files under each folder (recursively, sorted) and each file given, as ``aios-memory import`` does;
    for an ``s3://bucket/prefix`` source (a ``str``), the URIs of the objects under it (``options``: see
    :class:`Objects`). A missing file or folder, or a prefix with no object, is an ``InvalidInputError``."""
    files: list[Path | str] = []
    objects = Objects(options)
    for source in sources:
        if isinstance(source, str) and is_remote(source):
            files.extend(objects.list(source))
            continue
        p = Path(source)
        if not p.exists():
            raise InvalidInputError(f"no such file or folder: {p}")
        files.extend(sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p])
    return files


def _modality(head: bytes) -> str:
    try:
        return sniff(head)[0]
    except AiosMemoryError:
        return "text"


def classify(path: Path) -> str:
    """``image`` or ``audio`` from a file's first bytes, else ``text`` (whether it is UTF-8 text is found
    where it is read). Like the import, a FIFO or device is refused from ``stat``, never opened."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise InvalidInputError(f"{path} is not a regular file")
    with open(path, "rb") as f:
        return _modality(f.read(HEAD_BYTES))


@dataclass
class Plan:
    """A job's inputs by modality: rows for ``ray.data.from_items`` and the files refused up front."""

    files: list[Path | str]
    items: dict[str, list[dict[str, object]]] = field(default_factory=dict)
    errors: list[tuple[int, str, BaseException]] = field(default_factory=list)  # (index, source, error)


def plan_files(files: list[Path | str], options: Mapping[str, Any] | None = None) -> Plan:
    """Each file as an input row of its modality: ``path`` (absolute, or an object's ``s3://`` URI),
    ``metadata`` (``{"filename": name}``, as the import stores it) and ``index`` (its position in
    ``files``). Objects are classified as files are, from their first bytes (read in threads)."""
    plan = Plan(files)
    objects = Objects(options)

    def one(file: Path | str) -> tuple[str, str, str, str | BaseException]:
        """(path, source, name, modality or the error)"""
        if isinstance(file, str):
            path, source, name = file, file, file.rsplit("/", 1)[-1]
        else:
            path, name = str(file.absolute()), file.name
            source = file.absolute().resolve().as_uri()
        try:
            modality = _modality(objects.head(path)[1]) if isinstance(file, str) else classify(Path(path))
        except (OSError, AiosMemoryError) as exc:
            return path, source, name, exc
        return path, source, name, modality

    with ThreadPoolExecutor(LISTING_THREADS) as pool:
        for index, (path, source, name, modality) in enumerate(pool.map(one, files)):
            if isinstance(modality, BaseException):
                plan.errors.append((index, source, modality))
                continue
            plan.items.setdefault(modality, []).append(
                {"path": path, "metadata": metadata_json({"filename": name}), "index": index}
            )
    plan.items = {m: plan.items[m] for m in MODALITIES if m in plan.items}
    return plan
