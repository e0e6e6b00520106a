"""``aios-memory ingest``: import files on Ray Data (one version per job) or in this process.

Registered lazily by ``aios_memory.cli``: listing the commands or asking for help imports no Ray.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from aios_memory.cli import _storage_options


class _Source(click.ParamType):
    """A file or folder that exists, or an ``s3://bucket/prefix`` URI kept as it is."""

    name = "source"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> Path | str:
        if isinstance(value, str) and value.startswith(("s3://", "s3a://")):
            return value
        return click.Path(exists=True, path_type=Path).convert(value, param, ctx)


@click.command()
@click.argument("paths", nargs=-1, required=True, type=_Source())
@click.option(
    "--engine",
    type=click.Choice(["ray", "local"]),
    default="ray",
    show_default=True,
    help="ray: embed on a Ray cluster's actors, commit once; local: the single-process `import`.",
)
@click.option(
    "--address",
    default=None,
    metavar="ADDR",
    help="Ray cluster to run on (default: $RAY_ADDRESS, else a local Ray for this command).",
)
@click.option("--actors", type=click.IntRange(min=1), default=1, show_default=True, help="Embedding actors.")
@click.option(
    "--actor-cpus",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="CPUs each actor reserves (its model's threads).",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--namespace", "-n", default="default", show_default=True)
@click.option(
    "--commit-every", default=1000, show_default=True, help="--engine local: files per atomic commit."
)
@click.option(
    "--source-option",
    "source_option",
    multiple=True,
    metavar="KEY=VALUE",
    help="--storage-option for s3:// PATHS (default: the store's --storage-option values). Repeatable.",
)
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.pass_context
def ingest(
    ctx: click.Context,
    paths: tuple[Path | str, ...],
    engine: str,
    address: str | None,
    actors: int,
    actor_cpus: float,
    batch_size: int,
    namespace: str,
    commit_every: int,
    source_option: tuple[str, ...],
    quiet: bool,
) -> None:
    """Import files and folders on a Ray cluster, as one version (or --engine local: `import`).

    Images, audio and UTF-8 text files, recursively, as `import` finds them. With --engine ray (needs
    `pip install "aios-memory[ray]"`), a PATH may also be s3://bucket/prefix: the objects under it, which
    each actor reads itself (reached with --source-option, else --storage-option, else AWS_* variables).
    Every node must see local PATHS and the store at the same paths, and have the same plugins and model
    weights; the whole job is one new version, committed when every file has been embedded and written,
    or nothing at all.
    """
    if engine == "local":
        if any(isinstance(p, str) for p in paths):
            raise click.UsageError("s3:// PATHS need --engine ray")
        from aios_memory.cli import import_

        ctx.invoke(import_, paths=paths, namespace=namespace, commit_every=commit_every)
        return
    # not a terminal: Ray Data logs its progress as text; once a minute instead of every 10 s (before
    # Ray Data is imported, which reads it; a value the user set wins)
    os.environ.setdefault("RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL", "60")
    try:
        from aios_memory.distributed.ray_data import ingest_ray
    except ImportError as exc:
        raise click.ClickException(
            f'--engine ray needs Ray Data: pip install "aios-memory[ray]" ({exc})'
        ) from None
    report = ingest_ray(
        ctx.obj["store"],
        paths,
        storage_options=ctx.obj.get("storage_options"),
        source_options=_storage_options(source_option),
        address=address,
        actors=actors,
        actor_cpus=actor_cpus,
        batch_size=batch_size,
        namespace=namespace,
        progress=not quiet,
    )
    click.echo(
        f"ingested {report['added']} files as {report['rows']} memories into {report['store']} "
        f"(version {report['version']}, {report['actors']} actor(s), {report['seconds']:.1f} s)"
        + (f"; skipped {len(report['errors'])} unsupported files" if report["errors"] else "")
    )
    for e in report["errors"]:
        click.echo(f"  skipped: {e['source']}: {e['error']}", err=True)
