"""Ray Data: ``MemoryDatasink`` (fragments written by the workers, one commit by the driver) and
``ingest_ray`` (a folder into a store, one version per job). The only modules of aios-memory that import Ray.

A job::

    driver                      actors (``Embed``, one model each)        write tasks (``MemoryDatasink.write``)
    list + classify files  ->   read, prepare, embed, Arrow rows     ->   Storage.write_fragment -> Fragment records
    commit_parts: ONE version naming every fragment  <-  on_write_complete (all write tasks succeeded)

Until that commit the fragments are orphans no reader sees; a failed job (a worker lost, an error)
commits nothing, ``on_write_failed`` records why, and ``cleanup`` removes the orphans after the store's
retention period. Running the job again is safe: nothing of the failed run was ever visible.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data import Datasink
from ray.data.block import BlockAccessor

from aios_memory.distributed.commit import Part, commit_parts
from aios_memory.distributed.embed import ERROR, INDEX, MODEL_HOME_ENV, Embed, absolute, resolve_providers
from aios_memory.distributed.sources import list_files, plan_files
from aios_memory.errors import InvalidInputError, ProviderMismatchError
from aios_memory.memory import check_namespace, now_utc
from aios_memory.schema import META_KEY, base_schema
from aios_memory.storage import Fragment, Manifest, Storage

# Arrow bytes Ray bundles per write task, and a fragment's size before a task starts another: fragments of
# this size are never rewritten by compaction (SMALL_FRAGMENT_BYTES), smaller ones (a job's tail) may be
FRAGMENT_BYTES = 64 << 20
WRITE_CPUS = 0.0  # write tasks (Parquet + sidecars) must never wait for CPUs the embedding actors hold

# (input index, source, "ErrorType: message") of an input that was skipped
InputError = tuple[int, "str | None", str]


@dataclass(frozen=True)
class SinkWrite:
    """What one write task returns to the driver (and, combined, what the sink wrote)."""

    fragments: tuple[Fragment, ...] = ()
    errors: tuple[InputError, ...] = ()

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.fragments)


_STORAGE: dict[str, Storage] = {}  # per worker process: a write task reuses what an earlier one opened


def _storage(location: str, options: Mapping[str, Any] | None) -> Storage:
    key = json.dumps([location, dict(options or {})], sort_keys=True, default=str)
    if key not in _STORAGE:
        # the driver created the store: a local path missing here means this node cannot see it
        _STORAGE[key] = Storage(location, storage_options=options, create="://" in location)
    return _STORAGE[key]


class MemoryDatasink(Datasink[SinkWrite]):
    """``ds.write_datasink(MemoryDatasink(location, modality="image"))`` after ``map_batches(Embed, ...)``.

    Built on the driver, which creates the store if needed and resolves the providers as the store does
    (a table built with another provider than ``providers`` names is refused here, before any work).
    ``write`` (in the workers) writes fragments and returns their records; ``on_write_complete`` commits
    them all in one version (``commit=False``: only keeps them, in ``result``, for the caller to commit
    with others through :meth:`part`); ``on_write_failed`` commits nothing and keeps the error.
    """

    def __init__(
        self,
        location: str | os.PathLike[str],
        storage_options: Mapping[str, Any] | None = None,
        *,
        modality: str,
        namespace: str = "default",
        providers: Mapping[str, str] | None = None,
        commit: bool = True,
        bytes_per_write: int | None = FRAGMENT_BYTES,
        operation: str | None = None,
    ) -> None:
        self.location = absolute(location)
        self.storage_options = dict(storage_options) if storage_options else None
        storage = Storage(self.location, storage_options=self.storage_options, create=True)
        provider, text = resolve_providers(modality, self.location, self.storage_options, providers)
        self.modality = modality
        self.namespace = check_namespace(namespace)
        self.provider = provider.name
        self.text_provider = text.name if text is not None else None
        self.schema = base_schema(modality, provider.dim, provider.fingerprint(), text.dim if text else None)
        self.commit = commit
        self.bytes_per_write = bytes_per_write
        self.operation = operation
        self.base_version = storage.latest_version()
        self.result: SinkWrite | None = None  # on the driver, once every write task succeeded
        self.committed: Manifest | None = None
        self.error: BaseException | None = None

    @property
    def min_bytes_per_write(self) -> int | None:
        """Bundle this much per write task (2.60 honours it; a Ray without it, or None, writes a
        fragment per block, which the maintenance after the commit merges)."""
        return self.bytes_per_write

    def get_name(self) -> str:
        return f"MemoryStore[{self.modality}]"

    # --- workers -----------------------------------------------------------------------------------
    def write(self, blocks: Iterable[Any], ctx: Any) -> SinkWrite:
        storage = _storage(self.location, self.storage_options)
        written: list[Fragment] = []
        errors: list[InputError] = []
        pending: list[pa.Table] = []
        size = 0
        try:
            for block in blocks:
                table, bad = self._conform(BlockAccessor.for_block(block).to_arrow())
                errors.extend(bad)
                if table.num_rows:
                    pending.append(table)
                    size += table.nbytes
                if size >= FRAGMENT_BYTES:
                    written.append(storage.write_fragment(self.modality, pa.concat_tables(pending)))
                    pending, size = [], 0
            if pending:
                written.append(storage.write_fragment(self.modality, pa.concat_tables(pending)))
        except BaseException:
            for fragment in written:  # never named by a manifest: remove now rather than at cleanup
                for rel in fragment.files():
                    try:
                        storage.backend.delete(rel)
                    except OSError:
                        pass
            raise
        return SinkWrite(tuple(written), tuple(errors))

    def _conform(self, table: pa.Table) -> tuple[pa.Table, list[InputError]]:
        """The rows as the table's exact schema, without the inputs that failed (returned apart)."""
        bad: list[InputError] = []
        if ERROR in table.column_names:
            failed = pc.is_valid(table.column(ERROR))
            if pc.any(failed).as_py():
                rows = table.filter(failed).select([INDEX, "source", ERROR]).to_pylist()
                bad = [(int(r[INDEX]), r["source"], str(r[ERROR])) for r in rows]
                table = table.filter(pc.invert(failed))
        meta = (table.schema.metadata or {}).get(META_KEY)
        expected = json.loads(self.schema.metadata[META_KEY])
        if meta is not None and json.loads(meta) != expected:
            raise ProviderMismatchError(
                f"rows were embedded with {json.loads(meta)}, but the store's {self.modality} table takes "
                f"{expected}; nothing is committed (do the workers have the same plugins as the driver?)"
            )
        if table.num_rows:
            seen = set(pc.unique(table.column("provider")).to_pylist())
            if seen != {self.provider}:
                raise ProviderMismatchError(
                    f"rows of provider(s) {sorted(seen)} reached the sink of {self.provider!r} rows "
                    f"(the {self.modality} table's); nothing is committed"
                )
            namespaces = set(pc.unique(table.column("namespace")).to_pylist())
            if namespaces != {self.namespace}:
                raise InvalidInputError(
                    f"rows of namespace(s) {sorted(namespaces)} reached the sink of namespace "
                    f"{self.namespace!r}; nothing is committed"
                )
        missing = [n for n in self.schema.names if n not in table.column_names]
        if missing:
            raise InvalidInputError(f"rows lack the {self.modality} table's columns {missing}")
        columns = []
        for f in self.schema:
            column = table.column(f.name)
            if column.type != f.type:
                raise ProviderMismatchError(
                    f"column {f.name!r} is {column.type}, the {self.modality} table's is {f.type}"
                )
            columns.append(column)
        return pa.Table.from_arrays(columns, schema=self.schema), bad

    # --- driver ------------------------------------------------------------------------------------
    def on_write_complete(self, write_result: Any) -> None:
        writes: Sequence[SinkWrite] = getattr(write_result, "write_returns", write_result)
        writes = [w for w in writes if w is not None]
        self.result = SinkWrite(
            tuple(f for w in writes for f in w.fragments), tuple(e for w in writes for e in w.errors)
        )
        if self.commit:
            self.committed = commit_parts(
                self.location, [self.part()], storage_options=self.storage_options, operation=self.operation
            )

    def on_write_failed(self, error: Exception) -> None:
        self.error = error  # nothing was committed; the fragments written are orphans for cleanup

    def part(self) -> Part:
        """This sink's share of a job, to commit with others (``commit_parts``)."""
        fragments = self.result.fragments if self.result is not None else ()
        return Part(self.modality, self.provider, self.text_provider, fragments)


