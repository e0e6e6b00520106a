"""Compaction: merging a table's small fragments, after commits (automatically) and on request.

Storage-level functions over a :class:`~aios_memory.storage.Storage`: they read fragments as Arrow and
commit the merged ones; they know nothing of models. The merge after a commit never fails the write that
triggered it (:func:`maintain`), and a damaged fragment is merged around, not through.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa

from aios_memory.errors import CommitConflictError, StoreCorruptError
from aios_memory.schema import HISTORY_DIR
from aios_memory.storage import Fragment, Manifest, Storage, plan_compaction

MAX_HISTORY_FRAGMENTS = 16  # change-log fragments merged into one by the maintenance after a commit


def maintain(storage: Storage, committed: Manifest, modalities: list[str]) -> None:
    """Maintenance after a commit, still under its hold of the lock: merge runs of small fragments.

    It never fails the write that triggered it: the write is committed and its ids are returned.
    A failure (a full disk, a damaged older fragment) is recorded for ``doctor`` and the merge is
    tried again after the next commit (the plan is made afresh from the newest manifest each time).
    """
    for mod in modalities:
        state = committed.tables.get(mod)
        small = state is not None and bool(plan_compaction(state.fragments))
        task = f"compact {mod}"
        if not small and len(committed.history) <= MAX_HISTORY_FRAGMENTS:
            storage.note_maintenance(task, None)  # an earlier failure is over (a stat when none)
            continue  # nothing to merge: no manifest read, no commit
        try:
            auto_compact(storage, mod)
        except CommitConflictError:
            continue  # another writer (another host) committed first: the next commit plans afresh
        except Exception as exc:  # noqa: BLE001 - the write is committed: nothing may undo that
            storage.note_maintenance(task, exc)
        else:
            storage.note_maintenance(task, None)


def auto_compact(storage: Storage, modality: str) -> None:
    """Merge runs of small fragments once a table holds too many (``storage.plan_compaction``), in a
    commit of its own: many single adds would otherwise leave one tiny file per memory to open."""

    damaged: list[StoreCorruptError] = []

    def build(m: Manifest) -> Manifest | None:
        damaged.clear()
        state = m.tables.get(modality)
        plan = plan_compaction(state.fragments) if state is not None else []
        changed = False
        for group in plan:  # the merged fragment takes the place of the group's first readable one
            assert state is not None
            readable, tables = [], []
            for f in group:  # a damaged fragment stays as it is (doctor names it); the rest merge
                try:
                    tables.append(read_fragment(storage, f))
                    readable.append(f)
                except StoreCorruptError as exc:
                    damaged.append(exc)
            if len(readable) < 2:
                continue
            merged = storage.write_fragment(modality, pa.concat_tables(tables))
            gone = {f.path for f in readable}
            state.fragments = [
                merged if f.path == readable[0].path else f
                for f in state.fragments
                if f.path not in gone - {readable[0].path}
            ]
            changed = True
        if len(m.history) > MAX_HISTORY_FRAGMENTS:  # the change log of many small updates/deletes
            m.history = [storage.write_fragment(HISTORY_DIR, _concat(storage, m.history))]
            changed = True
        return m if changed else None

    storage.commit(f"compact {modality}", build)
    if damaged:  # merged around it; recorded so that doctor keeps saying so
        raise damaged[0]


def _concat(storage: Storage, fragments: list[Fragment]) -> pa.Table:
    return pa.concat_tables([read_fragment(storage, f) for f in fragments])


def compact_all(storage: Storage, modality: str | None = None) -> dict[str, int]:
    """``MemoryStore.compact``: merge each table's fragments (and the change log) into one, in one commit."""
    merged: dict[str, int] = {}

    def build(m: Manifest) -> Manifest | None:
        merged.clear()  # a retried attempt starts over
        for mod, state in m.tables.items():
            if (modality is None or mod == modality) and len(state.fragments) > 1:
                table = _concat(storage, state.fragments)
                merged[mod] = len(state.fragments)
                state.fragments = [storage.write_fragment(mod, table)] if table.num_rows else []
        if modality is None and len(m.history) > 1:
            table = _concat(storage, m.history)
            merged[HISTORY_DIR] = len(m.history)
            m.history = [storage.write_fragment(HISTORY_DIR, table)]
        return m if merged else None

    storage.commit("compact", build)
    for mod in merged:  # a full merge succeeded: an earlier failed automatic one is over
        storage.note_maintenance(f"compact {mod}", None)
    return merged


def read_fragment(storage: Storage, frag: Fragment, columns: list[str] | None = None) -> pa.Table:
    try:
        return storage.read_table(frag.path, columns)
    except (FileNotFoundError, pa.ArrowException, OSError) as exc:
        raise StoreCorruptError(
            f"fragment {frag.path} of {storage.root} is missing or unreadable ({exc})"
        ) from exc


def has_ids(storage: Storage, frag: Fragment, ids: set[str], namespaces: Iterable[str] | None) -> bool:
    """Whether ``frag`` holds any of ``ids`` (in ``namespaces``, when a scope limits them), reading only
    its id and namespace columns (not the media): a fragment with none of them is left as it is."""
    import pyarrow.compute as pc

    t = read_fragment(storage, frag, columns=["id", "namespace"])
    hit = pc.is_in(t.column("id"), pa.array(sorted(ids), pa.string()))
    if namespaces is not None:  # another scope's memories are not there for this handle
        hit = pc.and_(hit, pc.is_in(t.column("namespace"), pa.array(sorted(namespaces), pa.string())))
    return bool(pc.any(hit).as_py())
