"""The main job: fill the store with the bundled demo memories and show each way of recalling them."""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import click

from aios_memory.ingest_report import plural

DEMO_SOURCE = "aios-memory:demo"

QUERIES = [
    ("What should I cook for the user?", "assistant"),
    ("How does the user get to work?", "assistant"),
    ("how do databases survive a power cut?", "research"),
    ("what is the weather like on the trip?", "travel"),
]


def demo_memories() -> list[dict[str, Any]]:
    text = resources.files("aios_memory").joinpath("data/demo_memories.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


ALSA_SOUNDS = Path("/usr/share/sounds/alsa")  # Debian's alsa-utils: real voices saying "Front Left", ...


def demo_audio_files() -> list[Path]:
    """The spoken clips this machine has (none where alsa-utils is not installed)."""
    return (
        sorted(p for p in ALSA_SOUNDS.glob("*.wav") if p.name != "Noise.wav") if ALSA_SOUNDS.is_dir() else []
    )


def run_audio_demo(store: Any, files: list[Path], echo: Callable[[str], None] = print) -> None:
    """Audio memories: Whisper transcribes each clip; text queries find clips through their transcripts."""
    have = set(
        store.sql("SELECT source FROM audio_memories WHERE namespace = ?", ["sounds"])
        .column("source")
        .to_pylist()
    )
    new = [f for f in files if f.resolve().as_uri() not in have]
    if new:
        store.add_many(new, namespace="sounds")
        echo(f"\nadded {plural(len(new), 'spoken clip')} from {ALSA_SOUNDS} (Whisper transcribed them)")
    echo("\n== text -> audio, through Whisper transcripts ==")
    for query in ("rear left", "front center"):
        hit = store.search(query, k=1, modality="audio", namespace="sounds")[0]
        echo(
            f"? {query}\n  {hit.score:.3f}  {Path(hit.source).name}  transcript: {hit.extra['transcript']!r}"
        )
    echo("\n== audio -> audio, through Whisper encoder vectors ==")
    for hit in store.search(files[0], k=2, namespace="sounds"):
        echo(f"  {hit.score:.3f}  {Path(hit.source).name}")


def run_demo(store: Any, echo: Callable[[str], None] = print, reset: bool = False) -> None:
    existing = (
        store.sql("SELECT id FROM text_memories WHERE source = ?", [DEMO_SOURCE]).column("id").to_pylist()
    )
    if existing and reset:
        store.delete(existing)
        existing = []
    if not existing:
        rows = demo_memories()
        by_ns: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_ns.setdefault(r["namespace"], []).append(r)
        for ns, group in by_ns.items():
            store.add_many(
                [r["text"] for r in group],
                namespace=ns,
                metadata=[{"kind": r["kind"], "day": r["day"]} for r in group],
                sources=[DEMO_SOURCE] * len(group),
            )
        echo(f"added {len(rows)} demo memories to {store.path} (version {store.version})")
    else:
        echo(f"{store.path} already holds {len(existing)} demo memories (version {store.version})")

    echo("\n== semantic recall, per agent namespace ==")
    for query, ns in QUERIES:
        echo(f"\n? {query}   [namespace={ns}]")
        for m in store.search(query, k=2, namespace=ns):
            echo(f"  {m.score:.3f}  {m.content}")

    echo("\n== recall with a metadata filter (where, with a parameter) ==")
    echo("? plans for the trip, from day 2 on")
    for m in store.search(
        "plans for the trip",
        k=3,
        namespace="travel",
        where="CAST(json_extract(metadata, '$.day') AS INTEGER) >= ?",
        params=[2],
    ):
        echo(f"  {m.score:.3f}  {m.content}")

    echo("\n== SQL with a query embedded inside SQL ==")
    sql = (
        "SELECT namespace, content, array_cosine_similarity(embedding, embed_text(?)) AS score "
        "FROM text_memories ORDER BY score DESC LIMIT 3"
    )
    echo(f"  {sql}   -- ? = 'pets'")
    for row in store.sql(sql, ["pets"]).to_pylist():
        echo(f"  {row['score']:.3f}  [{row['namespace']}] {row['content']}")

    echo("\n== plain SQL: memories per namespace ==")
    for row in store.sql(
        "SELECT namespace, count(*) AS n FROM text_memories GROUP BY 1 ORDER BY 1"
    ).to_pylist():
        echo(f"  {row['namespace']:<10} {row['n']}")


# the line said before the demo installs a model that is not installed yet
DEMO_MODELS = {
    "text": "the text model (MiniLM, once: converts ~90 MB of weights)",
    "whisper": "the Whisper model (whisper-base, once: converts ~145 MB of weights)",
}


def store_line(ctx: click.Context, where: Path | str) -> str:
    """Where the demo writes, and which later commands will find that store."""
    shown = where.absolute() if isinstance(where, Path) else where
    source = ctx.find_root().get_parameter_source("store")
    if source is click.core.ParameterSource.COMMANDLINE:
        return f"store: {shown} (from --store; give later commands the same --store to use it)"
    if source is click.core.ParameterSource.ENVIRONMENT:
        return f"store: {shown} (from $AIOS_MEMORY_STORE; later commands use it while that is set)"
    return f"store: {shown} (the default store; later commands without --store use it too)"


def install_demo_model(name: str, echo: Callable[..., None] = click.echo) -> None:
    """Install ``name`` as ``models install`` does, saying so first when it is not installed yet (the
    first demo on a machine spends most of its minute here)."""
    from aios_memory.model_commands import _by_model_name, install_model

    if not _by_model_name(name).is_installed():
        echo(f"installing {DEMO_MODELS[name]}...", err=True)
    install_model(name)


@click.command()
@click.option("--reset", is_flag=True, help="Remove the demo text memories first and add them again.")
@click.option("--no-audio", is_flag=True, help="Skip the audio part (Whisper).")
@click.pass_context
def demo(ctx: click.Context, reset: bool, no_audio: bool) -> None:
    """The main job: build a store from bundled data and real audio, and run example queries."""
    from aios_memory.cli import _store
    from aios_memory.plugins import get_providers

    click.echo(store_line(ctx, ctx.obj["store"]))
    install_demo_model("text")
    store = _store(ctx, create=True)
    run_demo(store, echo=click.echo, reset=reset)
    files = [] if no_audio or "whisper-base" not in get_providers() else demo_audio_files()
    if files:
        install_demo_model("whisper")
        run_audio_demo(store, files, echo=click.echo)
    elif not no_audio:
        click.echo(
            "\n(audio part skipped: no spoken clips found; `apt-get install alsa-utils` provides them)"
        )
