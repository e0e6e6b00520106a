"""Re-embedding a table with another model, as a migration: staged fragments, then one commit.

``store.reembed(modality, provider=...)`` computes new vectors for every row from what the row stores (the
text, or the image/audio bytes; audio windows are cut again at their ``start_s`` and their transcripts made
anew and embedded with the text provider), writes them as new fragments that no manifest names yet
(invisible to readers), and records each finished chunk in a staging record (``_reembed-<modality>.json``,
replaced atomically). The switch is one commit: the table's fragments, provider and fingerprint change
together, so a reader sees every row on the old model or every row on the new one, never a mix. Ids,
metadata, timestamps and the change log are kept.

A kill at any point loses nothing: before the commit the old table is untouched; a re-run with the same
target reads the staging record, checks each staged file against its recorded sha256 (derived data is never
trusted blindly) and embeds only the chunks not done. Rows that other writers add or rewrite meanwhile are
embedded before the switch: the commit takes every fragment of the newest table or is built again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa

from aios_memory.errors import InvalidInputError, ProviderMismatchError, StoreCorruptError
from aios_memory.identity import describe
from aios_memory.modality import prepare
from aios_memory.plugins import get_provider
from aios_memory.provider import EmbeddingProvider
from aios_memory.rows import embed_rows, text_vectors
from aios_memory.schema import EXTRA_COLUMNS, META_KEY, TEXT_COLUMN, base_schema
from aios_memory.storage import Fragment, Manifest, Storage, TableState

STAGE_ROWS = 4096  # rows per staged fragment: what a kill can cost to redo
ROUNDS = 4  # passes over rows added by other writers meanwhile, then the rest under the writers' lock


def record_name(modality: str) -> str:
    return f"_reembed-{modality}.json"


class _Behind(Exception):
    """The newest table holds fragments not re-embedded yet (another writer's rows)."""


class Migration:
    """One re-embedding of ``modality``'s table to ``target`` (+ ``text`` for a derived text column)."""

    def __init__(
        self, storage: Storage, modality: str, target: EmbeddingProvider, text: EmbeddingProvider | None
    ) -> None:
        self.storage, self.modality, self.target, self.text = storage, modality, target, text
        self.key = {
            "modality": modality,
            "provider": target.name,
            "fingerprint": target.fingerprint(),
            "text": None if text is None else [text.name, text.fingerprint()],
        }
        self.done: dict[str, dict[str, Any]] = {}  # source fragment -> {"checksum", "chunks", "complete"}
        self.resumed_rows = 0

    # --- the staging record ----------------------------------------------------------------------------
    def resume(self, fragments: list[Fragment]) -> None:
        """Take over the chunks a killed run staged for this same target, each checked against its file
        (sha256, rows, ids, the target's fingerprint and dimension); a malformed record is ignored (the
        work starts afresh; its files are orphans for cleanup)."""
        try:
            rec = json.loads(self.storage.backend.read_bytes(record_name(self.modality)))
        except (OSError, ValueError):
            return
        try:
            self._take_over(rec, {f.path: f for f in fragments})
        except (
            AttributeError,
            TypeError,
            ValueError,
            KeyError,
            IndexError,
            StoreCorruptError,
            pa.ArrowException,
        ):
            self.done.clear()
            self.resumed_rows = 0

    def _take_over(self, rec: Any, live: dict[str, Fragment]) -> None:
        if not isinstance(rec, dict) or rec.get("key") != self.key:
            return  # another target: started afresh
        for src, entry in rec["done"].items():
            frag = live.get(src)
            if frag is None or entry["checksum"] != frag.checksum():
                continue  # rewritten or deleted since: embedded again from the newest fragment
            ids = self.storage.read_table(frag.path, ["id"]).column("id")
            chunks, rows = [], 0
            for d in entry["chunks"]:
                chunk = Fragment(**d)
                if not self._intact(chunk, ids.slice(rows, chunk.rows), frag.rows - rows):
                    break  # this chunk and those after it are embedded again
                chunks.append(chunk)
                rows += chunk.rows
            complete = entry["complete"] is True and len(chunks) == len(entry["chunks"]) and rows == frag.rows
            self.done[src] = {"checksum": frag.checksum(), "chunks": chunks, "complete": complete}
            self.resumed_rows += rows

    def _intact(self, chunk: Fragment, ids: Any, left: int) -> bool:
        """A staged chunk is what this run would write: every file present with its recorded sha256, the
        target's fingerprint and dimension in its schema, and the next ``ids`` of its source, in order."""
        try:
            chunk.check_paths(f"the staging record of {self.storage.root}")
            sums = dict(chunk.checksums)
            if not 0 < chunk.rows <= left or set(sums) != {"parquet", *chunk.sidecars}:
                return False
            for suffix, want in sums.items():
                rel = chunk.path if suffix == "parquet" else chunk.sidecar_path(suffix)
                if self.storage.backend.sha256(rel) != want:
                    return False
            table = self.storage.read_table(chunk.path, ["id", "embedding"])
            meta = json.loads(table.schema.metadata[META_KEY])
            meta.pop("schema_version", None)
            width = table.schema.field("embedding").type.list_size
            return (
                meta == self.key["fingerprint"]
                and width == int(self.target.dim)
                and table.num_rows == chunk.rows
                and table.column("id").equals(ids)
            )
        except (OSError, StoreCorruptError, KeyError, ValueError, AttributeError, pa.ArrowException):
            return False

    def drop_lost(self) -> None:
        """Forget staged chunks whose files are gone (cleanup takes unreferenced files older than the
        retention period): their rows are embedded again."""
        for entry in self.done.values():
            if any(not self.storage.backend.exists(p) for c in entry["chunks"] for p in c.files()):
                entry.update(chunks=[], complete=False)

    def _save(self) -> None:
        done = {
            src: {
                "checksum": e["checksum"],
                "chunks": [asdict(f) for f in e["chunks"]],
                "complete": e["complete"],
            }
            for src, e in self.done.items()
        }
        data = json.dumps({"key": self.key, "done": done}, sort_keys=True).encode()
        self.storage.backend.replace(record_name(self.modality), data)

    def forget(self) -> None:
        try:
            self.storage.backend.delete(record_name(self.modality))
        except OSError:
            pass  # a stale record for a finished target is ignored (its fragments are all committed)

    # --- embedding ---------------------------------------------------------------------------------------
    def todo(self, state: TableState) -> list[Fragment]:
        return [f for f in state.fragments if f.rows and not self.done.get(f.path, {}).get("complete")]

    def stage(self, frag: Fragment, batch: int, tick: Callable[[int], object]) -> None:
        """Embed ``frag``'s rows chunk by chunk, each chunk a staged fragment recorded as it is written."""
        entry = self.done.setdefault(
            frag.path, {"checksum": frag.checksum(), "chunks": [], "complete": False}
        )
        if entry["checksum"] != frag.checksum():
            entry.update(checksum=frag.checksum(), chunks=[], complete=False)
        table = self.storage.read_table(frag.path)
        start = sum(f.rows for f in entry["chunks"])
        for lo in range(start, table.num_rows, STAGE_ROWS):
            part = table.slice(lo, STAGE_ROWS)
            entry["chunks"].append(
                self.storage.write_fragment(self.modality, self.rebuild(part, batch, tick))
            )
            self._save()
        entry["complete"] = True
        self._save()

    def rebuild(self, part: pa.Table, batch: int, tick: Callable[[int], object]) -> pa.Table:
        """``part`` with new vectors (and provider columns: transcripts) from ``target``, new schema."""
        mod, target = self.modality, self.target
        rows = list(self._payloads(part))
        vecs, columns = embed_rows(target, rows, batch, tick)
        fp, text_dim = self.key["fingerprint"], None if self.text is None else int(self.text.dim)
        schema = base_schema(mod, int(target.dim), fp, text_dim)
        values: dict[str, Any] = {n: part.column(n) for n in part.column_names}
        values["embedding"] = pa.FixedSizeListArray.from_arrays(
            pa.array(vecs.reshape(-1), pa.float32()), int(target.dim)
        )
        values["provider"] = pa.array([target.name] * part.num_rows, pa.string())
        for f in EXTRA_COLUMNS[mod]:
            if any(f.name in c for c in columns):
                values[f.name] = pa.array([c.get(f.name) for c in columns], f.type)
        if mod in TEXT_COLUMN:
            col = TEXT_COLUMN[mod]
            values[f"{col}_embedding"] = text_vectors(values[col].to_pylist(), self.text)
        return pa.Table.from_arrays([_as(values[f.name], f.type) for f in schema], schema=schema)

    def _payloads(self, part: pa.Table) -> Iterator[tuple[int, Any, dict[str, Any]]]:
        """(row, what the target embeds, columns) for each row of ``part``."""
        if self.modality == "text":
            for r, text in enumerate(part.column("content").to_pylist()):
                yield r, text, {}
            return
        media, starts = part.column("media").to_pylist(), None
        if "start_s" in part.column_names:
            starts = part.column("start_s").to_pylist()
        pieces: dict[bytes, list[tuple[Any, dict[str, Any]]]] = {}
        for r, data in enumerate(media):
            if data is None:
                raise StoreCorruptError(f"a {self.modality} memory holds no media to embed again")
            if data not in pieces:  # the windows of one recording share its bytes: cut once
                item = prepare(data, modality=self.modality)
                pieces[data] = self.target.expand(item.payload)
            found = pieces[data]
            if starts is not None and len(found) > 1:
                found = [
                    p for p in found if abs(float(p[1].get("start_s", 0.0)) - float(starts[r] or 0.0)) < 1e-6
                ]
            if not found:
                raise StoreCorruptError(
                    f"no window of a stored recording starts at {starts[r] if starts else 0} s"
                )
            payload, cols = found[0]
            yield r, payload, cols

    # --- the switch ------------------------------------------------------------------------------------
    def build(self, m: Manifest) -> Manifest:
        """``m`` with the table switched to the staged fragments (run under the writers' lock)."""
        state = m.tables.get(self.modality)
        if state is None:
            raise InvalidInputError(f"the {self.modality} table was removed meanwhile; nothing was changed")
        behind = [f for f in self.todo(state)]
        for f in state.fragments:  # cleanup may have taken staged files older than the retention period
            entry = self.done.get(f.path)
            if entry and any(not self.storage.backend.exists(p) for c in entry["chunks"] for p in c.files()):
                entry.update(chunks=[], complete=False)
                behind.append(f)
        if behind:
            raise _Behind()
        state.fragments = [c for f in state.fragments if f.rows for c in self.done[f.path]["chunks"]]
        state.provider, state.dim = self.target.name, int(self.target.dim)
        state.fingerprint = dict(self.key["fingerprint"])
        state.text_provider = None if self.text is None else self.text.name
        state.text_dim = None if self.text is None else int(self.text.dim)
        state.text_fingerprint = None if self.text is None else dict(self.key["text"][1])
        state.index = None  # an ANN index describes the old vectors
        return m


def _as(col: Any, typ: pa.DataType) -> Any:
    return col if col.type == typ else col.cast(typ)


def targets(
    state: TableState, modality: str, provider: str | None, text_provider: str | None
) -> tuple[EmbeddingProvider, EmbeddingProvider | None]:
    """The providers a re-embedding moves ``modality``'s table to (default: the ones it records)."""
    target = get_provider(provider or state.provider)
    if target.modality != modality:
        raise ProviderMismatchError(f"provider {target.name!r} embeds {target.modality}, not {modality}")
    text = None
    if modality in TEXT_COLUMN:
        name = text_provider or state.text_provider
        text = get_provider(name) if name else None
        if text is not None and text.modality != "text":
            raise ProviderMismatchError(f"provider {text.name!r} embeds {text.modality}, not text")
    elif text_provider is not None:
        raise InvalidInputError(
            f"{modality} memories have no derived text column; text_provider does not apply"
        )
    return target, text


def summary(state: TableState, mig: Migration, rows: int, version: int, seconds: float) -> dict[str, Any]:
    return {
        "modality": mig.modality,
        "rows": rows,
        "from": describe(state.fingerprint),
        "to": describe(mig.key["fingerprint"]),
        "version": version,
        "resumed_rows": mig.resumed_rows,
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds, 1) if seconds > 0 else None,
    }


