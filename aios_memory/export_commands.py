"""``aios-memory files`` and ``aios-memory export``: a store's committed rows for other engines.

Loaded lazily by :mod:`aios_memory.cli` (``_LAZY_COMMANDS``). See docs/other-engines.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

MODALITY = click.Choice(["text", "image", "audio"])


def _open(ctx: click.Context) -> Any:
    from aios_memory.store import MemoryStore

    # listing or exporting never creates a store
    return MemoryStore(ctx.obj["store"], storage_options=ctx.obj.get("storage_options"), create=False)


@click.command("files")
@click.option(
    "--modality", type=MODALITY, default=None, help="One table's fragments (default: every table's)."
)
@click.option(
    "--version", type=click.IntRange(min=0), default=None, help="A retained version (default: newest)."
)
@click.option("--json", "as_json", is_flag=True, help='Print {"version", "modality", "files"} as JSON.')
@click.pass_context
def files(ctx: click.Context, modality: str | None, version: int | None, as_json: bool) -> None:
    """Print the Parquet files of a committed version, one per line: exactly its rows.

    Give them to DuckDB's read_parquet([...]), Polars, pandas or pyarrow. A glob over the store's
    directory would also read superseded fragments and the change log (see docs/other-engines.md).
    """
    store = _open(ctx)
    pinned = store.version if version is None else version  # the list and the number agree
    uris = store.files(modality, version=pinned)
    if as_json:
        click.echo(json.dumps({"version": pinned, "modality": modality, "files": uris}, indent=2))
        return
    for uri in uris:
        click.echo(uri)


@click.command("export")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["parquet", "delta"]),
    default="parquet",
    show_default=True,
    help="Plain Parquet files, or a Delta Lake table per modality (needs the deltalake package).",
)
@click.option("--modality", type=MODALITY, default=None, help="One table (default: every table).")
@click.option(
    "--version", type=click.IntRange(min=0), default=None, help="A retained version (default: newest)."
)
@click.option("--no-media", is_flag=True, help="Leave out the media column (the original image/audio bytes).")
@click.pass_context
def export(
    ctx: click.Context, dest: Path, fmt: str, modality: str | None, version: int | None, no_media: bool
) -> None:
    """Write a snapshot of a committed version to DEST, one directory per modality.

    DEST must be new or an empty directory: the export is written beside it and renamed into place
    when complete, so a failed export leaves nothing at DEST. Prints what DEST/aios_memory_export.json
    holds (the version, the tables, their rows, files and aios_memory.* metadata).
    """
    from aios_memory.export import export as run_export

    report = run_export(
        _open(ctx), dest, fmt, modality=modality, version=version, include_media=not no_media, progress=None
    )
    click.echo(json.dumps(report, indent=2, sort_keys=True))
