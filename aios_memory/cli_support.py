"""What the command modules share: opening the store as a command should, parsing and printing values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from aios_memory.errors import InvalidInputError

CELL = 60  # characters of a value in the sql table (the whole value: --json)


def _store(ctx: click.Context, *, create: bool = False, **kw: Any) -> Any:
    """The store the command works on. Only writing commands (``create``) make a new one, and say so:
    a mistyped ``--store`` given to a reading command is an error naming the path."""
    from aios_memory.store import MemoryStore

    where = ctx.obj["store"]
    if create and isinstance(where, Path) and where.is_dir() and not is_store(where) and any(where.iterdir()):
        raise click.ClickException(  # a typo for a folder of one's own files must not become a store
            f"{where.absolute()} holds files but no store; a store needs a new or empty directory of its own"
        )
    store = MemoryStore(ctx.obj["store"], storage_options=ctx.obj.get("storage_options"), create=create, **kw)
    if store._storage.created:
        click.echo(f"created a new store at {store.path}", err=True)
    return store


class _Location(click.ParamType):
    """A store directory, or an object-storage URI (``s3://bucket/prefix``) kept as it is."""

    name = "location"

    def convert(self, value: Any, param: Any, ctx: Any) -> Path | str:
        if isinstance(value, str) and value.startswith("s3://"):
            return value
        return click.Path(file_okay=False, path_type=Path).convert(value, param, ctx)


def _storage_options(values: tuple[str, ...]) -> dict[str, Any] | None:
    """``--storage-option KEY=VALUE`` pairs (values parsed as JSON when they parse: true, 5)."""
    out: dict[str, Any] = {}
    for pair in values:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--storage-option")
        out[key] = _param(value)
    return out or None


def _param(value: str) -> Any:
    """A --param value: JSON when it parses (numbers, booleans, lists), else the string itself."""
    try:
        return json.loads(value)
    except ValueError:
        return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def _echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=_jsonable, ensure_ascii=False))


def metadata_object(text: str | None) -> dict[str, Any] | None:
    """``--metadata``: a JSON object (anything else is refused, naming what it is)."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidInputError(f"--metadata is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        kind = {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
            type(value), "a number"
        )
        raise InvalidInputError(f'--metadata must be a JSON object like \'{{"kind": "fact"}}\', got {kind}')
    return value


def cell(value: Any, width: int = CELL) -> str:
    """A value on one line of a table: NULL for none, newlines and pipes escaped, cut with an ellipsis."""
    if value is None:
        return "NULL"
    text = str(_jsonable(value)).replace("\\", "\\\\").replace("\n", "\\n").replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def file_list(paths: tuple[Path, ...], left_out: list[Path] | None = None) -> list[Path]:
    """The files to import: given files, and folders' files recursively, without hidden files and
    folders (``.git``, ``.DS_Store``) and without any store's own files (a folder holding a store)."""
    out: list[Path] = []
    for p in paths:
        if not p.is_dir():
            out.append(p)
            continue
        for q in sorted(p.rglob("*")):
            rel = q.relative_to(p).parts
            if not q.is_file():
                continue
            if any(part.startswith(".") for part in rel) or any(
                is_store(p.joinpath(*rel[:i])) for i in range(len(rel))
            ):
                if left_out is not None:
                    left_out.append(q)
                continue
            out.append(q)
    return out


def is_store(path: Path) -> bool:
    from aios_memory.storage.manifest import VERSIONS

    return (path / VERSIONS).is_dir() and (path / "data").is_dir()
