"""Upserts: store content under the caller's id, replacing the memory that holds it, in one commit.

``upsert_many`` embeds before taking the writers' lock (the model is slow); inside the commit (retried on
the newest manifest, like every write) it finds the rows holding the ids, rewrites their fragments without
them, logs each replaced memory's previous state as an ``update`` (a memory's history stays whole), and
appends the new rows. Two writers upserting one id therefore leave exactly one memory with it: the
later commit sees and replaces the earlier one's row. Exact dedupe never merges an upserted item into
another id: every item is stored under its own id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa

from aios_memory.compaction import has_ids, maintain
from aios_memory.errors import AccessDeniedError, InvalidInputError
from aios_memory.memory import check_namespace, check_utf8, item_list, now_utc, per_item
from aios_memory.modality import prepare_many
from aios_memory.provider import EmbeddingProvider
from aios_memory.rows import build_rows, embed_rows, table_state
from aios_memory.scope import Scope
from aios_memory.storage import Manifest, Storage
from aios_memory.storage.sidecars import row_digests

EMBED_BATCH = 64


def check_ids(ids: Any, n: int) -> list[str]:
    """``ids`` as a list of ``n`` distinct, non-empty, UTF-8 strings, or an ``InvalidInputError``."""
    if isinstance(ids, (str, bytes, bytearray)):
        raise InvalidInputError("upsert_many takes a list of ids, not a single string")
    try:
        out = list(ids)
    except TypeError:
        raise InvalidInputError(f"ids must be a list of strings, got {type(ids).__name__}") from None
    for id_ in out:
        if not isinstance(id_, str) or not id_:
            raise InvalidInputError(f"memory ids are non-empty strings, got {id_!r}")
        check_utf8(id_, "a memory id")
    if len(out) != n:
        raise InvalidInputError(f"got {len(out)} ids for {n} items; nothing was changed")
    seen: set[str] = set()
    for id_ in out:
        if id_ in seen:
            raise InvalidInputError(f"id {id_!r} is given twice in one upsert; nothing was changed")
        seen.add(id_)
    return out


class UpsertMixin:
    """Mixed into ``WritesMixin``; ``MemoryStore`` provides the attributes annotated here."""

    _scope: Scope
    _storage: Storage
    _manifest: Callable[[], Manifest]
    _provider_in: Callable[[Manifest, str], EmbeddingProvider]
    _text_provider_in: Callable[[Manifest, str], EmbeddingProvider | None]
    _read_fragment: Callable[..., pa.Table]
    _log_changes: Callable[[Manifest, str, list[tuple[str, dict[str, Any]]]], None]

    def upsert(
        self,
        id: str,
        content: Any,
        *,
        modality: str | None = None,
        namespace: str = "default",
        metadata: Mapping[str, Any] | None = None,
        source: str | None = None,
    ) -> str:
        """Store ``content`` as the memory ``id``: it replaces the memory holding that id (its history
        logs an ``update``), or is added under that id. One commit; returns ``id``."""
        if isinstance(id, (list, tuple)):
            raise InvalidInputError("upsert takes one id; use upsert_many for several")
        return self.upsert_many([id], [content], modality=modality, namespace=namespace,
                                metadata=[metadata], sources=[source])[0]  # fmt: skip

    def upsert_many(
        self,
        ids: Iterable[str],
        items: Iterable[Any],
        *,
        modality: str | None = None,
        namespace: str = "default",
        metadata: Mapping[str, Any] | Sequence[Mapping[str, Any] | None] | None = None,
        sources: Sequence[str | None] | None = None,
    ) -> list[str]:
        """Replace-or-insert many memories in one atomic commit under the writers' lock; returns ``ids``.

        After it, each id is held by exactly one memory: the new content, vector and metadata, in
        ``namespace`` (a replaced memory keeps its ``created_at`` and gets ``updated_at``). Ids are
        non-empty strings, distinct within one call; an id held by a memory this handle cannot see is
        an ``AccessDeniedError``. Bad input changes nothing. Each item must be one row (audio longer
        than one window cannot be stored under one id). Exact dedupe does not apply: every item is stored.
        """
        contents = item_list(items)
        namespace = check_namespace(namespace)
        self._scope.check_write(namespace)
        wanted = check_ids(ids, len(contents))
        metas, srcs = per_item(metadata, sources, len(contents))
        if not contents:
            return []
        prepared = prepare_many(contents, modality, srcs)
        m = self._manifest()
        tables: dict[str, pa.Table] = {}
        providers: dict[str, EmbeddingProvider] = {}
        texts: dict[str, EmbeddingProvider | None] = {}
        now = now_utc()
        by_modality: dict[str, list[int]] = {}
        for i, it in enumerate(prepared):
            by_modality.setdefault(it.modality, []).append(i)
        for mod, idx in by_modality.items():  # embedded before the lock is taken
            maker = providers[mod] = self._provider_in(m, mod)
            texts[mod] = self._text_provider_in(m, mod)
            rows = []
            for i in idx:
                pieces = maker.expand(prepared[i].payload)
                if len(pieces) != 1:
                    raise InvalidInputError(
                        f"item {i} becomes {len(pieces)} rows (e.g. audio longer than one window) and "
                        "cannot be stored under one id; nothing was changed"
                    )
                rows.append((i, *pieces[0]))
            vecs, columns = embed_rows(maker, rows, EMBED_BATCH)
            table = build_rows(
                mod, maker, texts[mod], [prepared[i] for i in idx], [metas[i] for i in idx],
                namespace, now, [vecs], columns,
            )  # fmt: skip
            tables[mod] = table.set_column(0, "id", pa.array([wanted[i] for i in idx], pa.string()))

        def build(base: Manifest) -> Manifest:
            old = self._take_out(base, set(wanted))
            if old:
                self._log_changes(base, "update", [(mod, dict(row)) for mod, row in old.values()])
            again = self._logged(base, set(wanted) - set(old))  # deleted earlier, added again now
            if again:  # logged (state before: none), so that history() shows the delete, then this add
                mods = {wanted[i]: prepared[i].modality for i in range(len(wanted))}
                none = {"namespace": namespace, "created_at": now, "metadata": "null"}  # reads as None
                rows = [(mods[i], {"id": i, **none}) for i in again]
                self._log_changes(base, "add", rows)
            for mod, table in tables.items():
                state = table_state(base, mod, providers[mod], texts[mod])
                if old:  # a replaced memory keeps when it was created; it is updated now
                    got = [old.get(i) for i in table.column("id").to_pylist()]
                    created = [r[1]["created_at"] if r else now for r in got]
                    updated = [now if r else None for r in got]
                    for name, values in (("created_at", created), ("updated_at", updated)):
                        pos = table.schema.get_field_index(name)
                        table = table.set_column(pos, name, pa.array(values, table.schema.field(name).type))
                state.fragments.append(self._storage.write_fragment(mod, table, row_digests(table)))
            return base

        with self._storage.writer_lock():
            try:
                committed = self._storage.commit(f"upsert {len(wanted)}", build)
            except Refused as exc:
                raise AccessDeniedError(str(exc)) from None
            maintain(self._storage, committed, sorted(committed.tables))
        return wanted

    def _logged(self, m: Manifest, ids: set[str]) -> list[str]:
        """Those of ``ids`` that the change log of ``m`` names (memories deleted before), sorted."""
        import pyarrow.compute as pc

        if not ids or not m.history:
            return []
        wanted, found = pa.array(sorted(ids), pa.string()), set()
        for frag in m.history:
            col = self._read_fragment(frag, ["memory_id"]).column("memory_id")
            found.update(pc.filter(col, pc.is_in(col, wanted)).to_pylist())
        return sorted(found)

    def _take_out(self, m: Manifest, wanted: set[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        """Inside a commit: rewrite the fragments of ``m`` holding ``wanted`` ids without those rows;
        ``{id: (modality, row)}`` of the rows taken out. A row this handle's scope cannot see is an
        ``Refused`` (raised before any file is written)."""
        import pyarrow.compute as pc

        out: dict[str, tuple[str, dict[str, Any]]] = {}
        ids = pa.array(sorted(wanted), pa.string())
        hits: list[tuple[str, int, pa.Table, Any]] = []  # checked first: a refusal leaves no file behind
        for mod, state in m.tables.items():
            for pos, frag in enumerate(state.fragments):
                if not has_ids(self._storage, frag, wanted, None):  # every namespace: ids are store-wide
                    continue
                table = self._read_fragment(frag)
                hit = pc.is_in(table.column("id"), ids)
                for row in table.filter(hit).to_pylist():
                    if not self._scope.sees(row["namespace"]):
                        raise Refused(
                            f"{self._scope._who()}may not replace memory {row['id']!r}: another "
                            "namespace holds that id; nothing was changed"
                        )
                    out[row["id"]] = (mod, row)
                hits.append((mod, pos, table, hit))
        for mod, pos, table, hit in reversed(hits):  # from the end: positions stay valid
            rest = table.filter(pc.invert(hit))
            frags = m.tables[mod].fragments
            if rest.num_rows:
                frags[pos] = self._storage.write_fragment(mod, rest)
            else:
                del frags[pos]
        return out


class Refused(Exception):
    """Raised inside a commit's build (an ``AccessDeniedError`` is an ``OSError``, which the commit
    reports as a write failure); re-raised as ``AccessDeniedError`` once the commit gave up."""
