"""What the framework adapters share: install hints, metadata filters compiled to parameterised SQL, and
vector or id lookups over a namespace's text memories.

Filters never format a value into SQL: every value, and every JSON path built from a (validated)
metadata key, is a parameter. A filter is a tree of ``("and" | "or", [children])``, ``("not", child)``
and ``("cmp", key, op, value)`` with ``op`` one of :data:`OPERATORS`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from aios_memory.errors import InvalidInputError

OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin", "text_match")
KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z_][A-Za-z0-9_\-]*)*")
MAX_KEY_CHARS = 256
_SQL_OPS = {"eq": "=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_NUMBER_TYPES = "('BIGINT', 'UBIGINT', 'DOUBLE')"
# a text memory's columns as the adapters read them (never the vectors)
COLUMNS = "id, namespace, created_at, content, source, metadata"


def require(module: str, extra: str) -> ImportError:
    """The error to raise when an optional framework is missing: it says what to install."""
    return ImportError(f'this adapter needs the {module!r} package: pip install "aios-memory[{extra}]"')


def add_kwargs(store: Any) -> dict[str, Any]:
    """Keyword arguments for ``store.add_many`` from an adapter: deduplication off where the store has it,
    since the frameworks identify documents by their own ids (a deduplicated text would answer with
    another document's id)."""
    import inspect

    return {"dedupe": False} if "dedupe" in inspect.signature(store.add_many).parameters else {}


def store_id(framework: str, namespace: str, given: str) -> str:
    """The memory id a framework's document id gets: ids are store-wide, a collection's ids its own (the
    namespace's length makes the key unambiguous: namespaces may hold ``:``)."""
    return f"{framework}:{len(namespace)}:{namespace}:{given}"


def json_path(key: Any) -> str:
    """The JSON path of a metadata key (``a.b`` is nested); keys are checked, and still passed as parameters."""
    if not isinstance(key, str) or len(key) > MAX_KEY_CHARS or not KEY.fullmatch(key):
        raise InvalidInputError(
            f"metadata filter keys are names like 'kind' or 'author.name' (letters, digits, _ and -), got {key!r}"
        )
    return "$." + ".".join(f'"{part}"' if "-" in part else part for part in key.split("."))


def _scalar(value: Any) -> str | bool | int | float | None:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise InvalidInputError(f"metadata filter values are strings, numbers, booleans or None, got {value!r}")


def _equal(path: str, value: Any) -> tuple[str, list[Any]]:
    """SQL true where the metadata value at ``path`` equals ``value`` (type included), else false/null."""
    value = _scalar(value)
    if value is None:
        return "json_type(metadata, ?) = 'NULL'", [path]
    if isinstance(value, bool):
        return (
            "(json_type(metadata, ?) = 'BOOLEAN' AND json_extract_string(metadata, ?) = ?)",
            [path, path, "true" if value else "false"],
        )
    if isinstance(value, (int, float)):
        return _compare(path, "eq", value)
    return "(json_type(metadata, ?) = 'VARCHAR' AND json_extract_string(metadata, ?) = ?)", [
        path,
        path,
        value,
    ]


def _compare(path: str, op: str, value: Any) -> tuple[str, list[Any]]:
    value = _scalar(value)
    if isinstance(value, bool) or value is None:
        raise InvalidInputError(f"operator {op!r} compares numbers or strings, got {value!r}")
    if isinstance(value, (int, float)):
        return (
            f"(json_type(metadata, ?) IN {_NUMBER_TYPES} AND "
            f"TRY_CAST(json_extract_string(metadata, ?) AS DOUBLE) {_SQL_OPS[op]} ?)",
            [path, path, float(value)],
        )
    return (
        f"(json_type(metadata, ?) = 'VARCHAR' AND json_extract_string(metadata, ?) {_SQL_OPS[op]} ?)",
        [path, path, value],
    )


def _atom(key: str, op: str, value: Any) -> tuple[str, list[Any]]:
    path = json_path(key)
    if op in ("in", "nin"):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
            raise InvalidInputError(f"operator {op!r} takes a non-empty list of values, got {value!r}")
        parts = [_equal(path, v) for v in value]
        sql = "(" + " OR ".join(p for p, _ in parts) + ")"
        params = [x for _, ps in parts for x in ps]
        return (f"NOT COALESCE({sql}, FALSE)" if op == "nin" else f"COALESCE({sql}, FALSE)"), params
    if op in ("eq", "ne"):
        sql, params = _equal(path, value)
        return (f"NOT COALESCE({sql}, FALSE)" if op == "ne" else f"COALESCE({sql}, FALSE)"), params
    if op in _SQL_OPS:
        sql, params = _compare(path, op, value)
        return f"COALESCE({sql}, FALSE)", params
    if op == "text_match":
        if not isinstance(value, str):
            raise InvalidInputError(f"operator 'text_match' takes a string, got {value!r}")
        pattern = "%" + value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        return "COALESCE(json_extract_string(metadata, ?) LIKE ? ESCAPE '\\', FALSE)", [path, pattern]
    raise InvalidInputError(f"unsupported metadata filter operator {op!r}; supported: {', '.join(OPERATORS)}")


def compile_filter(node: Any) -> tuple[str, list[Any]]:
    """A filter tree as an SQL predicate over ``metadata`` and its positional parameters."""
    kind = node[0]
    if kind == "cmp":
        _, key, op, value = node
        return _atom(key, op, value)
    if kind == "not":
        sql, params = compile_filter(node[1])
        return f"(NOT {sql})", params
    if kind in ("and", "or"):
        children = [compile_filter(c) for c in node[1]]
        if not children:
            return ("TRUE" if kind == "and" else "FALSE"), []
        joiner = " AND " if kind == "and" else " OR "
        return "(" + joiner.join(s for s, _ in children) + ")", [p for _, ps in children for p in ps]
    raise InvalidInputError(f"unknown filter node {kind!r}")


_DICT_OPS = {f"${op}": op for op in OPERATORS if op != "text_match"} | {"$like": "text_match"}


def dict_filter(spec: Mapping[str, Any]) -> Any:
    """A LangChain-style filter dict (``{"kind": "fact", "year": {"$gte": 2020}, "$or": [...]}``) as a tree."""
    if not isinstance(spec, Mapping):
        raise InvalidInputError(f"a filter is a dict, got {type(spec).__name__}")
    nodes: list[Any] = []
    for key, value in spec.items():
        if key in ("$and", "$or"):
            if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
                raise InvalidInputError(f"{key} takes a list of filters, got {value!r}")
            nodes.append((key[1:], [dict_filter(v) for v in value]))
        elif key == "$not":
            nodes.append(("not", dict_filter(value)))
        elif isinstance(key, str) and key.startswith("$"):
            raise InvalidInputError(f"unknown filter combinator {key!r}; use $and, $or or $not")
        elif isinstance(value, Mapping):
            for op, operand in value.items():
                if op not in _DICT_OPS:
                    raise InvalidInputError(
                        f"unknown filter operator {op!r} for {key!r}; supported: {', '.join(_DICT_OPS)}"
                    )
                nodes.append(("cmp", key, _DICT_OPS[op], operand))
        else:
            nodes.append(("cmp", key, "eq", value))
    return nodes[0] if len(nodes) == 1 else ("and", nodes)


def vector_search(
    store: Any, vector: Sequence[float], k: int, namespace: str, where: str | None, params: list[Any]
) -> list[dict[str, Any]]:
    """Text memories of ``namespace`` ranked by cosine similarity to ``vector`` (rows with ``score``)."""
    dim = int(store.provider_for("text").dim)
    vec = [float(x) for x in vector]
    if len(vec) != dim:
        raise InvalidInputError(
            f"the query vector has {len(vec)} dimensions; this store's text embeddings have {dim} "
            "(embed queries with the adapter's embeddings class, which uses the store's own model)"
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidInputError(f"k must be a positive integer, got {k!r}")
    sql = (
        f"SELECT {COLUMNS}, array_cosine_similarity(embedding, CAST(? AS FLOAT[{dim}])) AS score "  # noqa: S608 - an int and our column list
        f"FROM text_memories WHERE namespace = ? AND ({where or 'TRUE'}) ORDER BY score DESC, id LIMIT {int(k)}"
    )
    return store.sql(sql, [vec, namespace, *params]).to_pylist()


def select(
    store: Any, namespace: str, where: str | None = None, params: Sequence[Any] = ()
) -> list[dict[str, Any]]:
    """Text memories of ``namespace`` matching a predicate, oldest first."""
    sql = (
        f"SELECT {COLUMNS} FROM text_memories WHERE namespace = ? AND ({where or 'TRUE'}) "  # noqa: S608 - our own predicate text; values are parameters
        "ORDER BY created_at, id"
    )
    return store.sql(sql, [namespace, *params]).to_pylist()


def metadata_of(row: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(row["metadata"]) if row.get("metadata") else {}


def with_text_provider(store: Any, provider: Any) -> Any:
    """``store`` (a ``MemoryStore`` or its path) with its text table bound to ``provider`` (a foreign
    embedding the adapter registered): a path opens with ``providers={"text": name}``; an open handle is
    set to embed text with it. A table made by another model is refused now (``ProviderMismatchError``),
    and a handle bound to another text provider is an ``InvalidInputError``; either way nothing changes."""
    from aios_memory.store import MemoryStore

    if not isinstance(store, MemoryStore):
        store = MemoryStore(store, providers={"text": provider.name})
        store.provider_for("text")  # a table made by another model: refused before anything is written
        return store
    chosen = store._chosen.get("text")  # noqa: SLF001 - the handle's own text choice
    if chosen not in (None, provider.name):
        raise InvalidInputError(
            f"this store handle embeds text with {chosen!r}, not {provider.name!r}; open it without "
            f"providers= or with providers={{'text': {provider.name!r}}}"
        )
    store._chosen["text"] = provider.name  # noqa: SLF001
    try:
        store.provider_for("text")
    except Exception:
        if chosen is None:
            store._chosen.pop("text", None)  # noqa: SLF001 - nothing changed on a refusal
        raise
    return store
