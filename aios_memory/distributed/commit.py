"""Committing fragments that other processes wrote: one version for a whole job, or nothing. Imports no Ray.

Workers write fragments with ``Storage.write_fragment`` (immutable, uniquely named, invisible until a
manifest names them) and hand back their :class:`~aios_memory.storage.Fragment` records; the driver
commits them all in one ``Storage.commit``. The table entry is created or checked as every writer does
(:func:`aios_memory.rows.table_state`): a table built with another provider refuses the job.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aios_memory.errors import StoreError
from aios_memory.storage import Fragment, Manifest, Storage


@dataclass(frozen=True)
class Part:
    """One table's share of a job: the fragments workers wrote, and the providers that embedded them."""

    modality: str
    provider: str
    text_provider: str | None = None
    fragments: tuple[Fragment, ...] = field(default_factory=tuple)

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.fragments)


def commit_parts(
    location: str | os.PathLike[str],
    parts: Sequence[Part],
    *,
    storage_options: Mapping[str, Any] | None = None,
    operation: str | None = None,
) -> Manifest:
    """Commit every part's fragments in one new version (returned; with no rows at all, the newest
    version is returned and nothing is committed). Raises, having committed nothing, when a table holds
    another provider's rows (``ProviderMismatchError``) or a fragment's file is gone (``StoreError``:
    ``cleanup`` removed an orphan older than the retention period, or a worker wrote elsewhere)."""
    from aios_memory.compaction import maintain
    from aios_memory.plugins import get_provider
    from aios_memory.rows import table_state

    # an object store has nothing to create and nothing listed before its first version
    storage = Storage(location, storage_options=storage_options, create="://" in str(location))
    providers = {p.provider: get_provider(p.provider) for p in parts}
    models = {i: written_by(storage, p) for i, p in enumerate(parts) if p.fragments}
    texts = {p.text_provider: get_provider(p.text_provider) for p in parts if p.text_provider is not None}
    checked: set[str] = set()
    rows = sum(p.rows for p in parts)
    operation = operation or f"ingest {rows}"

    def build(m: Manifest) -> Manifest | None:
        changed = False
        for i, part in enumerate(parts):
            if not part.fragments:
                continue
            text = texts[part.text_provider] if part.text_provider is not None else None
            # the model the workers' files record (their weights), not this process's installed one
            state = table_state(m, part.modality, providers[part.provider], text, fingerprint=models[i])
            # under the writers' lock, which cleanup takes to delete: what exists now stays until committed
            missing = [
                rel
                for f in part.fragments
                for rel in f.files()
                if rel not in checked and not storage.backend.exists(rel)
            ]
            if missing:
                raise StoreError(
                    f"{len(missing)} file(s) the job wrote are not in store {storage.root} (first: {missing[0]}): "
                    "cleanup removed them (the job ran longer than the store's retention period) or a worker "
                    "wrote to another store; nothing was committed"
                )
            checked.update(rel for f in part.fragments for rel in f.files())
            state.fragments.extend(part.fragments)
            changed = True
        return m if changed else None

    with storage.writer_lock():  # a lock time-out raises here, before anything is committed
        committed = storage.commit(operation, build)
        if any(p.fragments for p in parts):  # the merge of small fragments every writer runs after a commit
            maintain(storage, committed, sorted({p.modality for p in parts if p.fragments}))
    return committed


def written_by(storage: Storage, part: Part) -> dict[str, Any]:
    """The fingerprint every fragment of ``part`` records in its schema (the workers' model: provider,
    precision, weights); fragments of different models are a ``ProviderMismatchError``."""
    import json

    import pyarrow.parquet as pq

    from aios_memory.errors import ProviderMismatchError
    from aios_memory.schema import META_KEY

    seen: dict[str, dict[str, Any]] = {}
    for f in part.fragments:
        try:
            with storage.backend.open_input(f.path) as fh:
                meta = json.loads(pq.read_schema(fh).metadata[META_KEY])
        except (OSError, KeyError, ValueError) as exc:
            raise StoreError(
                f"fragment {f.path} of the job cannot be read ({exc}); nothing was committed"
            ) from exc
        meta.pop("schema_version", None)
        seen.setdefault(json.dumps(meta, sort_keys=True), meta)
    if len(seen) > 1:
        raise ProviderMismatchError(
            f"the job's {part.modality} fragments were embedded by {len(seen)} different models "
            f"({'; '.join(sorted(seen))}); nothing was committed"
        )
    return next(iter(seen.values()))
