"""Store maintenance commands: ``doctor``, ``compact``, ``cleanup``, ``index create``, ``versions``,
``retention`` and ``reembed`` (loaded when run)."""

from __future__ import annotations

import sys

import click

from aios_memory.cli_support import _echo_json, _store


@click.group()
def index() -> None:
    """Approximate-nearest-neighbour indexes (HNSW; needs `pip install "aios-memory[ann]"`)."""


@index.command("create")
@click.argument("modality", type=click.Choice(["text", "image", "audio"]))
@click.pass_context
def index_create(ctx: click.Context, modality: str) -> None:
    """Build or extend MODALITY's HNSW index (a commit); searches use it from then on."""
    _echo_json(_store(ctx).create_index(modality))


@click.command()
@click.pass_context
def doctor(ctx: click.Context) -> None:
    """Check the store's integrity (every file against its manifest; models: `models list`); exits 1
    when something is wrong."""
    report = _store(ctx).verify()
    _echo_json(report)
    if not report["ok"]:
        sys.exit(1)


@click.command()
@click.option("--modality", type=click.Choice(["text", "image", "audio"]), default=None)
@click.pass_context
def compact(ctx: click.Context, modality: str | None) -> None:
    """Merge each table's fragments into one (old files stay until `cleanup`)."""
    _echo_json({"merged_fragments": _store(ctx).compact(modality)})


@click.command()
@click.option(
    "--older-than", type=click.FloatRange(min=0), help="Seconds superseded [default: retention, 3600]."
)
@click.pass_context
def cleanup(ctx: click.Context, older_than: float | None) -> None:
    """Delete superseded versions and unreferenced files older than --older-than seconds."""
    _echo_json(_store(ctx).cleanup(older_than))


@click.command()
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the newest N versions.")
@click.pass_context
def versions(ctx: click.Context, limit: int | None) -> None:
    """List the retained versions, newest first: when each was committed, by which operation, the rows of
    each table and their change (JSON). Open one with MemoryStore(path, as_of=VERSION or a datetime)."""
    _echo_json(_store(ctx).versions(limit))


@click.command()
@click.argument("seconds", type=click.FloatRange(min=0), required=False)
@click.pass_context
def retention(ctx: click.Context, seconds: float | None) -> None:
    """Show the retention period (how long superseded versions stay readable), or set it to SECONDS (a
    store setting, one commit; cleanup honours it)."""
    store = _store(ctx)
    if seconds is not None:
        version = store.set_retention(seconds)
        _echo_json({"retention": store.retention, "version": version})
    else:
        _echo_json({"retention": store.retention})


@click.command()
@click.argument("modality")
@click.option("--provider", default=None, help="The provider to move to (default: the one the table records).")
@click.option("--text-provider", default=None, help="Audio: the text model for the transcripts' vectors.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.pass_context
def reembed(
    ctx: click.Context, modality: str, provider: str | None, text_provider: str | None, batch_size: int
) -> None:
    """Compute new vectors for every MODALITY memory with --provider and switch the table in one commit
    (readers see all old or all new vectors). A killed run resumes where it stopped when run again."""
    store = _store(ctx)
    _echo_json(
        store.reembed(modality, provider, text_provider=text_provider, batch_size=batch_size, progress=True)
    )
