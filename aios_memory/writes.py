"""The write path of ``MemoryStore``: item → provider → Arrow batch → one atomic commit.

Every write derives the next manifest from the newest one under the writers' lock (see ``storage``);
fragments are never modified: a delete or update writes the affected fragment anew without (or with
a changed copy of) the row.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from aios_memory import dedupe as dup
from aios_memory.compaction import compact_all, has_ids, maintain, read_fragment
from aios_memory.errors import InvalidInputError, MemoryNotFoundError, ProviderMismatchError
from aios_memory.given import check_table, single_modality, unit_rows
from aios_memory.history import HistoryMixin
from aios_memory.memory import (
    Memory,
    check_namespace,
    check_utf8,
    item_list,
    memory_from_row,
    metadata_json,
    now_utc,
    per_item,
)
from aios_memory.modality import prepare, prepare_many
from aios_memory.plugins import resolve_provider
from aios_memory.provider import EmbeddingProvider
from aios_memory.rows import build_rows, embed_rows, table_state, text_vectors
from aios_memory.schema import TEXT_COLUMN
from aios_memory.scope import Scope
from aios_memory.storage import Fragment, Manifest, Storage
from aios_memory.storage.sidecars import digest_rows, row_digests
from aios_memory.upsert import UpsertMixin

EMBED_BATCH = 64
REUSE_SECONDS = 1.0  # a retried append reuses its fragment if written this recently


class WritesMixin(UpsertMixin, HistoryMixin):
    """Mixed into ``MemoryStore``, which provides the attributes annotated here (no stubs)."""

    _scope: Scope
    _storage: Storage
    _pinned: int | None
    path: Any
    _manifest: Callable[[], Manifest]
    provider_for: Callable[[str], EmbeddingProvider]
    _provider_in: Callable[[Manifest, str], EmbeddingProvider]
    _chosen: dict[str, str]
    retention: float  # (VersionsMixin)
    _text_provider_in: Callable[[Manifest, str], EmbeddingProvider | None]
    get: Callable[[str], Memory]
    _nearest: Callable[..., tuple[list[str | None], Any]]  # over the memory-mapped vector sidecars

    def add(
        self,
        content: Any,
        *,
        modality: str | None = None,
        namespace: str = "default",
        metadata: Mapping[str, Any] | None = None,
        source: str | None = None,
        dedupe: float | bool | str | None = None,
    ) -> str:
        """Store one memory; returns its id (with ``dedupe``, possibly the id of an existing near-identical one)."""
        return self.add_many(
            [content],
            modality=modality,
            namespace=namespace,
            metadata=[metadata],
            sources=[source],
            dedupe=dedupe,
        )[0]

    def add_many(
        self,
        items: Iterable[Any],
        *,
        modality: str | None = None,
        namespace: str = "default",
        metadata: Mapping[str, Any] | Sequence[Mapping[str, Any] | None] | None = None,
        sources: Sequence[str | None] | None = None,
        progress: Callable[[int], None] | None = None,
        dedupe: float | bool | str | None = None,
        embeddings: Any = None,
        provider: str | None = None,
    ) -> list[str]:
        """Store many memories in one atomic commit: all become visible together, or none do.

        ``metadata`` is one dict for every item or a list with one per item. ``progress(n)`` is called
        as each batch of ``n`` items has been embedded.

        ``dedupe`` (default: the store's setting, ``"exact"`` unless chosen otherwise) decides what
        happens to a memory the store holds (see :mod:`aios_memory.dedupe`): ``"exact"`` stores an item
        whose content equals a stored memory's of the same modality and namespace (or an earlier item's)
        once and returns that memory's id; a cosine threshold (``True``: 0.97) also merges near
        duplicates (never the windows of a long recording); ``False`` stores every item.

        ``embeddings`` (an ``(n, dim)`` array, one row per item, made elsewhere) are stored instead of
        running a model, checked against the table's dimension and provider (``provider``: the name of
        the provider that made them, checked against the table's); see :mod:`aios_memory.given`.
        """
        threshold = self._dedupe_threshold(dedupe)
        contents = item_list(items)
        namespace = check_namespace(namespace)
        self._scope.check_write(namespace)
        n = len(contents)
        metas, srcs = per_item(metadata, sources, n)
        if n == 0:
            return []
        prepared = prepare_many(contents, modality, srcs)
        given = None if embeddings is None else (unit_rows(embeddings, n), single_modality(prepared))
        if given is None and provider is not None:
            raise InvalidInputError("provider= names the maker of given embeddings; pass embeddings= too")
        m = self._manifest()  # one read for every provider lookup; the commit reads the newest again
        stored, repeats = {}, {}  # items held already (their ids) or repeating an earlier item: not embedded
        digests: list[bytes] | None = None
        if threshold is not None:  # held in the newest version (not a pinned one)
            newest = m if self._pinned is None else self._storage.read_manifest()
            digests = dup.item_digests(prepared)  # once: the dedupe lookup, the commit and the sidecar
            stored, repeats = dup.known_items(self._storage, newest, prepared, namespace, digests)
        by_modality: dict[str, list[int]] = {}
        for i, item in enumerate(prepared):
            if i not in stored and i not in repeats:
                by_modality.setdefault(item.modality, []).append(i)
        if progress is not None and len(stored) + len(repeats):
            progress(len(stored) + len(repeats))
        tables: dict[str, pa.Table] = {}
        providers: dict[str, EmbeddingProvider] = {}
        text_providers: dict[str, EmbeddingProvider | None] = {}
        row_items: dict[str, list[int]] = {}  # input index of each row, per modality
        now = now_utc()
        for mod, idx in by_modality.items():
            if given is not None:  # vectors made elsewhere: one row per item, checked against the table
                chosen = provider or self._chosen.get(mod)
                maker = providers[mod] = resolve_provider(m.tables.get(mod), mod, chosen, self.path)
                if provider and self._chosen.get(mod) not in (None, provider):
                    raise ProviderMismatchError(
                        f"this handle embeds {mod} with {self._chosen[mod]!r}, not {provider!r}"
                    )
                check_table(maker, given[0], mod, provider)
                text_providers[mod], row_items[mod] = None, idx
                vecs = given[0] if len(idx) == n else given[0][np.asarray(idx)]  # no copy when all are new
                columns = [{}] * len(idx)  # read only: no per-row dict
                if progress is not None:
                    progress(len(idx))
            else:
                maker = providers[mod] = self._provider_in(m, mod)
                text_providers[mod] = self._text_provider_in(m, mod)
                # one item may become several rows (long audio: one per 30 s window)
                rows = [(i, pay, cols) for i in idx for pay, cols in maker.expand(prepared[i].payload)]
                vecs, columns = embed_rows(maker, rows, EMBED_BATCH, progress)  # length-sorted batches
                row_items[mod] = [i for i, _, _ in rows]
            at = row_items[mod]
            tables[mod] = build_rows(
                mod, maker, text_providers[mod], [prepared[i] for i in at], [metas[i] for i in at],
                namespace, now, [vecs], columns,
            )  # fmt: skip

        ids = {i: list(old) for i, old in stored.items()}
        if tables:
            check = dup.held_check(self._storage, prepared, stored, namespace) if stored else None
            args = (tables, providers, text_providers, row_items, namespace, threshold, check, digests)
            try:
                pairs = self._commit_tables(f"add {n}", *args)
            except dup.HeldChanged:  # a memory found before embedding was deleted meanwhile: start again
                kw = {"metadata": metadata, "sources": sources, "progress": progress, "dedupe": dedupe,
                      "embeddings": embeddings, "provider": provider}  # fmt: skip
                kw["progress"] = None  # every item was reported once already
                return self.add_many(contents, modality=modality, namespace=namespace, **kw)
            for i, id_ in pairs:
                ids.setdefault(i, []).append(id_)
        return [id_ for i in range(n) for id_ in ids[repeats.get(i, i)]]

    def _commit_tables(
        self,
        operation: str,
        tables: dict[str, pa.Table],
        providers: dict[str, EmbeddingProvider],
        text_providers: dict[str, EmbeddingProvider | None],
        row_items: dict[str, list[int]],
        namespace: str,
        dedupe: float | None = None,
        check: Callable[[Manifest], None] | None = None,
        item_digests: list[bytes] | None = None,
    ) -> list[tuple[int, str]]:
        """Commit embedded rows atomically; (input index, id) per row, in input order (an item split
        into windows: its rows in order).

        ``row_items[mod][r]`` is the input index of row ``r`` of ``tables[mod]``. With ``dedupe`` (see
        :mod:`aios_memory.dedupe`), the rows of items the store holds or this batch repeats, and with a
        threshold near-identical ones, are dropped inside the commit (under the writers' lock, so two
        writers cannot both add the same memory) and map to the surviving ids.
        """
        same_as: dict[tuple[str, int], str] = {}  # (modality, row) -> existing id
        stored: dict[int, list[str]] = {}  # item -> ids of the stored copy
        repeats: dict[int, int] = {}  # item -> the earlier item of this batch it repeats
        digests = {  # each row's content digest: its item's (one computation serves dedupe and sidecar)
            mod: row_digests(t) if item_digests is None else digest_rows(item_digests, row_items[mod])
            for mod, t in tables.items()
        }
        # A retried attempt appends the files it wrote if they are fresh and hold the same rows: a cleanup
        # with a short retention on another host may take older files for a dead writer's orphans.
        written: dict[str, tuple[Fragment, float, list[int]]] = {}

        def build(m: Manifest) -> Manifest | None:
            if check is not None:
                check(m)
            for found in (same_as, stored, repeats):
                found.clear()  # a retried attempt starts over
            changed = False
            for mod, table in tables.items():
                state = table_state(m, mod, providers[mod], text_providers[mod])
                kept = list(range(table.num_rows))
                if dedupe is not None:
                    kept = dup.rows_to_write(
                        self._storage, self._nearest, m, mod, table, row_items[mod], namespace, dedupe,
                        digests[mod], (stored, repeats, same_as),
                    )  # fmt: skip
                if kept:
                    last = written.get(mod)
                    if last is None or last[2] != kept or time.monotonic() - last[1] >= REUSE_SECONDS:
                        part, dig = table, digests[mod]
                        if len(kept) < table.num_rows:
                            part, dig = table.take(pa.array(kept)), dig[kept]
                        frag = self._storage.write_fragment(mod, part, dig)
                        written[mod] = (frag, time.monotonic(), kept)
                    state.fragments.append(written[mod][0])
                    changed = True
            return m if changed else None

        with self._storage.writer_lock():  # a lock time-out raises here, before anything is written
            committed = self._storage.commit(operation, build)
            maintain(self._storage, committed, list(tables))
        return dup.ids_in_order(tables, row_items, (stored, repeats, same_as))

    # --- deduplication -----------------------------------------------------------------------------
    def _dedupe_threshold(self, dedupe: float | bool | str | None) -> float | None:
        return dup.policy(dedupe, getattr(self, "_dedupe", dup.EXACT))

    def _text_provider_for(self, modality: str) -> EmbeddingProvider | None:
        """The provider that embeds ``modality``'s derived text column (audio transcripts), if any."""
        return self._text_provider_in(self._manifest(), modality)

    def delete(self, ids: str | Iterable[str], *, missing_ok: bool = False) -> int:
        """Delete memories by id in one commit; returns how many were deleted. Unknown ids raise
        ``MemoryNotFoundError`` and delete nothing, unless ``missing_ok`` (then they are skipped: deleting
        twice is the same as once). Memories outside the handle's scope count as unknown."""
        self._scope.check_write()
        if isinstance(ids, str):
            ids = [ids]
        try:
            wanted = set(ids)
        except TypeError:
            raise InvalidInputError(
                f"ids must be a string or an iterable of strings, got {type(ids).__name__}"
            ) from None
        if not all(isinstance(i, str) for i in wanted):
            raise InvalidInputError("memory ids are strings")
        for i in wanted:
            check_utf8(i, "a memory id")
        if not wanted:
            return 0

        count = [0]

        def build(m: Manifest) -> Manifest | None:
            import pyarrow.compute as pc  # not on the import path of a cold add

            found: set[str] = set()
            gone: list[tuple[str, dict[str, Any]]] = []
            for mod, state in m.tables.items():
                kept: list[Fragment] = []
                for frag in state.fragments:
                    if not has_ids(self._storage, frag, wanted, self._scope.namespaces):
                        kept.append(frag)
                        continue
                    table = self._read_fragment(frag)
                    hit = pc.is_in(table.column("id"), pa.array(sorted(wanted), pa.string()))
                    if self._scope.namespaces is not None:  # others' memories are not there for this handle
                        mine = pa.array(sorted(self._scope.namespaces), pa.string())
                        hit = pc.and_(hit, pc.is_in(table.column("namespace"), mine))
                    found.update(pc.filter(table.column("id"), hit).to_pylist())
                    gone.extend((mod, row) for row in table.filter(hit).to_pylist())
                    rest = table.filter(pc.invert(hit))
                    if rest.num_rows:
                        kept.append(self._storage.write_fragment(mod, rest))
                state.fragments = kept
            missing = wanted - found
            if missing and not missing_ok:
                raise MemoryNotFoundError(
                    f"no memory with id {sorted(missing)[0]!r}"
                    + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                    + "; nothing was deleted"
                )
            count[0] = len(found)
            if not found:
                return None  # nothing to delete (missing_ok): no new version
            self._log_changes(m, "delete", gone)
            return m

        with self._storage.writer_lock():
            committed = self._storage.commit(f"delete {len(wanted)}", build)
            maintain(self._storage, committed, sorted(committed.tables))
        return count[0]

    def update(self, id: str, content: Any = None, *, metadata: Mapping[str, Any] | None = None) -> Memory:
        """Replace a memory's content (re-embedding it) and/or its metadata, keeping its id and namespace."""
        if content is None and metadata is None:
            raise InvalidInputError("update needs new content, new metadata, or both")
        self._scope.check_write()
        current = self.get(id)  # a memory outside the scope is not found
        item = prepare(content, current.modality) if content is not None else None
        meta = metadata_json(metadata) if metadata is not None else None
        provider = self.provider_for(current.modality)
        vector, columns, text_vec = None, {}, None
        if item is not None:
            pieces = provider.expand(item.payload)
            if len(pieces) != 1:
                raise InvalidInputError(
                    f"the new content becomes {len(pieces)} rows (e.g. audio longer than one window); "
                    "delete the memory and add the content instead"
                )
            payload, columns = pieces[0]
            vecs, cols = provider.embed_with_columns([payload])
            vector, columns = vecs, {**columns, **cols[0]}
            text_p = self._text_provider_for(current.modality)
            if current.modality in TEXT_COLUMN:
                text_vec = text_vectors([columns.get(TEXT_COLUMN[current.modality])], text_p)

        def build(m: Manifest) -> Manifest:
            import pyarrow.compute as pc  # not on the import path of a cold add

            # new content's vector must be of the model the table is on now (a re-embedding may have moved it)
            state = (
                m.tables.get(current.modality)
                if item is None
                else table_state(m, current.modality, provider, text_p)
            )
            for pos, frag in enumerate(state.fragments if state else []):
                if not has_ids(self._storage, frag, {id}, self._scope.namespaces):
                    continue
                table = self._read_fragment(frag)
                hit = pc.equal(table.column("id"), id)
                row = table.filter(hit).to_pylist()[0]
                self._log_changes(m, "update", [(current.modality, dict(row))])
                row["updated_at"] = now_utc()
                if meta is not None:
                    row["metadata"] = meta
                if item is not None:
                    row.update(
                        content=item.content,
                        media=item.media,
                        media_type=item.media_type,
                        source=item.source or row["source"],
                        embedding=vector[0].tolist(),
                        **columns,
                    )
                    if text_vec is not None:
                        row[f"{TEXT_COLUMN[current.modality]}_embedding"] = text_vec.to_pylist()[0]
                new = pa.concat_tables(
                    [table.filter(pc.invert(hit)), pa.Table.from_pylist([row], schema=table.schema)]
                )
                state.fragments[pos] = self._storage.write_fragment(current.modality, new)
                written.clear()
                written.append(row)
                return m
            raise MemoryNotFoundError(f"no memory with id {id!r}; it was deleted meanwhile")

        written: list[dict[str, Any]] = []
        with self._storage.writer_lock():
            committed = self._storage.commit("update 1", build)
            maintain(self._storage, committed, [current.modality])
        # the row as committed: nothing that could fail (a read of another fragment) runs after the commit
        return memory_from_row(current.modality, written[0])

    def compact(self, modality: str | None = None) -> dict[str, int]:
        """Merge each table's fragments into one; old files stay until ``cleanup`` (readers may use them)."""
        self._scope.check_admin("compact the store")
        return compact_all(self._storage, modality)

    def cleanup(self, older_than: float | None = None) -> dict[str, Any]:
        """Remove versions superseded more than ``older_than`` seconds ago (default: the store's
        ``retention``, one hour unless set) and the files no retained version names. Readers pinned on a
        removed version get a ``VersionNotFoundError``; the writers' lock is held only in short steps
        (``lock_held_max_s`` reports the longest)."""
        self._scope.check_admin("clean up the store")
        return self._storage.cleanup(self.retention if older_than is None else older_than)

    def _read_fragment(self, frag: Fragment, columns: list[str] | None = None) -> pa.Table:
        return read_fragment(self._storage, frag, columns)

    # --- reading -----------------------------------------------------------------------------------
