"""One search across every table and signal: ``MemoryStore.search`` with no ``modality``, or any
``mode`` other than ``"vector"``, ranks here (``run_search`` ranks one table by one vector column).

Signals: each vector column of each table the query reaches (a text query reaches the text table's
``embedding`` through MiniLM, an image table's through CLIP's text tower, an audio or video table's
``transcript_embedding``, a video table's frame ``embedding`` through CLIP), plus, in ``"hybrid"`` and
``"keyword"`` mode, BM25 over each table's text (:mod:`aios_memory.keyword`).

Fusion (calibrated scores): each signal's raw score is put on one scale first. A cosine ``c`` becomes
``(c - f) / (1 - f)`` where the floor ``f`` is the query's mean cosine to every row of that table and
column (what an unrelated memory scores in that model's space: MiniLM, CLIP and Whisper have very
different floors); a BM25 score becomes ``bm25 / ceiling`` with the ceiling the sum of the query terms'
idf (the most a document could score). A memory's fused score is its best calibrated vector score (a
query of text and an image, :class:`Composite`: the mean over the two parts of each part's best) plus
:data:`KEYWORD_WEIGHT` times its calibrated BM25 score (``"keyword"`` mode: the calibrated BM25 alone).
Tables whose model is not installed in this process are skipped and named in ``explain["skipped"]``.
When only one signal takes part (one table, one column, ``"vector"``), nothing is fused: the search is
exactly the single-table search, and scores are its exact cosines.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from aios_memory.errors import InvalidInputError, ModalityError, ProviderError
from aios_memory.given import GivenVector
from aios_memory.keyword import _key, keyword_search, text_column
from aios_memory.memory import Memory, check_namespace
from aios_memory.modality import prepare
from aios_memory.schema import TEXT_COLUMN
from aios_memory.search import MAX_K, _count_reads, fetch_rows, run_search, select_rows
from aios_memory.vectors import fragment_vectors

if TYPE_CHECKING:
    from aios_memory.storage import Fragment, Manifest, Storage
    from aios_memory.store import MemoryStore

MODES = ("vector", "hybrid", "keyword")
KEYWORD_WEIGHT = 0.5
TABLE_ORDER = ("text", "image", "audio", "video")


@dataclass(frozen=True)
class Composite:
    """A query made of several parts (``search(text=..., image=...)``): each ranks the tables it reaches,
    and a memory's vector score is the mean over the parts of its best calibrated score for each."""

    parts: tuple[Any, ...]


def composite(query: Any, text: Any = None, image: Any = None) -> Any:
    """``search``'s query from ``query`` or from ``text=`` and ``image=`` (both: a :class:`Composite`)."""
    if text is None and image is None:
        return query
    if query is not None:
        raise InvalidInputError("search takes a query, or text= and/or image=, not both")
    for value, kind in ((text, "text"), (image, "image")):
        if value is not None and prepare(value).modality != kind:
            raise InvalidInputError(f"{kind}= takes {'text' if kind == 'text' else 'an image'}")
    return (
        Composite((text, image))
        if text is not None and image is not None
        else (image if text is None else text)
    )


def check_mode(mode: Any) -> str:
    if mode is None:
        return "vector"
    if mode not in MODES:
        raise InvalidInputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    return str(mode)


def signals_of(
    store: MemoryStore, m: Manifest, modality: str | None, item: Any, mode: str
) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """The ``(table, signal)`` pairs the query reaches, and the tables it cannot reach with why."""
    tables = [modality] if modality else sorted(m.tables, key=lambda t: (TABLE_ORDER + (t,)).index(t))
    out: list[tuple[str, str]] = []
    skipped: dict[str, str] = {}
    for t in tables:
        state = m.tables.get(t)
        if state is None or not any(f.rows for f in state.fragments):
            continue
        if mode != "keyword":
            try:
                provider = store._provider_in(m, t)
                if item.modality == provider.modality or item.modality in provider.query_modalities:
                    provider.load()  # weights not installed here: the table is skipped, saying why
                    out.append((t, "embedding"))
                text = store._text_provider_in(m, t) if t in TEXT_COLUMN else None
                if text is not None and item.modality == text.modality:
                    out.append((t, f"{TEXT_COLUMN[t]}_embedding"))
                if not out or out[-1][0] != t:
                    accepted = sorted(
                        {provider.modality, *provider.query_modalities, *([text.modality] if text else [])}
                    )
                    skipped[t] = (
                        f"provider {provider.name!r} embeds {provider.modality} memories and accepts queries of "
                        f"{', '.join(accepted)}; a {item.modality} query cannot search it"
                    )
            except (ProviderError, ModalityError) as exc:
                skipped[t] = str(exc)
        if mode != "vector" and item.modality == "text" and text_column(t):
            out.append((t, "bm25"))
    return out, skipped


