"""The inputs of a distributed job: files listed as ``aios-memory import`` lists them, and each file's
modality from its first bytes (the rest is read where it is embedded). Imports no Ray."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from aios_memory.errors import AiosMemoryError, InvalidInputError
from aios_memory.memory import metadata_json
from aios_memory.modality import sniff
from aios_memory.provider import MODALITIES


def list_files(sources: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files under each folder (recursively, sorted) and each file given, as ``aios-memory import`` does."""
    files: list[Path] = []
    for source in sources:
        p = Path(source)
        if not p.exists():
            raise InvalidInputError(f"no such file or folder: {p}")
        files.extend(sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p])
    return files


def classify(path: Path) -> str:
    """``image`` or ``audio`` from a file's first bytes, else ``text`` (whether it is UTF-8 text is found
    where it is read). Like the import, a FIFO or device is refused from ``stat``, never opened."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise InvalidInputError(f"{path} is not a regular file")
    with open(path, "rb") as f:
        head = f.read(64)
    try:
        return sniff(head)[0]
    except AiosMemoryError:
        return "text"


@dataclass
class Plan:
    """A job's inputs by modality: rows for ``ray.data.from_items`` and the files refused up front."""

    files: list[Path]
    items: dict[str, list[dict[str, object]]] = field(default_factory=dict)
    errors: list[tuple[int, str, BaseException]] = field(default_factory=list)  # (index, source, error)


def plan_files(files: list[Path]) -> Plan:
    """Each file as an input row of its modality: ``path`` (absolute), ``metadata`` (``{"filename": name}``,
    as the import stores it) and ``index`` (its position in ``files``)."""
    plan = Plan(files)
    for index, path in enumerate(files):
        absolute = path.absolute()
        try:
            modality = classify(absolute)
        except (OSError, AiosMemoryError) as exc:
            plan.errors.append((index, absolute.resolve().as_uri(), exc))
            continue
        plan.items.setdefault(modality, []).append(
            {"path": str(absolute), "metadata": metadata_json({"filename": path.name}), "index": index}
        )
    plan.items = {m: plan.items[m] for m in MODALITIES if m in plan.items}
    return plan
