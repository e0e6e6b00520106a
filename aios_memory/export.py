"""A snapshot of one committed version, for engines that know nothing of aios-memory.

:func:`export` writes each modality table of a version to ``dest/<modality>/``, either as plain Parquet
(``part-00000.parquet``, ...: vector columns stay ``fixed_size_list<float32>[dim]``) or as a Delta Lake
table (through ``deltalake``, which stores vectors as ``list<float>``). Either way the table's provenance
(provider, vector widths, fingerprint, store version) rides along under ``aios_memory.*`` keys: in each
Parquet file's schema metadata, and in the Delta table's ``configuration`` (its table properties), where
``DeltaTable(path).metadata().configuration`` reads it back. ``dest/aios_memory_export.json`` describes
the whole export.

The export is all or nothing: it is written into a hidden directory beside ``dest`` (``.<name>.export-<hex>``)
and renamed to ``dest`` once complete and fsynced. A ``dest`` that exists and is not an empty directory
is refused before anything is written. Fragments are read through the store's storage layer only.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from aios_memory.compaction import read_fragment
from aios_memory.errors import InvalidInputError, StoreCorruptError, StoreError
from aios_memory.ingest import _progress_bar
from aios_memory.provider import MODALITIES
from aios_memory.query import vector_columns, view_name
from aios_memory.schema import base_schema
from aios_memory.storage import Fragment, Storage, TableState

FORMATS = ("parquet", "delta")
DESCRIPTOR = "aios_memory_export.json"  # at the root of every export
META = "aios_memory."  # prefix of the keys each exported table carries
PART_ROWS = 1 << 20  # a Parquet export starts a new part file after this many rows
ROW_GROUP_ROWS = 16_384


def export(
    store: Any,
    dest: str | Path,
    format: str = "parquet",
    *,
    modality: str | None = None,
    version: int | None = None,
    include_media: bool = True,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Write the tables of ``version`` (default: the store's pinned or newest one) to ``dest``.

    ``format``: ``"parquet"`` or ``"delta"``; ``modality``: one table instead of all; ``include_media``:
    ``False`` leaves out the ``media`` column (the original image/audio bytes); ``progress``: a tqdm bar
    (``None``: on a terminal only). Returns what ``dest/aios_memory_export.json`` holds, plus ``dest``
    and ``seconds``. Needs a full-access handle: the tables hold every namespace's rows.
    """
    store.scope.check_admin("export the store")
    if format not in FORMATS:
        raise InvalidInputError(f"unknown export format {format!r}; one of {', '.join(FORMATS)}")
    if modality is not None and modality not in MODALITIES:
        raise InvalidInputError(f"unknown modality {modality!r}; one of {', '.join(MODALITIES)}")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 0):
        raise InvalidInputError(f"version must be a version number >= 0, got {version!r}")
    started = time.perf_counter()
    storage: Storage = store._storage
    dest = Path(dest).expanduser().absolute()
    _check_dest(dest, storage.root)
    m = storage.read_manifest(store._pinned if version is None else version)
    tables = {mod: state for mod, state in sorted(m.tables.items()) if modality in (None, mod)}
    if modality is not None and not tables:
        raise InvalidInputError(
            f"version {m.version} of {storage.root} has no {modality} table; nothing written"
        )
    if format == "delta":
        import deltalake  # noqa: F401 - fail before writing anything when it is missing
    descriptor: dict[str, Any] = {
        "format": format,
        "store": str(storage.root),
        "version": m.version,
        "committed_at": m.created_at,
        "media": include_media,
        "tables": {},
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.export-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    bar = _progress_bar(sum(s.rows for s in tables.values()), progress, unit="row", desc="export")
    try:
        for mod, state in tables.items():
            schema = table_schema(state, m.version, include_media)
            batches = _batches(storage, m.version, state, schema, bar)
            write = _write_parquet if format == "parquet" else _write_delta
            files = write(tmp / mod, schema, batches)
            descriptor["tables"][mod] = {
                "path": mod,
                "table": view_name(mod),
                "rows": state.rows,
                "files": files,
                "metadata": table_metadata(state, m.version, include_media),
            }
        (tmp / DESCRIPTOR).write_text(json.dumps(descriptor, indent=1, sort_keys=True) + "\n")
        _fsync_tree(tmp)
        _publish(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    return {**descriptor, "dest": str(dest), "seconds": round(time.perf_counter() - started, 3)}


def table_metadata(state: TableState, version: int, include_media: bool = True) -> dict[str, str]:
    """The ``aios_memory.*`` keys an exported table carries (string values, as Delta's configuration
    requires): the provider, its fingerprint (JSON), ``dim``, ``text_provider``/``text_dim`` where the
    table has a derived text column, ``vector_columns`` (JSON ``{column: width}``: what to cast back) and
    the store ``version`` it was exported from."""
    widths = {"embedding": int(state.dim)}
    extra = [c for c in vector_columns(state.modality) if c != "embedding"]
    if extra and state.text_dim:
        widths[extra[0]] = int(state.text_dim)
    meta = {
        "modality": state.modality,
        "table": view_name(state.modality),
        "provider": state.provider,
        "dim": str(int(state.dim)),
        "fingerprint": json.dumps(state.fingerprint, sort_keys=True),
        "vector_columns": json.dumps(widths),
        "store_version": str(version),
        "media": "included" if include_media else "excluded",
    }
    if state.text_provider is not None:
        meta["text_provider"] = state.text_provider
    if state.text_dim is not None:
        meta["text_dim"] = str(int(state.text_dim))
    return {f"{META}{k}": v for k, v in meta.items()}


def table_schema(state: TableState, version: int, include_media: bool = True) -> pa.Schema:
    """The table's Arrow schema as the store defines it (its ``aios_memory`` key kept) plus the
    :func:`table_metadata` keys; without ``media`` unless ``include_media``."""
    schema = base_schema(state.modality, state.dim, state.fingerprint, state.text_dim)
    if not include_media:
        schema = schema.remove(schema.get_field_index("media"))
    extra = table_metadata(state, version, include_media)
    meta = {**schema.metadata, **{k.encode(): v.encode() for k, v in extra.items()}}
    return schema.with_metadata(meta)


def _batches(
    storage: Storage, version: int, state: TableState, schema: pa.Schema, bar: Any
) -> Iterator[pa.Table]:
    """Each committed fragment of the table, read through the storage layer, in ``schema``."""
    for frag in state.fragments:
        table = _read(storage, version, frag, schema.names)
        try:
            table = table.cast(schema)
        except (pa.ArrowException, ValueError) as exc:
            raise StoreCorruptError(
                f"fragment {frag.path} of {storage.root} does not have its table's schema ({exc})"
            ) from exc
        if table.num_rows != frag.rows:
            raise StoreCorruptError(
                f"fragment {frag.path} of {storage.root} holds {table.num_rows} rows, its manifest says "
                f"{frag.rows}; run `aios-memory doctor`"
            )
        bar.update(table.num_rows)
        yield table


def _read(storage: Storage, version: int, frag: Fragment, columns: list[str]) -> pa.Table:
    try:
        return read_fragment(storage, frag, columns)
    except StoreCorruptError as exc:
        if not storage.has_version(version):  # cleanup removed the version while it was exported
            raise storage.version_gone(version) from exc
        raise


def _write_parquet(folder: Path, schema: pa.Schema, tables: Iterator[pa.Table]) -> list[str]:
    """Plain Parquet parts (zstd) holding the rows in fragment order; an empty table gets one empty part."""
    import pyarrow.parquet as pq

    folder.mkdir()
    names: list[str] = []
    writer: Any = None
    rows = 0
    try:
        for table in tables:
            done = 0
            while done < table.num_rows:
                if writer is None or rows >= PART_ROWS:
                    if writer is not None:
                        writer.close()
                    names.append(f"part-{len(names):05d}.parquet")
                    writer = pq.ParquetWriter(folder / names[-1], schema, compression="zstd")
                    rows = 0
                take = min(PART_ROWS - rows, table.num_rows - done)
                writer.write_table(table.slice(done, take), row_group_size=ROW_GROUP_ROWS)
                rows, done = rows + take, done + take
        if writer is None:
            names.append("part-00000.parquet")
            pq.write_table(schema.empty_table(), folder / names[-1], compression="zstd")
    finally:
        if writer is not None:
            writer.close()
    return names


def _write_delta(folder: Path, schema: pa.Schema, tables: Iterator[pa.Table]) -> list[str]:
    """A Delta table: created with its ``aios_memory.*`` keys as table properties, then the rows appended
    as one commit from a stream (one fragment in memory at a time). Vector columns become
    ``list<float>``; each keeps its width as field metadata ``aios_memory.dim`` too."""
    from deltalake import DeltaTable, write_deltalake

    meta = {k.decode(): v.decode() for k, v in schema.metadata.items() if k.startswith(META.encode())}
    widths = json.loads(meta[f"{META}vector_columns"])
    fields = [f.with_metadata({f"{META}dim": str(widths[f.name])}) if f.name in widths else f for f in schema]
    schema = pa.schema(fields, metadata=schema.metadata)
    name = meta[f"{META}table"]
    description = (
        f"aios-memory {name} at store version {meta[f'{META}store_version']}. Vector columns are "
        f"list<float> here; cast each back to its fixed width, {meta[f'{META}vector_columns']}, "
        f"e.g. DuckDB embedding::FLOAT[{widths['embedding']}] (widths: the aios_memory.* table properties)."
    )
    folder.mkdir()
    DeltaTable.create(
        str(folder),
        schema,
        name=name,
        description=description,
        configuration=meta,
        raise_if_key_not_exists=False,  # keys outside delta.*: kept as table properties, as Spark does
    )
    failed: list[BaseException] = []
    given = [0]

    def stream() -> Iterator[pa.RecordBatch]:
        try:
            for table in tables:
                given[0] += table.num_rows
                yield from table.cast(schema).to_batches()
        except BaseException as exc:
            failed.append(exc)  # delta-rs reports it as its own error: raise ours instead
            raise

    reader = pa.RecordBatchReader.from_batches(schema, stream())
    try:
        write_deltalake(str(folder), reader, mode="append")
    except Exception as exc:
        if failed:
            raise failed[0] from exc
        raise StoreError(f"deltalake could not write {name} ({exc}); nothing was exported") from exc
    if failed:
        raise failed[0]
    written = DeltaTable(str(folder))
    if written.to_pyarrow_dataset().count_rows() != given[0]:
        raise StoreError(f"deltalake wrote {name} short of the rows it was given; nothing was exported")
    return sorted(Path(uri.removeprefix("file://")).name for uri in written.file_uris())


def _check_dest(dest: Path, root: Any) -> None:
    """``dest`` must be missing or an empty directory, and outside the store; else nothing is written."""
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise InvalidInputError(f"export destination {dest} exists and is not a directory; nothing written")
    if dest.is_dir() and any(dest.iterdir()):
        raise InvalidInputError(
            f"export destination {dest} is not empty; nothing written (give a new or empty directory)"
        )
    if not isinstance(root, Path):
        return  # a store on object storage: a local dest cannot be inside it
    real, store = Path(os.path.realpath(dest)), Path(os.path.realpath(root))
    if real == store or store in real.parents:
        raise InvalidInputError(f"export destination {dest} is inside the store {root}; nothing written")


def _publish(tmp: Path, dest: Path) -> None:
    """Rename the finished export to ``dest`` (atomic; replaces an empty directory only)."""
    try:
        os.rename(tmp, dest)
    except OSError as exc:
        raise InvalidInputError(
            f"export destination {dest} appeared or filled up during the export ({exc.strerror}); "
            "nothing written there"
        ) from exc
    _fsync(dest.parent)


def _fsync_tree(folder: Path) -> None:
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            _fsync(Path(dirpath, name))
        _fsync(Path(dirpath))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