def fused_search(
    store: MemoryStore,
    query: Any,
    k: int,
    modality: str | None,
    namespace: str | None,
    where: str | None,
    params: Any,
    half_life: float | None,
    order: str,
    min_score: float | None,
    exact: bool | None,
    timeout: Any = None,
    mmr: float | None = None,
    fetch_k: int | None = None,
    mode: str | None = None,
) -> tuple[list[Memory], dict[str, Any]]:
    """``MemoryStore._search``: see the module's docstring."""
    mode = check_mode(mode)
    single = (query, k, modality, namespace, where, params, half_life, order, min_score, exact, timeout)
    if isinstance(query, GivenVector):  # a vector made elsewhere belongs to one table (default text)
        if mode != "vector":
            raise InvalidInputError("a given vector has no words: mode must be 'vector'")
        return _plain(run_search(store, *single, mmr, fetch_k))
    given = query.parts if isinstance(query, Composite) else (query,)
    items = [prepare(q) for q in given]
    if mode != "vector" and not any(it.modality == "text" for it in items):
        raise InvalidInputError(f"mode={mode!r} needs a text query (the keyword signal matches words)")
    reads = _count_reads(store._storage)
    m = store._manifest()  # the one manifest read of this search, for every table and signal
    signals: list[tuple[int, str, str]] = []  # (which part of the query, table, signal)
    skipped: dict[str, str] = {}
    for p, item in enumerate(items):
        got, why = signals_of(store, m, modality, item, mode)
        signals += [(p, t, sig) for t, sig in got]
        skipped.update(why)
    skipped = {t: why for t, why in skipped.items() if all(t != x for _, x, _ in signals)}
    if len(items) == 1 and len(signals) <= 1 and (not signals or signals[0][2] != "bm25"):
        # nothing to fuse: one table by one column, exactly as a single-table search (or its error)
        table = signals[0][1] if signals else (modality or items[0].modality)
        col = signals[0][2] if signals else None
        found, explain = _plain(run_search(store, *single[:2], table, *single[3:], mmr, fetch_k, col, m))
        explain["manifest_reads"] = reads()
        return found, {**explain, "skipped": skipped} if skipped else explain
    if mmr is not None or fetch_k is not None:
        raise InvalidInputError("mmr compares memories in one vector space: give modality= and mode='vector'")
    if half_life is not None and mode != "vector":
        raise InvalidInputError("half_life decays cosines: it needs mode='vector'")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise InvalidInputError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
    if namespace is not None:
        check_namespace(namespace)
    pool = min(MAX_K, max(20, 4 * k))
    found: dict[tuple[str, str], Memory] = {}
    parts: dict[tuple[str, str], list[dict[str, Any]]] = {}
    explains: list[dict[str, Any]] = []
    for p, table, signal in signals:
        if signal == "bm25":
            text = items[p].payload
            hits, explain = _keyword(store, m, table, text, pool, namespace, where, params, timeout)
        else:
            args = (given[p], pool, table, namespace, where, params, half_life, "score", None, exact, timeout)
            hits, explain = run_search(store, *args, None, None, signal, m)
            floor = _floor(store._storage, m.tables[table].fragments, signal, explain.pop("_vector"))
            explain["floor"] = floor
        named = {"table": table, "signal": signal, **({"query": items[p].modality} if len(items) > 1 else {})}
        explains.append({**named, **explain})
        for r, mem in enumerate(hits, 1):
            raw = float(mem.score or 0.0)
            cal = raw * explain["scale"] if signal == "bm25" else (raw - floor) / max(1e-6, 1.0 - floor)
            found.setdefault((table, mem.id), mem)
            parts.setdefault((table, mem.id), []).append(
                {**named, "score": raw, "calibrated": cal, "rank": r, "part": p}
            )
    out = []
    for key, mem in found.items():
        sig = parts[key]
        best = [max((s["calibrated"] for s in sig if s["part"] == p and s["signal"] != "bm25"), default=0.0)
                for p in range(len(items))]  # fmt: skip
        kw = [s["calibrated"] for s in sig if s["signal"] == "bm25"]
        fused = sum(best) / len(items) + (KEYWORD_WEIGHT if mode == "hybrid" else 1.0) * sum(kw)
        if min_score is not None and fused < float(min_score):
            continue
        for s in sig:
            del s["part"]
        out.append(replace(mem, score=fused, extra={**mem.extra, "signals": sig}))
    out.sort(key=lambda x: (-(x.score or 0.0), x.id))
    out = out[:k]
    if order == "newest":
        out.sort(key=lambda x: x.id)
        out.sort(key=lambda x: x.created_at, reverse=True)
    explain = {"version": m.version, "path": "fused", "mode": mode, "signals": explains, "skipped": skipped}
    explain["manifest_reads"] = reads()
    return out, explain


