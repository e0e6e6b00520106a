"""``Embed``: the callable class a Ray Data ``map_batches`` runs in its actors. Imports no Ray.

Each actor resolves its provider the way the store does (the table's provider, else the chosen or default
one; ``$AIOS_MEMORY_HOME`` for the weights) and loads the model once. A call turns a batch of inputs into
rows of the store's table for that modality, through the same steps as ``aios-memory import``
(:mod:`aios_memory.ingest`: ``read_path``, ``prepare``, ``expand``, ``preprocess_batch``,
``embed_preprocessed``, then :func:`aios_memory.rows.build_rows`), so the rows equal what the import
writes for the same files, ids and timestamps aside.

Input columns (Arrow or numpy batches): ``path`` (a file, read where the actor runs, or an object's
``s3://`` URI, which the actor reads with ``source_options``; the URI is its ``source``) or ``data`` (the
bytes or text itself) with an optional ``source`` URI; optional ``metadata`` (a JSON object, as text)
and ``index`` (the input's position, echoed in error reports).

Output: the table's columns (its schema, with the provider's fingerprint in the metadata) plus
``_aios_index`` and ``_aios_error``. An input that cannot be read, classified, decoded or embedded
becomes one row whose ``_aios_error`` says why (its other columns are placeholders); the sink drops
those rows and reports them, as the import skips and reports such files.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from aios_memory.distributed.sources import Objects, S3Object
from aios_memory.errors import ProviderError
from aios_memory.ingest import (
    _forward,
    _Group,
    _isolate,
    _payloads,
    _Pending,
    _Pipeline,
    _with_payload,
    read_path,
)
from aios_memory.memory import check_namespace, metadata_json, now_utc
from aios_memory.modality import prepare
from aios_memory.provider import EmbeddingProvider
from aios_memory.rows import build_rows
from aios_memory.schema import TEXT_COLUMN, base_schema

INDEX = "_aios_index"
ERROR = "_aios_error"
MODEL_HOME_ENV = "AIOS_MEMORY_HOME"


def is_uri(location: str | os.PathLike[str]) -> bool:
    """Object storage (``s3://...``) rather than a local directory."""
    return "://" in str(location)


def absolute(location: str | os.PathLike[str]) -> str:
    """A location every process on a node names the same way (workers may run in another directory)."""
    return str(location) if is_uri(location) else str(Path(location).absolute())


def resolve_providers(
    modality: str,
    store: str | os.PathLike[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    providers: Mapping[str, str] | None = None,
) -> tuple[EmbeddingProvider, EmbeddingProvider | None]:
    """``(provider, text provider)`` for ``modality``'s rows, by the store's own rules: the provider its
    table was built with (a chosen other one is a ``ProviderMismatchError``), else the chosen or default
    one; the text provider embeds the derived text column (audio transcripts), if the modality has one.
    ``store=None``: as for a store that has no table yet."""
    if store is not None:
        from aios_memory.store import MemoryStore

        s = MemoryStore(store, storage_options=storage_options, providers=providers, create=is_uri(store))
        m = s._manifest()  # one version for both answers
        return s._provider_in(m, modality), s._text_provider_in(m, modality)
    from aios_memory.plugins import resolve_provider

    chosen = dict(providers or {})
    provider = resolve_provider(None, modality, chosen.get(modality), "a new store")
    text = None
    if modality in TEXT_COLUMN:
        try:
            text = resolve_provider(None, "text", chosen.get("text"), "a new store")
        except ProviderError:
            text = None
    return provider, text


def output_schema(modality: str, provider: EmbeddingProvider, text: EmbeddingProvider | None) -> pa.Schema:
    """The table's schema (as ``build_rows`` makes it) plus the index and error columns."""
    schema = base_schema(modality, provider.dim, provider.fingerprint(), int(text.dim) if text else None)
    return schema.append(pa.field(INDEX, pa.int64())).append(pa.field(ERROR, pa.string()))


class _Fixed:
    """What ``ingest._Pipeline`` asks a store for: this actor's one provider."""

    def __init__(self, provider: EmbeddingProvider) -> None:
        self.provider = provider

    def provider_for(self, modality: str) -> EmbeddingProvider:
        return self.provider


class Embed:
    """``ds.map_batches(Embed, fn_constructor_kwargs={"modality": "image", "store": ...},
    compute=ray.data.ActorPoolStrategy(size=n), batch_format="pyarrow")``.

    ``store``/``storage_options``/``providers``: resolve the provider as ``MemoryStore(store,
    providers=providers)`` would (``store=None``: as for a new store). ``created_at``: the rows'
    timestamp (default: when the actor started). ``model_home``: sets ``$AIOS_MEMORY_HOME`` in the
    actor's process before anything is resolved (default: leave the worker's environment as it is).
    ``source_options``: how to reach ``s3://`` inputs (:class:`~aios_memory.distributed.sources.Objects`).
    """

    def __init__(
        self,
        modality: str,
        *,
        store: str | os.PathLike[str] | None = None,
        storage_options: Mapping[str, Any] | None = None,
        providers: Mapping[str, str] | None = None,
        namespace: str = "default",
        created_at: dt.datetime | None = None,
        model_home: str | None = None,
        source_options: Mapping[str, Any] | None = None,
    ) -> None:
        if model_home is not None:
            os.environ[MODEL_HOME_ENV] = str(model_home)
        self.modality = modality
        self.namespace = check_namespace(namespace)
        self.created_at = created_at if created_at is not None else now_utc()
        self.objects = Objects(source_options)
        self.provider, self.text_provider = resolve_providers(modality, store, storage_options, providers)
        # weights not installed: the actor fails now (the import's message), not once per input
        _Pipeline(_Fixed(self.provider), modality, str).provider(modality)
        self.provider.load()  # once per actor
        if self.text_provider is not None:
            self.text_provider.load()
        self.schema = output_schema(modality, self.provider, self.text_provider)
        # An actor running two calls in threads (``ingest_ray`` asks for that where Ray offers it) reads
        # and preprocesses one batch while the model embeds the other, as the import's worker thread does.
        self._model = threading.Lock()

    # --- one batch ---------------------------------------------------------------------------------
    def __call__(self, batch: pa.Table | Mapping[str, Any]) -> pa.Table:
        table = batch if isinstance(batch, pa.Table) else _from_numpy(batch)
        n = table.num_rows
        column = {name: table.column(name).to_pylist() for name in table.column_names}
        paths = column.get("path", [None] * n)
        datas = column.get("data", [None] * n)
        sources = column.get("source", [None] * n)
        metas = column.get("metadata", [None] * n)
        indexes = column.get("index", list(range(n)))
        inputs: list[tuple[int, Any, str | None]] = []
        metadata: dict[int, str] = {}
        errors: list[tuple[int, str | None, BaseException]] = []
        for i in range(n):
            value: Any = _input(paths[i]) if paths[i] is not None else datas[i]
            source = sources[i] or (
                value.resolve().as_uri() if isinstance(value, Path) else getattr(value, "uri", None)
            )
            try:
                raw = metas[i]
                metadata[i] = metadata_json(json.loads(raw) if isinstance(raw, (str, bytes)) else raw)
                if value is None:
                    raise ProviderError("an input row needs a 'path' or a 'data' value")
            except Exception as exc:  # noqa: BLE001 - this input's error, reported by the sink
                errors.append((i, source, exc))
                continue
            inputs.append((i, value, source))
        group, bad = self._prepare(inputs)
        errors.extend((i, s, exc) for i, s, exc in bad)
        pending = _Pending()
        with self._model:  # the models (and the transcripts' text model) one call at a time
            _forward(group, self.modality, pending, lambda i, exc: errors.append((i, _src(inputs, i), exc)))
            rows = pending.rows.get(self.modality, [])
            good = self._rows(rows, pending.vectors.get(self.modality, []), metadata)
        good = good.append_column(INDEX, pa.array([indexes[i] for i, _, _ in rows], pa.int64()))
        good = good.append_column(ERROR, pa.nulls(len(rows), pa.string()))
        if not errors:
            return good
        failed = self._error_rows([(indexes[i], s, exc) for i, s, exc in sorted(errors, key=_first)])
        return pa.concat_tables([good, failed])

    def _prepare(
        self, inputs: list[tuple[int, Any, str | None]]
    ) -> tuple[_Group, list[tuple[int, str | None, BaseException]]]:
        """``ingest._Pipeline.prepare_chunk`` for one modality, with the source given for bytes."""
        group = _Group(self.provider, [])
        errors: list[tuple[int, str | None, BaseException]] = []
        for index, value, source in inputs:
            try:
                if isinstance(value, S3Object):  # read here, in the actor, not shipped by Ray
                    value = self.objects.read(value.uri)
                item = prepare(read_path(value) if isinstance(value, Path) else value, self.modality, source)
                pieces = self.provider.expand(item.payload)
            except Exception as exc:  # noqa: BLE001 - reported per input
                errors.append((index, source, exc))
                continue
            group.rows.extend((index, _with_payload(item, p), cols) for p, cols in pieces)
        if not group.rows:
            return group, errors
        try:
            group.batch = self.provider.preprocess_batch(_payloads(group.rows))
        except Exception:  # noqa: BLE001 - find the bad input(s), keep the rest
            bad = _isolate(group.rows, lambda rows: self.provider.preprocess_batch(_payloads(rows)))
            errors.extend((i, _src(inputs, i), exc) for i, exc in bad)
            failed = {i for i, _ in bad}
            group.rows = [r for r in group.rows if r[0] not in failed]
            if group.rows:
                group.batch = self.provider.preprocess_batch(_payloads(group.rows))
        return group, errors

    def _rows(self, rows: list[Any], vectors: list[np.ndarray], metadata: dict[int, str]) -> pa.Table:
        if not rows:
            return self.schema.empty_table().drop_columns([INDEX, ERROR])
        return build_rows(
            self.modality,
            self.provider,
            self.text_provider,
            [it for _, it, _ in rows],
            [metadata[i] for i, _, _ in rows],
            self.namespace,
            self.created_at,
            vectors,
            [cols for _, _, cols in rows],
        )

    def _error_rows(self, errors: list[tuple[int, str | None, BaseException]]) -> pa.Table:
        n, dim = len(errors), int(self.provider.dim)
        filled: dict[str, Any] = {
            "id": pa.array([""] * n, pa.string()),
            "namespace": pa.array([self.namespace] * n, pa.string()),
            "created_at": pa.array([self.created_at] * n, pa.timestamp("us", tz="UTC")),
            "provider": pa.array([self.provider.name] * n, pa.string()),
            "source": pa.array([s for _, s, _ in errors], pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(n * dim, np.float32)), dim),
            INDEX: pa.array([i for i, _, _ in errors], pa.int64()),
            ERROR: pa.array([f"{type(e).__name__}: {e}" for _, _, e in errors], pa.string()),
        }
        return pa.table(
            [filled[f.name] if f.name in filled else pa.nulls(n, f.type) for f in self.schema],
            schema=self.schema,
        )


def _input(path: str) -> Path | S3Object:
    return S3Object(path) if "://" in path else Path(path)


def _first(error: tuple[int, Any, Any]) -> int:
    return error[0]


def _src(inputs: list[tuple[int, Any, str | None]], index: int) -> str | None:
    return next((s for i, _, s in inputs if i == index), None)


def _from_numpy(batch: Mapping[str, Any]) -> pa.Table:
    """A numpy batch (``{column: ndarray}``) as Arrow; object arrays hold str, bytes or None."""
    return pa.table({name: pa.array(list(values)) for name, values in batch.items()})
