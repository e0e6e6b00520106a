"""The ``aios-memory`` command line. Holds no logic the ``MemoryStore`` API lacks."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from aios_memory.cli_support import (  # noqa: F401 - _storage_options and _store are used by other command modules
    _echo_json,
    _jsonable,
    _Location,
    _param,
    _storage_options,
    _store,
    cell,
    file_list,
    metadata_object,
)
from aios_memory.errors import AiosMemoryError, UnsupportedMediaError

# commands whose modules load only when they run (or are listed): `serve`, the proxy an MCP host starts
# for every client, must not pay for the web page's or the store's imports
_LAZY_COMMANDS = {
    "daemon": "aios_memory.service.commands",
    "serve": "aios_memory.service.commands",
    "token": "aios_memory.service.commands",
    "ui": "aios_memory.ui.server",
    "models": "aios_memory.model_commands",
    "files": "aios_memory.export_commands",
    "export": "aios_memory.export_commands",
    "ingest": "aios_memory.distributed.commands",
    "demo": "aios_memory.demo",
    "doctor": "aios_memory.maintenance_commands",
    "compact": "aios_memory.maintenance_commands",
    "cleanup": "aios_memory.maintenance_commands",
    "versions": "aios_memory.maintenance_commands",
    "retention": "aios_memory.maintenance_commands",
    "reembed": "aios_memory.maintenance_commands",
    "index": "aios_memory.maintenance_commands",
}


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _LAZY_COMMANDS and cmd_name not in self.commands:
            import importlib

            self.add_command(getattr(importlib.import_module(_LAZY_COMMANDS[cmd_name]), cmd_name))
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AiosMemoryError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc
        except click.NoSuchOption as exc:  # `aios-memory search x --store DIR`: say where it goes
            if exc.option_name in ("--store", "--storage-option") and ctx.invoked_subcommand:
                exc.message = (
                    f"{exc.option_name} goes before the command: "
                    f"aios-memory {exc.option_name} ... {ctx.invoked_subcommand} ..."
                )
                exc.possibilities = None
            raise


@click.group(cls=_Group)
@click.option(
    "--store",
    type=_Location(),
    envvar="AIOS_MEMORY_STORE",
    default=None,
    help="Store directory or s3://bucket/prefix, for every command [env: AIOS_MEMORY_STORE] (default: "
    "$AIOS_MEMORY_HOME/store; $AIOS_MEMORY_HOME defaults to ~/.cache/aios-memory).",
)
@click.option(
    "--storage-option",
    "storage_option",
    multiple=True,
    metavar="KEY=VALUE",
    help="Object-storage option (endpoint, region, lock_dir, single_writer, ...; credentials are best "
    "left to AWS_* variables). Repeatable.",
)
@click.version_option(package_name="aios-memory")
@click.pass_context
def cli(ctx: click.Context, store: Path | str | None, storage_option: tuple[str, ...]) -> None:
    """aios-memory: multimodal memory for agents."""
    from aios_memory.home import default_store_path
    from aios_memory.settings import use_store_models

    location = store or default_store_path()
    ctx.obj = {"store": location, "storage_options": _storage_options(storage_option)}
    if isinstance(location, Path):  # the models recorded when the store was created, unless env says
        use_store_models(location)


@cli.command()
@click.pass_context
def init(ctx: click.Context) -> None:
    """Create an empty store (writing commands also create one) that remembers where models are."""
    from aios_memory.home import models_dir

    store = _store(ctx, create=True)
    made = store._storage.created
    if isinstance(store.path, str) and store.version == 0:  # object storage: a first, empty version is
        store._storage.commit("init", lambda m: m)  # what marks a store there (local: its directories)
        made = True
    held = "" if made else " (it was a store already: nothing changed)"
    click.echo(f"store: {store.path} (version {store.version}){held}; models: {models_dir()}")


@cli.command()
@click.argument("text", required=False)
@click.option(
    "--file",
    "files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="An image, audio or video file to add (repeatable); a text file is added by `aios-memory import PATH`.",
)
@click.option("--namespace", "-n", default="default", show_default=True)
@click.option("--metadata", "-m", default=None, help="JSON object stored with the memory.")
@click.option(
    "--modality",
    type=click.Choice(["text", "image", "audio", "video"]),
    default=None,
    help="The items' modality (default: recognised from the content).",
)
@click.option(
    "--dedupe",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=None,
    help="Cosine threshold: an item this similar to a memory of its namespace is not stored again "
    "(its existing id is printed). Without it only exact repeats are merged.",
)
@click.option("--repeat", is_flag=True, help="Store the item even if an identical memory exists.")
@click.pass_context
def add(
    ctx: click.Context,
    text: str | None,
    files: tuple[Path, ...],
    namespace: str,
    metadata: str | None,
    modality: str | None,
    dedupe: float | None,
    repeat: bool,
) -> None:
    """Add TEXT, or the media in --file, as memories (one atomic commit). Prints their ids: an item
    whose content equals a memory of its namespace is not stored twice (its id is printed)."""
    if repeat and dedupe is not None:
        raise click.UsageError("--repeat stores every item; it cannot be combined with --dedupe")
    if text is not None and files:
        raise click.UsageError("give TEXT or --file, not both (one add stores one kind of input)")
    items: list[Any] = ([text] if text is not None else []) + list(files)
    if not items:
        raise click.UsageError("give TEXT or at least one --file")
    meta = metadata_object(metadata)
    store = _store(ctx, create=True)
    before = store.version
    try:
        ids = store.add_many(
            items, modality=modality, namespace=namespace, metadata=meta, dedupe=False if repeat else dedupe
        )
    except UnsupportedMediaError as exc:
        if not any(_is_text(f) for f in files):
            raise
        raise UnsupportedMediaError(f"{exc}; a text file is added by `aios-memory import PATH`") from None
    for id_ in ids:
        click.echo(id_)
    if store.version == before:  # nothing committed: every item was held already
        what = (
            "already stored" if dedupe is None else f"already stored, or a near duplicate (--dedupe {dedupe})"
        )
        click.echo(
            f"{what} in namespace {namespace!r}: nothing new; the stored memory keeps its metadata "
            "(`aios-memory update ID -m JSON` changes it; --repeat stores a copy)",
            err=True,
        )


@cli.command()
@click.argument("id")
@click.argument("text", required=False)
@click.option("--file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="New media.")
@click.option("--metadata", "-m", default=None, help="New metadata: a JSON object (replaces the old).")
@click.pass_context
def update(ctx: click.Context, id: str, text: str | None, file: Path | None, metadata: str | None) -> None:
    """Change memory ID: new TEXT (or --file media; re-embedded), new metadata, or both (one commit;
    the old state stays in its history). Prints the memory as JSON."""
    if text is not None and file is not None:
        raise click.UsageError("give TEXT or --file, not both")
    if text is None and file is None and metadata is None:
        raise click.UsageError("give new TEXT, --file or --metadata")
    content = text if text is not None else file
    _echo_json(_store(ctx).update(id, content, metadata=metadata_object(metadata)).as_dict())


@cli.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--namespace", "-n", default="default", show_default=True)
@click.option("--commit-every", default=1000, show_default=True, help="Files per atomic commit.")
@click.pass_context
def import_(ctx: click.Context, paths: tuple[Path, ...], namespace: str, commit_every: int) -> None:
    """Import files and folders (recursively): images, audio, video and UTF-8 text files. Inside folders,
    hidden files and folders (.git, .DS_Store) and the files of a store are left out."""
    from aios_memory.ingest import ingest, plural

    left_out: list[Path] = []
    files = file_list(paths, left_out)
    if left_out:
        click.echo(
            f"left out {plural(len(left_out), 'file')} hidden or of a store (e.g. {left_out[0]}); "
            "name a file to import it",
            err=True,
        )
    if not files:
        raise click.ClickException(
            f"no files to import in {', '.join(map(str, paths))} (hidden files are skipped)"
        )
    store = _store(ctx, create=True)
    # decoding and preprocessing in a worker thread, the model in this one; a commit every N files
    res = ingest(
        store,
        files,
        namespace=namespace,
        metadata=lambda f: {"filename": f.name},
        commit_every=commit_every,
        progress=True,  # also when stderr is not a terminal: the last state of the bar is the log line
    )
    skipped = f"; skipped {plural(len(res.errors), 'file')} (reasons on stderr)" if res.errors else ""
    held = f" ({plural(res.existing, 'file')} held already)" if res.existing else ""
    added = plural(res.added - res.existing, "file")
    click.echo(
        f"imported {added} as {plural(res.rows, 'memory', 'memories')} into {store.path}{held}{skipped}"
    )
    for line in res.skipped([str(f) for f in files]):
        click.echo(f"  skipped {line}", err=True)
    if res.errors and not res.added:
        sys.exit(1)  # nothing imported: the run failed


@cli.command()
@click.argument("query", required=False)
@click.option(
    "--file",
    "file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Query by an image or audio file.",
)
@click.option("-k", default=5, show_default=True)
@click.option(
    "--modality",
    type=click.Choice(["text", "image", "audio", "video"]),
    default=None,
    help="One table to search (default: every table the query reaches, fused; see docs/concepts.md).",
)
@click.option(
    "--mode", type=click.Choice(["vector", "hybrid", "keyword"]), default=None, help="Default vector."
)
@click.option("--namespace", "-n", default=None)
@click.option("--where", default=None, help="SQL predicate, values as ? placeholders.")
@click.option("--param", "params", multiple=True, help="A value for a ? in --where (JSON or string).")
@click.option(
    "--half-life",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Seconds: decay each score by 0.5 ** (age / half-life).",
)
@click.option("--min-score", type=float, default=None, help="Drop results scoring below this (after decay).")
@click.option("--newest", is_flag=True, help="Return the top k by score, newest first.")
@click.option("--exact", is_flag=True, help="Never use an ANN index.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def search(
    ctx: click.Context,
    query: str | None,
    file: Path | None,
    k: int,
    modality: str | None,
    namespace: str | None,
    where: str | None,
    params: tuple[str, ...],
    half_life: float | None,
    min_score: float | None,
    newest: bool,
    exact: bool,
    mode: str | None,
    as_json: bool,
) -> None:
    """Rank memories by similarity to QUERY (text) or --file (image/audio), across tables."""
    if (query is None) == (file is None):
        raise click.UsageError("give exactly one of QUERY or --file")
    if params and not where:
        raise click.UsageError("--param gives values for the ? of --where; there is no --where")
    results = _store(ctx).search(
        file if file is not None else query,
        k=k,
        modality=modality,
        namespace=namespace,
        where=where,
        params=[_param(p) for p in params] if where else None,
        half_life=half_life,
        min_score=min_score,
        order="newest" if newest else "score",
        exact=True if exact else None,
        mode=mode,
    )
    if as_json:
        _echo_json([r.as_dict() for r in results])  # the shape MCP's recall returns
        return
    for rank, r in enumerate(results, 1):
        shown = (r.content or r.extra.get("transcript") or r.source or "").replace("\n", " ")
        if r.extra.get("start_s") is not None:  # a window of a recording: which, and of which file
            name = f" ({r.source.rsplit('/', 1)[-1]})" if r.source else ""
            shown = f"[{r.extra['start_s']:.1f}-{r.extra['end_s']:.1f}s] {shown}{name}"
        via = "+".join(s["signal"] for s in r.extra.get("signals", []))  # a fused search: what ranked it
        line = f"{rank:>2}. {r.score:.4f}  [{r.modality}/{r.namespace}] {cell(shown, 90)}  ({r.id})"
        click.echo(f"{line} via {via}" if via else line)
    if not results:
        click.echo("no memories matched")


@cli.command()
@click.argument("query")
@click.option("--param", "params", multiple=True, help="A value for each ? (JSON or string).")
@click.option("--json", "as_json", is_flag=True, help="Rows as JSON instead of a table.")
@click.option(
    "--timeout",
    type=click.FloatRange(0.0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Stop the query after this long (QueryTimeoutError). Default: no limit.",
)
@click.pass_context
def sql(
    ctx: click.Context, query: str, params: tuple[str, ...], as_json: bool, timeout: float | None
) -> None:
    """Run read-only SQL over text_memories, image_memories and audio_memories."""
    from aios_memory.ingest_report import plural

    table = _store(ctx).sql(query, [_param(p) for p in params], timeout=timeout)
    rows = table.to_pylist()
    if as_json:
        _echo_json(rows)
        return
    cols = table.column_names
    click.echo(" | ".join(cols))
    for row in rows:
        click.echo(" | ".join(cell(row[c]) for c in cols))
    click.echo(f"({plural(len(rows), 'row')}{'; --json shows whole values' if rows else ''})")


@cli.command()
@click.argument("ids", nargs=-1, required=True)
@click.pass_context
def delete(ctx: click.Context, ids: tuple[str, ...]) -> None:
    """Delete memories by id (all or nothing)."""
    click.echo(f"deleted {_store(ctx).delete(ids)}")


@cli.command()
@click.argument("id")
@click.pass_context
def history(ctx: click.Context, id: str) -> None:
    """A memory's timeline as JSON: its add, each update and its delete, with the state after each."""
    _echo_json(_store(ctx).history(id))


@cli.command()
@click.pass_context
def stats(ctx: click.Context) -> None:
    """Counts per modality and namespace, as JSON."""
    _echo_json(_store(ctx).stats())


@cli.command()
def plugins() -> None:
    """Installed plugins and the providers they register, as JSON."""
    from aios_memory.plugins import get_providers, plugin_info

    _echo_json({"plugins": plugin_info(), "providers": [p.info() for p in get_providers().values()]})


def _is_text(path: Path) -> bool:
    try:
        path.read_bytes()[:4096].decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return True


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cli(prog_name="aios-memory")