def _plain(got: tuple[list[Memory], dict[str, Any]]) -> tuple[list[Memory], dict[str, Any]]:
    got[1].pop("_vector", None)
    return got


def _keyword(
    store: MemoryStore,
    m: Manifest,
    table: str,
    text: str,
    pool: int,
    namespace: str | None,
    where: str | None,
    params: Any,
    deadline: Any,
) -> tuple[list[Memory], dict[str, Any]]:
    """The BM25 signal of one table, over the rows the namespaces (the scope's) and ``where`` select."""
    fragments = list(m.tables[table].fragments)
    selections = select_rows(
        store, m, table, fragments, store.scope.readable(namespace), where, params, deadline
    )
    hits = keyword_search(store._storage, table, fragments, text, pool, selections)
    scale = float(hits.calibrated[0] / hits.score[0]) if len(hits.score) else 0.0
    mems = fetch_rows(store, table, fragments, hits.frag, hits.row, hits.score) if len(hits.row) else []
    explain = {"path": "bm25", "rows": sum(f.rows for f in fragments), "matched": len(mems), "scale": scale}
    if selections is not None:
        explain["selected"] = int(sum(s.size for s in selections))
    return mems, explain


_lock = threading.Lock()
_means: OrderedDict[tuple[Any, ...], np.ndarray] = OrderedDict()


def _floor(storage: Storage, fragments: Any, column: str, vector: np.ndarray) -> float:
    """The query's mean cosine to the rows of ``column`` (rows without a vector left out): the query
    vector against the mean unit row, which is kept per committed set of fragments."""
    q = np.asarray(vector, np.float64)
    q = q / (np.linalg.norm(q) or 1.0)
    mean = _mean_unit(storage, list(fragments), column, len(q))
    return float(q @ mean)


def _mean_unit(storage: Storage, fragments: list[Fragment], column: str, dim: int) -> np.ndarray:
    key = (str(storage.root), column, tuple(_key(f) for f in fragments))
    with _lock:
        if key in _means:
            return _means[key]
    total, n = np.zeros(dim, np.float64), 0
    for f in fragments:
        mat, _ = fragment_vectors(storage, f, column, dim)
        v = np.asarray(mat, np.float64)
        v = v[np.isfinite(v).all(axis=1)]
        norms = np.linalg.norm(v, axis=1)
        v = v[norms > 0] / norms[norms > 0, None]
        total += v.sum(axis=0)
        n += len(v)
    mean = total / max(n, 1)
    with _lock:
        _means[key] = mean
        while len(_means) > 64:
            _means.popitem(last=False)
    return mean


__all__ = ["KEYWORD_WEIGHT", "MODES", "Composite", "check_mode", "composite", "fused_search", "signals_of"]