def unchanged(state: TableState, mig: Migration) -> bool:
    same_text = mig.text is None or (
        state.text_provider == mig.text.name and state.text_fingerprint == mig.key["text"][1]
    )
    return state.provider == mig.target.name and state.fingerprint == mig.key["fingerprint"] and same_text


def now_rows(state: TableState) -> int:
    return int(np.sum([f.rows for f in state.fragments], dtype=np.int64))


def run(storage: Storage, mig: Migration, batch: int, bar: Any) -> Manifest:
    """Stage every fragment of the newest table, then commit the switch (see the module docstring)."""
    for attempt in range(ROUNDS + 1):
        state = storage.read_manifest().tables[mig.modality]
        if attempt == 0:
            mig.resume(state.fragments)
            bar.total = now_rows(state)
            bar.update(mig.resumed_rows)
        mig.drop_lost()
        for frag in mig.todo(state):
            mig.stage(frag, batch, bar.update)
        try:
            if attempt < ROUNDS:
                return storage.commit(f"reembed {mig.modality}", mig.build)
            with storage.writer_lock():  # the last round: other writers wait while the rest is embedded
                state = storage.read_manifest().tables[mig.modality]
                mig.drop_lost()
                for frag in mig.todo(state):
                    mig.stage(frag, batch, bar.update)
                return storage.commit(f"reembed {mig.modality}", mig.build)
        except _Behind:
            bar.total = now_rows(storage.read_manifest().tables[mig.modality])
            continue
    raise InvalidInputError(
        f"other writers kept rewriting the {mig.modality} table; nothing was switched (run again)"
    )


