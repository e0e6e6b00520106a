"""How a LangGraph item lives in a ``MemoryStore``: namespaces, the rows of one item, media leaves,
and the ``filter`` of ``BaseStore.search`` as a parameterised SQL predicate.

An item ``(namespace, key, value)`` becomes one or more memories in the store namespace
``".".join(namespace)`` (LangGraph forbids ``.`` inside a label, so the mapping is one to one). Every row
carries ``key``, ``rev`` (one per put: the newest rev of a key is the item), ``updated_at``, ``part`` (0:
the head row; 1..: more passages), ``indexed`` (this row is scored by a query) and ``unscored`` (no row of
the item is) in its metadata under ``"langgraph"``; the head row also holds ``value`` (``None`` where a
media leaf was; ``media`` lists those leaves), ``created_at`` and ``expires_at``/``ttl``, so a value is
stored once however many rows its item has. Row 0 is a text memory: the first indexed text, or the key
when nothing of the item is indexed.
Further indexed texts are more text rows; a ``bytes`` or ``pathlib.Path`` leaf (an image or audio file)
is a row of the image or audio table, embedded by CLIP or Whisper.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from langgraph.store.base import get_text_at_path, tokenize_path

from aios_memory.errors import InvalidInputError
from aios_memory.memory import check_utf8

META = "langgraph"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%f+00:00"  # fixed width: ISO strings order as the times do
OPERATORS = {"$eq", "$ne", "$gt", "$gte", "$lt", "$lte"}
_CMP = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_NUMBERS = "('BIGINT', 'UBIGINT', 'DOUBLE')"
MAX_TTL_MINUTES = 60 * 24 * 366 * 100  # a century


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


def _value_path(keys: list[Any]) -> str:
    """The JSON Pointer of a field of the value: any string key, escaped (``~`` as ``~0``, ``/`` as ``~1``)."""
    for k in keys:
        if not isinstance(k, str):
            raise InvalidInputError(f"filter keys are strings, got {k!r}")
        check_utf8(k, "a filter key")
    return f"/{META}/value/" + "/".join(k.replace("~", "~0").replace("/", "~1") for k in keys)


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
    if isinstance(value, int) and -(2**63) < value < 2**63:  # exactly, as JSON integers compare
        return (
            "((json_type(metadata, ?) IN ('BIGINT', 'UBIGINT') AND "
            "TRY_CAST(json_extract_string(metadata, ?) AS HUGEINT) = ?) OR "
            "(json_type(metadata, ?) = 'DOUBLE' AND TRY_CAST(json_extract_string(metadata, ?) AS DOUBLE) = ?))",
            [path, path, value, path, path, float(value)],
        )
    if isinstance(value, (int, float)):
        return (
            f"(json_type(metadata, ?) IN {_NUMBERS} AND TRY_CAST(json_extract_string(metadata, ?) AS DOUBLE) = ?)",
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
    return (  # numbers only: a string "1" is not greater than 0
        f"COALESCE(json_type(metadata, ?) IN {_NUMBERS} AND "
        f"TRY_CAST(json_extract_string(metadata, ?) AS DOUBLE) {_CMP[op]} ?, FALSE)",
        [path, path, float(value)],
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
        if isinstance(key, str) and key.startswith("$") and not keys:
            raise InvalidInputError(
                f"{key!r} is not a LangGraph filter; a filter is field -> value or {{op: value}}"
            )
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


def split_media(value: Any, path: tuple[Any, ...] = ()) -> tuple[Any, list[tuple[tuple[Any, ...], Any]]]:
    """``(plain, leaves)``: the value with each ``bytes``/``Path`` leaf as ``None``, and those leaves with
    their paths (keys and list indexes), in order."""
    if isinstance(value, (bytes, bytearray, memoryview, Path)):
        return None, [(path, value if isinstance(value, Path) else bytes(value))]
    if isinstance(value, Mapping):
        plain, leaves = {}, []
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidInputError(f"item values have string keys, got {k!r}")
            plain[k], more = split_media(v, (*path, k))
            leaves += more
        return plain, leaves
    if isinstance(value, (list, tuple)):
        pairs = [split_media(v, (*path, i)) for i, v in enumerate(value)]
        return [p for p, _ in pairs], [x for _, more in pairs for x in more]
    return value, []


def check_json(plain: Any) -> str:
    try:
        return _json_text(plain)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"an item's value must be JSON (plus bytes or Path leaves): {exc}") from None
    except RecursionError:
        raise InvalidInputError("an item's value is nested too deeply") from None


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


def restore(value: Any, media: list[list[Any]], data: Mapping[int, bytes]) -> Any:
    """The value as it was put: each media leaf (``[path, part, file]``) back as its ``Path`` or the bytes
    of its row (``data[part]``)."""
    for path, part, file in media:
        node = value
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = Path(file) if file is not None else data.get(part)
    return value


def check_ttl(ttl: Any) -> float | None:
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 <= ttl <= MAX_TTL_MINUTES:
        raise InvalidInputError(f"ttl is a number of minutes from 0 to {MAX_TTL_MINUTES}, got {ttl!r}")
    return float(ttl)


def new_rev() -> str:
    return uuid.uuid4().hex


def tokens(paths: Any) -> list[tuple[str, Any]]:
    return [(p, "$" if p == "$" else tokenize_path(p)) for p in paths]


def item_rows(
    op: Any, fields: list[tuple[str, Any]], created_at: str, at: dt.datetime
) -> list[tuple[Any, dict[str, Any]]]:
    """The (content, metadata) of each row of the item ``op`` puts; ``InvalidInputError`` for a value,
    key or ttl the store cannot keep (before anything is written)."""
    if not isinstance(op.value, Mapping):
        raise InvalidInputError(f"an item's value is a dict, got {type(op.value).__name__}")
    key = check_utf8(str(op.key), "an item key")
    for label in op.namespace:
        check_utf8(label, "a namespace label")
    plain, leaves = split_media(dict(op.value))
    check_json(plain)
    paths = fields if op.index is None else ([] if op.index is False else tokens(op.index))
    texts = [t for _, toks in paths for t in get_text_at_path(plain, toks) if t.strip()]
    ttl = check_ttl(op.ttl)
    media = [
        (part, leaf, any(indexes(path, toks) for _, toks in paths))
        for part, (path, leaf) in enumerate(leaves, 1)
    ]
    common = {"key": key, "rev": new_rev(), "updated_at": stamp(at)}
    common["unscored"] = not texts and not any(indexed for _, _, indexed in media)  # no row of it is scored
    head = {
        **common,
        "value": plain,
        "media": [[list(path), part, str(leaf) if isinstance(leaf, Path) else None]
                  for part, (path, leaf) in enumerate(leaves, 1)],
        "created_at": created_at,
        "ttl": ttl,
        "expires_at": stamp(at + dt.timedelta(minutes=ttl)) if ttl is not None else None,
    }  # fmt: skip
    rows = [
        (
            texts[0] if texts else (key if key.strip() else "(item)"),
            {**head, "part": 0, "indexed": bool(texts)},
        )
    ]
    rows += [(leaf, {**common, "part": part, "indexed": indexed}) for part, leaf, indexed in media]
    for n, text in enumerate(texts[1:], start=len(leaves) + 1):
        rows.append((text, {**common, "part": n, "indexed": True}))
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


def head_of(row: dict[str, Any]) -> dict[str, Any] | None:
    """The item a head row holds, or ``None`` for a row that is not a well-formed item (written by hand
    through SQL-less APIs, MCP or another tool): such rows are never returned, and a put of their key
    replaces them."""
    try:
        meta = meta_of(row)
        ok = isinstance(meta["value"], dict) and isinstance(meta["key"], str) and isinstance(meta["rev"], str)
        ok = ok and all(_valid_media(m, meta["value"]) for m in meta.get("media") or [])
        meta["_created"] = dt.datetime.fromisoformat(meta["created_at"])
        meta["_updated"] = dt.datetime.fromisoformat(meta["updated_at"])
    except (KeyError, TypeError, ValueError):
        return None
    return meta if ok else None


def _valid_media(entry: Any, value: Any) -> bool:
    try:
        path, part, file = entry
        node = value
        for step in path[:-1]:
            node = node[step]
        return (
            isinstance(part, int)
            and (file is None or isinstance(file, str))
            and path[-1] in (node if isinstance(node, dict) else range(len(node)))
        )
    except (TypeError, ValueError, KeyError, IndexError):
        return False


def matches(condition: Any, namespace: tuple[str, ...]) -> bool:
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    if condition.match_type == "suffix":
        namespace, path = namespace[::-1], path[::-1]
    return all(p == "*" or n == p for n, p in zip(namespace, path, strict=False))


def index_fields(config: dict[str, Any]) -> list[str]:
    fields = config.get("fields") or ["$"]
    if isinstance(fields, str) or not all(isinstance(f, str) and f for f in fields):
        raise InvalidInputError(f"index['fields'] is a list of paths such as ['text'], got {fields!r}")
    return list(fields)


def check_media(value: Any) -> None:
    """Each ``bytes``/``Path`` leaf must be an image or audio file the store can keep; the error names
    the leaf, never the file's bytes."""
    from aios_memory.errors import AiosMemoryError
    from aios_memory.modality import prepare

    for path, leaf in split_media(value)[1]:
        try:
            prepare(leaf)
        except (AiosMemoryError, OSError) as exc:
            raise InvalidInputError(
                f"the value's leaf at {list(path)} is not an image or audio file the store can keep "
                f"({type(exc).__name__}); bytes and Path leaves are media"
            ) from None


def space(store: Any, modality: str) -> str:
    """The embedding space a text query is ranked in on ``modality``'s table: the text provider's for
    text and for tables ranked by a derived text (audio transcripts), else the table's provider's."""
    from aios_memory.schema import TEXT_COLUMN

    provider = store.provider_for(modality)
    if modality == "text" or ("text" not in provider.query_modalities and modality in TEXT_COLUMN):
        return "text"
    return str(provider.name)
