"""How a LangGraph item lives in a ``MemoryStore``: namespaces, the rows of one item, media leaves,
and the ``filter`` of ``BaseStore.search`` as a parameterised SQL predicate.

An item ``(namespace, key, value)`` becomes one or more memories in the store namespace
``".".join(namespace)`` (LangGraph forbids ``.`` inside a label, so the mapping is one to one). Every row
carries the item in its metadata under ``"langgraph"``: ``key``, ``value`` (media leaves replaced by
markers), ``created_at``, ``updated_at``, ``rev`` (one per put: the newest rev of a key is the item),
``expires_at``/``ttl``, ``part`` (0: the head row; 1..: more passages), ``indexed`` (this row is scored by a
query) and ``unscored`` (no row of the item is). Row 0 is a text memory: the first indexed text, or the
key when nothing of the item is indexed.
Further indexed texts are more text rows; a ``bytes`` or ``pathlib.Path`` leaf (an image or audio file)
is a row of the image or audio table, embedded by CLIP or Whisper.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from langgraph.store.base import get_text_at_path, tokenize_path

from aios_memory.errors import InvalidInputError

META = "langgraph"
MEDIA = "$aios_media"  # marker of a media leaf in a stored value
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%f+00:00"  # fixed width: ISO strings order as the times do
FILTER_KEY = re.compile(r"[A-Za-z0-9_\-]+")
OPERATORS = {"$eq", "$ne", "$gt", "$gte", "$lt", "$lte"}
_CMP = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def stamp(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime(TIME_FORMAT)


def store_namespace(namespace: tuple[str, ...]) -> str:
    return ".".join(namespace)


def item_namespace(namespace: str) -> tuple[str, ...]:
    return tuple(namespace.split("."))


def _field(path: str) -> str:
    return f"$.{META}.{path}"


def field_sql(path: str) -> str:
    """``json_extract_string`` of a field of the item's metadata (``path`` is ours, never the caller's)."""
    return f"json_extract_string(metadata, '{_field(path)}')"


def prefix_sql(prefix: tuple[str, ...]) -> tuple[str, list[Any]]:
    """Rows of the items under ``prefix`` (every item for ``()``)."""
    if not prefix:
        return f"{field_sql('key')} IS NOT NULL", []
    ns = store_namespace(prefix)
    return f"{field_sql('key')} IS NOT NULL AND (namespace = ? OR starts_with(namespace, ?))", [ns, ns + "."]


def live_sql(at: dt.datetime) -> tuple[str, list[Any]]:
    """Rows whose item has not expired at ``at``."""
    return f"COALESCE({field_sql('expires_at')} > ?, TRUE)", [stamp(at)]


def _value_path(keys: list[str]) -> str:
    for k in keys:
        if not isinstance(k, str) or not FILTER_KEY.fullmatch(k):
            raise InvalidInputError(f"filter keys are names of letters, digits, '_' and '-', got {k!r}")
    return _field("value." + ".".join(f'"{k}"' for k in keys))


def _json_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _equal(path: str, value: Any) -> tuple[str, list[Any]]:
    """True where the JSON value at ``path`` equals ``value`` as JSON values compare (typed, like jsonb)."""
    if value is None:
        return "json_type(metadata, ?) = 'NULL'", [path]
    if isinstance(value, bool):
        return "(json_type(metadata, ?) = 'BOOLEAN' AND json_extract_string(metadata, ?) = ?)", [
            path,
            path,
            "true" if value else "false",
        ]
    if isinstance(value, (int, float)):
        return (
            "(json_type(metadata, ?) IN ('BIGINT', 'UBIGINT', 'DOUBLE') AND "
            "TRY_CAST(json_extract_string(metadata, ?) AS DOUBLE) = ?)",
            [path, path, float(value)],
        )
    if isinstance(value, str):
        return "(json_type(metadata, ?) = 'VARCHAR' AND json_extract_string(metadata, ?) = ?)", [
            path,
            path,
            value,
        ]
    if isinstance(value, (list, tuple)):
        return "CAST(json_extract(metadata, ?) AS VARCHAR) = ?", [path, _json_text(list(value))]
    raise InvalidInputError(f"filter values are JSON values, got {type(value).__name__}")


def _compare(path: str, op: str, value: Any) -> tuple[str, list[Any]]:
    if op in ("$eq", "$ne"):
        sql, params = _equal(path, value)
        return (f"COALESCE({sql}, FALSE)" if op == "$eq" else f"NOT COALESCE({sql}, FALSE)"), params
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(f"operator {op!r} compares numbers, got {value!r}")
    return (
        f"COALESCE(TRY_CAST(json_extract_string(metadata, ?) AS DOUBLE) {_CMP[op]} ?, FALSE)",
        [path, float(value)],
    )


def filter_sql(spec: Mapping[str, Any] | None, keys: tuple[str, ...] = ()) -> tuple[str, list[Any]]:
    """``BaseStore.search``'s ``filter`` over the item's value: ``{"k": v}`` equality (a dict of plain
    keys matches nested fields), ``{"k": {"$gt": 1}}`` with ``$eq $ne $gt $gte $lt $lte``."""
    if not spec:
        return "TRUE", []
    if not isinstance(spec, Mapping):
        raise InvalidInputError(f"a filter is a dict, got {type(spec).__name__}")
    parts: list[str] = []
    params: list[Any] = []
    for key, want in spec.items():
        path_keys = [*keys, key]
        if isinstance(want, Mapping) and any(str(k).startswith("$") for k in want):
            for op, operand in want.items():
                if op not in OPERATORS:
                    raise InvalidInputError(f"unsupported filter operator {op!r}; use {sorted(OPERATORS)}")
                sql, ps = _compare(_value_path(path_keys), op, operand)
                parts.append(sql)
                params += ps
        elif isinstance(want, Mapping):
            sql, ps = filter_sql(want, tuple(path_keys))
            parts.append(f"(json_type(metadata, ?) = 'OBJECT' AND {sql})")
            params += [_value_path(path_keys), *ps]
        else:
            sql, ps = _compare(_value_path(path_keys), "$eq", want)
            parts.append(sql)
            params += ps
    return "(" + " AND ".join(parts) + ")", params


# --- values and their media leaves ---------------------------------------------------------------


def split_media(value: Any, path: tuple[Any, ...] = ()) -> tuple[Any, Any, list[tuple[tuple[Any, ...], Any]]]:
    """``(stored, plain, leaves)``: the value with each ``bytes``/``Path`` leaf as a marker (stored) or
    ``None`` (plain, for text extraction), and the leaves with their paths, in order."""
    if isinstance(value, (bytes, bytearray, memoryview, Path)):
        marker: dict[str, Any] = {MEDIA: None, "path": str(value) if isinstance(value, Path) else None}
        return marker, None, [(path, value if isinstance(value, Path) else bytes(value))]
    if isinstance(value, Mapping):
        stored, plain, leaves = {}, {}, []
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidInputError(f"item values have string keys, got {k!r}")
            stored[k], plain[k], more = split_media(v, (*path, k))
            leaves += more
        return stored, plain, leaves
    if isinstance(value, (list, tuple)):
        triples = [split_media(v, (*path, i)) for i, v in enumerate(value)]
        return [t[0] for t in triples], [t[1] for t in triples], [x for t in triples for x in t[2]]
    return value, value, []


def number_media(stored: Any, leaves: list[tuple[tuple[Any, ...], Any]]) -> None:
    """Give each marker of ``stored`` the part number of its row (1.. in leaf order)."""
    for part, (path, _) in enumerate(leaves, start=1):
        node = stored
        for step in path:
            node = node[step]
        node[MEDIA] = part


def check_json(stored: Any) -> str:
    try:
        return _json_text(stored)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"an item's value must be JSON (plus bytes or Path leaves): {exc}") from None


def indexes(path: tuple[Any, ...], tokens: list[str] | str) -> bool:
    """Whether the index path ``tokens`` (LangGraph's ``tokenize_path``) names the leaf at ``path``."""
    if tokens == "$":
        return True
    if len(tokens) != len(path):
        return False
    for token, step in zip(tokens, path, strict=True):
        if token in ("*", "[*]"):
            continue
        if token.startswith("[") and token.endswith("]"):
            try:
                want = int(token[1:-1])
            except ValueError:
                return False
            if not isinstance(step, int) or want != step:  # a negative index names no stored leaf
                return False
        elif token != step:
            return False
    return True


def restore(stored: Any, media: Mapping[int, bytes]) -> Any:
    """The value as it was put: markers become ``Path``s or the bytes of their rows."""
    if isinstance(stored, dict):
        if MEDIA in stored and set(stored) == {MEDIA, "path"}:
            return Path(stored["path"]) if stored["path"] is not None else media.get(stored[MEDIA])
        return {k: restore(v, media) for k, v in stored.items()}
    if isinstance(stored, list):
        return [restore(v, media) for v in stored]
    return stored


def has_media(stored: Any) -> bool:
    if isinstance(stored, dict):
        return (MEDIA in stored and stored.get("path") is None) or any(has_media(v) for v in stored.values())
    if isinstance(stored, list):
        return any(has_media(v) for v in stored)
    return False


def new_rev() -> str:
    return uuid.uuid4().hex


def tokens(paths: Any) -> list[tuple[str, Any]]:
    return [(p, "$" if p == "$" else tokenize_path(p)) for p in paths]


def item_rows(
    op: Any, fields: list[tuple[str, Any]], created_at: str, at: dt.datetime
) -> list[tuple[Any, dict[str, Any]]]:
    """The (content, metadata) of each row of the item ``op`` puts."""
    if not isinstance(op.value, dict) and not hasattr(op.value, "items"):
        raise InvalidInputError(f"an item's value is a dict, got {type(op.value).__name__}")
    stored, plain, leaves = split_media(dict(op.value))
    number_media(stored, leaves)
    check_json(stored)
    paths = fields if op.index is None else ([] if op.index is False else tokens(op.index))
    texts = [t for _, toks in paths for t in get_text_at_path(plain, toks) if t.strip()]
    ttl = op.ttl
    meta = {
        "key": str(op.key),
        "value": stored,
        "created_at": created_at,
        "updated_at": stamp(at),
        "rev": new_rev(),
        "ttl": ttl,
        "expires_at": stamp(at + dt.timedelta(minutes=ttl)) if ttl else None,
    }
    key_text = str(op.key) if str(op.key).strip() else "(item)"
    media = [
        (part, leaf, any(indexes(path, toks) for _, toks in paths))
        for part, (path, leaf) in enumerate(leaves, 1)
    ]
    meta["unscored"] = not texts and not any(indexed for _, _, indexed in media)  # no row of it is scored
    rows = [(texts[0] if texts else key_text, {**meta, "part": 0, "indexed": bool(texts)})]
    rows += [(leaf, {**meta, "part": part, "indexed": indexed}) for part, leaf, indexed in media]
    for n, text in enumerate(texts[1:], start=len(leaves) + 1):
        rows.append((text, {**meta, "part": n, "indexed": True}))
    return rows


RRF_K = 60  # reciprocal-rank fusion constant when rankings of several embedding spaces meet


def fuse(
    spaces: dict[str, dict[Any, tuple[str, dict[str, Any], float]]],
) -> list[tuple[str, dict[str, Any], float]]:
    """One ranking from each embedding space's hits ``{item: (namespace, meta, cosine)}``: cosines when
    one space ranked; else reciprocal-rank fusion, equal fused ranks going to the text space first."""
    rankings = {name: sorted(hits.values(), key=lambda h: -h[2]) for name, hits in spaces.items() if hits}
    if len(rankings) <= 1:
        return next(iter(rankings.values()), [])
    fused: dict[tuple[str, str], list[Any]] = {}
    for name, ranking in rankings.items():
        for rank, (ns, meta, _) in enumerate(ranking):
            entry = fused.setdefault((ns, meta["key"]), [ns, meta, 0.0, False])
            entry[2] += 1.0 / (RRF_K + rank + 1)
            entry[3] = entry[3] or name == "text"
    order = sorted(fused.values(), key=lambda e: (-e[2], not e[3]))
    return [(ns, meta, score) for ns, meta, score, _ in order]


def meta_of(row: dict[str, Any]) -> dict[str, Any]:
    meta = row["metadata"]
    return (json.loads(meta) if isinstance(meta, str) else meta)[META]


def matches(condition: Any, namespace: tuple[str, ...]) -> bool:
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    if condition.match_type == "suffix":
        namespace, path = namespace[::-1], path[::-1]
    return all(p == "*" or n == p for n, p in zip(namespace, path, strict=False))