def timed(fn: Callable[[], Manifest]) -> tuple[Manifest, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


class ReembedMixin:
    """Mixed into ``MemoryStore``, which sets the attributes annotated here."""

    _storage: Storage
    _scope: Any
    _chosen: dict[str, str]
    _pinned: int | None
    path: Any

    def reembed(
        self,
        modality: str,
        provider: str | None = None,
        *,
        text_provider: str | None = None,
        batch_size: int = 64,
        progress: bool | None = None,
    ) -> dict[str, Any]:
        """Move ``modality``'s table to ``provider`` (default: the provider it records, as installed now,
        e.g. after new weights) in one commit; ``text_provider`` re-embeds a derived text column (audio
        transcripts) with another text model. Resumes a killed run. ``progress``: a bar with rate and ETA
        (None: on a terminal). Returns a summary (rows, from, to, version, resumed_rows, seconds)."""
        from aios_memory.ingest import _progress_bar

        self._scope.check_write()
        self._scope.check_admin("re-embed a table")
        if self._pinned is not None:
            raise InvalidInputError("this handle is pinned to a version (checkout); re-embed on the newest")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")
        state = self._storage.read_manifest().tables.get(modality)
        if state is None:  # (a table whose rows were all deleted switches model with no rows to embed)
            raise InvalidInputError(f"there are no {modality} memories in {self.path} to re-embed")
        mig = Migration(self._storage, modality, *targets(state, modality, provider, text_provider))
        if unchanged(state, mig):
            mig.forget()
            return summary(state, mig, 0, self._storage.read_manifest().version, 0.0)
        bar = _progress_bar(state.rows, progress, unit="row", desc=f"reembed {modality}")
        try:
            committed, seconds = timed(lambda: run(self._storage, mig, batch_size, bar))
        finally:
            bar.close()
        mig.forget()
        if modality in self._chosen:
            self._chosen[modality] = mig.target.name  # this handle now follows the table's provider
        return summary(state, mig, committed.tables[modality].rows, committed.version, seconds)
