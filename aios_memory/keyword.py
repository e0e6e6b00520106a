"""The keyword signal of a search: BM25 (``bm25s``, Lucene's variant) over a table's text, i.e. a text
memory's content and an audio or video memory's transcript.

The index is derived data, built from the committed fragments and keyed by each fragment's path and
sha256 (from the manifest): a commit that adds, compacts or deletes rows changes the key, so an index is
never used for fragments it was not built from. Each fragment's tokens are kept once (a commit tokenises
only its new fragments: the index is extended by them, then rebuilt from the kept tokens, which is fast);
a fragment whose checksum does not match the manifest is refused by the reads below, never indexed.

Tokens: lower-cased runs of letters and digits, with any joined by ``-``, ``_``, ``.``, ``/``, ``:`` or
``#`` (``orange-kite``, ``a1.b2``) kept whole *and* as their parts, so ``4471``, ``orange-kite`` and
``kite`` are all findable.
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from aios_memory.errors import InvalidInputError
from aios_memory.schema import TEXT_COLUMN

if TYPE_CHECKING:
    from aios_memory.storage import Fragment, Storage

K1, B = 1.5, 0.75  # bm25s' defaults
_WORD = re.compile(r"\w+(?:[-_./:#]\w+)*")
_PART = re.compile(r"[^\W_]+")
_CACHE_MAX = 16  # indexes kept per process (one per table and committed set of fragments)
_TOKENS_MAX = 4096  # fragments whose tokens are kept


def text_column(modality: str) -> str:
    """The column the keyword signal indexes: ``content`` of text, the transcript of audio or video."""
    return "content" if modality == "text" else TEXT_COLUMN.get(modality, "")


def tokens(text: str | None) -> list[str]:
    """The tokens of ``text`` (see the module's docstring); empty for ``None``."""
    out: list[str] = []
    for word in _WORD.findall((text or "").lower()):
        out.append(word)
        parts = _PART.findall(word)
        if len(parts) > 1:
            out += parts
    return out


@dataclass
class KeywordIndex:
    bm25: Any  # bm25s.BM25
    offsets: np.ndarray  # fragment i's rows are documents offsets[i] .. offsets[i + 1]
    df: Counter[str]
    docs: int

    def idf(self, term: str) -> float:
        """Lucene's idf, as bm25s computes it."""
        n = self.df.get(term, 0)
        return math.log(1 + (self.docs - n + 0.5) / (n + 0.5))

    def scores(self, query: list[str]) -> tuple[np.ndarray, float]:
        """Every document's BM25 score for ``query``, and the most a document could score (each query
        term's idf: what a term frequency without bound would give); their ratio is the calibrated score."""
        known = [t for t in query if t in self.df]
        got = self.bm25.get_scores(known) if known else np.zeros(self.docs, np.float32)
        ceiling = sum(self.idf(t) for t in query)
        return np.asarray(got, np.float64), ceiling


_lock = threading.Lock()
_indexes: OrderedDict[tuple[Any, ...], KeywordIndex] = OrderedDict()
_tokens: OrderedDict[tuple[str, str, str], list[list[str]]] = OrderedDict()


def _key(frag: Fragment) -> str:
    return f"{frag.path}:{dict(frag.checksums).get('parquet', frag.nbytes)}"


def _fragment_tokens(storage: Storage, frag: Fragment, column: str) -> list[list[str]]:
    from aios_memory.compaction import read_fragment

    key = (str(storage.root), _key(frag), column)
    with _lock:
        if key in _tokens:
            _tokens.move_to_end(key)
            return _tokens[key]
    texts = read_fragment(storage, frag, [column]).column(column).to_pylist()
    got = [tokens(t) for t in texts]
    with _lock:
        _tokens[key] = got
        while len(_tokens) > _TOKENS_MAX:
            _tokens.popitem(last=False)
    return got


def keyword_index(storage: Storage, modality: str, fragments: list[Fragment]) -> KeywordIndex | None:
    """The BM25 index of ``fragments`` (a table's committed ones), built or taken from the cache;
    ``None`` when the table has no text to index."""
    import bm25s

    column = text_column(modality)
    if not column or not fragments:
        return None
    key = (str(storage.root), modality, tuple(_key(f) for f in fragments))
    with _lock:
        if key in _indexes:
            _indexes.move_to_end(key)
            return _indexes[key]
    docs: list[list[str]] = []
    offsets = [0]
    for frag in fragments:
        docs += _fragment_tokens(storage, frag, column)
        offsets.append(len(docs))
    df: Counter[str] = Counter()
    for d in docs:
        df.update(set(d))
    model = bm25s.BM25(k1=K1, b=B, method="lucene")
    # bm25s drops empty documents' ids from nothing, but needs one token somewhere: "" never matches a query
    model.index([d or [""] for d in docs], show_progress=False)
    index = KeywordIndex(model, np.asarray(offsets, np.int64), df, len(docs))
    with _lock:
        _indexes[key] = index
        while len(_indexes) > _CACHE_MAX:
            _indexes.popitem(last=False)
    return index


@dataclass
class KeywordHits:
    frag: np.ndarray
    row: np.ndarray
    score: np.ndarray  # BM25
    calibrated: np.ndarray  # BM25 / the query's ceiling, in [0, 1)


def keyword_search(
    storage: Storage,
    modality: str,
    fragments: list[Fragment],
    text: str,
    k: int,
    selections: list[np.ndarray] | None,
) -> KeywordHits:
    """The top ``k`` documents with a BM25 score above 0 among the selected rows (``None``: all)."""
    if not isinstance(text, str):
        raise InvalidInputError("the keyword signal takes a text query")
    empty = KeywordHits(*(np.zeros(0, t) for t in (np.int64, np.int64, np.float64, np.float64)))
    index = keyword_index(storage, modality, fragments)
    query = tokens(text)
    if index is None or not query:
        return empty
    scores, ceiling = index.scores(query)
    if selections is not None:
        keep = np.zeros(index.docs, bool)
        for i, sel in enumerate(selections):
            keep[index.offsets[i] + sel] = True
        scores = np.where(keep, scores, 0.0)
    hit = np.flatnonzero(scores > 0)
    if not len(hit):
        return empty
    order = hit[np.lexsort((hit, -scores[hit]))][:k]
    frag = np.searchsorted(index.offsets, order, side="right") - 1
    row = order - index.offsets[frag]
    got = scores[order]
    return KeywordHits(frag, row, got, got / ceiling if ceiling > 0 else got * 0)


def clear_cache() -> None:
    """Forget every kept index and token list (tests; a process that wants the memory back)."""
    with _lock:
        _indexes.clear()
        _tokens.clear()