def ingest_ray(
    location: str | os.PathLike[str],
    sources: Iterable[str | os.PathLike[str]],
    *,
    storage_options: Mapping[str, Any] | None = None,
    address: str | None = None,
    actors: int = 1,
    batch_size: int = 32,
    namespace: str = "default",
    progress: bool = True,
    providers: Mapping[str, str] | None = None,
    actor_cpus: float = 1.0,
    ray_remote_args: Mapping[str, Any] | None = None,
    bytes_per_write: int | None = FRAGMENT_BYTES,
    source_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Import files and folders (recursively, as ``aios-memory import``) into the store at ``location``
    on Ray Data: one dataset per modality, ``actors`` embedding actors each (``actor_cpus`` CPUs each),
    and ONE new version for the whole job, committed when every modality's writes have succeeded.

    ``address``: the Ray cluster (default: the one this process is connected to, else ``$RAY_ADDRESS``,
    else a local Ray started for this call and stopped after it). Every node must see the files and
    the store at the same paths (or the store is on object storage) and have the same plugins and
    model weights (``$AIOS_MEMORY_HOME`` is passed on when set). ``ray_remote_args`` go to the actors
    (``{"max_restarts": 0}`` fails the job when a node is lost instead of restarting its actor).

    A source may be ``s3://bucket/prefix`` (or one object's URI): the driver lists the objects under it
    and classifies each from its first bytes, as it does files; each actor reads its objects' bytes
    itself; each row's ``source`` is its object's URI. ``source_options`` (the ``storage_options`` keys)
    reach those sources; default: ``storage_options``, else the ``AWS_*`` environment. A prefix with no
    object is an ``InvalidInputError``, raised before anything is written.

    Returns ``version`` (the committed one; ``base_version`` if nothing was added), ``files``,
    ``added`` (files stored), ``rows``, ``errors`` (``{"index", "source", "error"}`` per skipped file),
    per-modality ``modalities`` figures and ``seconds``. Raises, committing nothing, on any failure.
    """
    for name, value in (("actors", actors), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInputError(f"{name} must be a positive int, got {value!r}")
    started = time.perf_counter()
    namespace = check_namespace(namespace)
    location = absolute(location)
    reach = storage_options if source_options is None else source_options
    plan = plan_files(list_files(sources, reach), reach)
    sinks = {  # resolves every provider now: a mismatch refuses the job before Ray does anything
        mod: MemoryDatasink(
            location,
            storage_options,
            modality=mod,
            namespace=namespace,
            providers=providers,
            commit=False,
            bytes_per_write=bytes_per_write,
        )
        for mod in plan.items
    }
    base = Storage(location, storage_options=storage_options, create=True).latest_version()
    figures: dict[str, dict[str, Any]] = {}
    ours = _connect(address) if plan.items else False  # nothing to embed: no Ray
    context = ray.data.DataContext.get_current()
    shown = context.enable_progress_bars
    context.enable_progress_bars = bool(progress)
    try:
        created_at = now_utc()  # one timestamp for the job, as the import has one per commit
        for mod, items in plan.items.items():
            t0 = time.perf_counter()
            ds = ray.data.from_items(items).map_batches(
                Embed,
                fn_constructor_kwargs={
                    "modality": mod,
                    "store": location,
                    "storage_options": dict(storage_options) if storage_options else None,
                    "providers": dict(providers) if providers else None,
                    "namespace": namespace,
                    "created_at": created_at,
                    "model_home": os.environ.get(MODEL_HOME_ENV),
                    "source_options": dict(reach) if reach else None,
                },
                batch_size=batch_size,
                batch_format="pyarrow",
                compute=_actor_pool(actors),
                num_cpus=actor_cpus,
                **dict(ray_remote_args or {}),
            )
            ds.write_datasink(sinks[mod], ray_remote_args={"num_cpus": WRITE_CPUS})
            result = sinks[mod].result or SinkWrite()
            figures[mod] = {
                "files": len(items),
                "rows": result.rows,
                "fragments": len(result.fragments),
                "skipped": len(result.errors),
                "seconds": round(time.perf_counter() - t0, 3),
            }
            if progress:
                print(
                    f"{mod}: {len(items)} files -> {result.rows} rows in {figures[mod]['seconds']:.1f} s "
                    f"({len(items) / max(figures[mod]['seconds'], 1e-9):.1f} files/s, {actors} actor(s))",
                    file=sys.stderr,
                    flush=True,
                )
        parts = [sink.part() for sink in sinks.values()]
        committed = commit_parts(
            location,
            parts,
            storage_options=storage_options,
            operation=f"ingest {len(plan.files)} files (ray)",
        )
    finally:
        context.enable_progress_bars = shown
        if ours:
            ray.shutdown()
    errors: list[dict[str, Any]] = [
        {"index": i, "source": s, "error": f"{type(e).__name__}: {e}"} for i, s, e in plan.errors
    ]
    for sink in sinks.values():
        errors.extend(
            {"index": i, "source": s, "error": e} for i, s, e in (sink.result or SinkWrite()).errors
        )
    errors.sort(key=lambda e: int(e["index"]))
    return {
        "store": location,
        "version": committed.version,
        "base_version": base,
        "files": len(plan.files),
        "added": len(plan.files) - len(errors),
        "rows": sum(p.rows for p in parts),
        "errors": errors,
        "modalities": figures,
        "actors": actors,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _actor_pool(actors: int) -> Any:
    """``actors`` actors, each running two calls in threads where this Ray offers it (2.60 does): one
    batch is read and preprocessed while the model embeds the other (``Embed`` serialises the model)."""
    import inspect

    strategy = ray.data.ActorPoolStrategy
    if "enable_true_multi_threading" in inspect.signature(strategy).parameters:
        return strategy(size=actors, max_concurrent_calls_per_actor=2, enable_true_multi_threading=True)
    return strategy(size=actors)


def _connect(address: str | None) -> bool:
    """Connect to Ray unless already connected; True when this call started (and must stop) it."""
    if ray.is_initialized():
        return False
    if address is None and not os.environ.get("RAY_ADDRESS"):  # a local Ray of our own: no dashboard,
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # and no usage reports unless asked for
        ray.init(include_dashboard=False)
    else:
        ray.init(address=address)
    return True
