"""A memory as the Python API returns it, and the checks shared by reads and writes."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aios_memory.errors import InvalidInputError
from aios_memory.schema import EXTRA_COLUMNS, HIDDEN_EXTRA


@dataclass
class Memory:
    id: str
    modality: str
    namespace: str
    created_at: dt.datetime
    content: str | None = None
    source: str | None = None
    media_type: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    provider: str = ""
    updated_at: dt.datetime | None = None
    score: float | None = None
    media: bytes | None = field(default=None, repr=False)
    extra: dict[str, Any] = field(default_factory=dict)  # modality columns: start_s, end_s, transcript

    def as_dict(self) -> dict[str, Any]:
        """What a client sees of a memory, in one shape for the CLI's ``--json`` and MCP: everything
        but the media bytes, the vectors and the provider; the modality's columns at the top level."""
        out: dict[str, Any] = {
            "id": self.id,
            "modality": self.modality,
            "namespace": self.namespace,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "content": self.content,
            "source": self.source,
            "media_type": self.media_type,
            "metadata": self.metadata,
        }
        if self.score is not None:
            out["score"] = float(self.score)
        shown = {k: v for k, v in (self.extra or {}).items() if k not in HIDDEN_EXTRA}
        return {**out, **shown}  # audio and video: start_s, end_s, transcript


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def item_list(items: Any) -> list[Any]:
    """``add_many``'s items as a list; a single string or bytes, or a non-iterable, is refused."""
    if isinstance(items, (str, bytes, bytearray)):
        raise InvalidInputError("adding many memories takes a list of items, not a single string or bytes")
    try:
        return list(items)
    except TypeError:
        raise InvalidInputError(
            f"adding many memories takes a list of items, got {type(items).__name__}"
        ) from None


def check_namespace(namespace: Any) -> str:
    if not isinstance(namespace, str) or not namespace or len(namespace) > 256 or "\x00" in namespace:
        raise InvalidInputError(
            f"namespace must be a non-empty string of at most 256 characters, got {namespace!r}"
        )
    check_utf8(namespace, "namespace")
    return namespace


def check_utf8(text: str, what: str) -> str:
    """Refuse strings that cannot be stored as UTF-8 (lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(f"{what} is not valid Unicode text ({exc.reason} at {exc.start})") from None
    return text


def metadata_json(metadata: Any) -> str:
    if metadata is None:
        return "{}"
    if not isinstance(metadata, Mapping):
        raise InvalidInputError(f"metadata must be a JSON object, got {type(metadata).__name__}")
    try:
        text = json.dumps(dict(metadata), ensure_ascii=False, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"metadata must be JSON-serialisable: {exc}") from exc
    except RecursionError:
        raise InvalidInputError("metadata is nested too deeply") from None
    return check_utf8(text, "metadata")


def per_item(
    metadata: Mapping[str, Any] | Sequence[Mapping[str, Any] | None] | None,
    sources: Sequence[str | None] | None,
    n: int,
) -> tuple[list[str], list[str | None]]:
    """A write's metadata (one dict for every item, or one per item) as JSON, and its sources, per item."""
    if isinstance(metadata, Mapping) or metadata is None:
        metas = [metadata_json(metadata)] * n
    elif isinstance(metadata, Sequence) and not isinstance(metadata, (str, bytes, bytearray)):
        metas = [metadata_json(m) for m in metadata]
        if len(metas) != n:
            raise InvalidInputError(f"got {len(metas)} metadata entries for {n} items")
    else:
        raise InvalidInputError(
            f"metadata must be a JSON object, or a list with one object per item; got {type(metadata).__name__}"
        )
    if isinstance(sources, (str, bytes, bytearray)):
        raise InvalidInputError("sources must be a list with one source per item, not a single string")
    srcs = list(sources) if sources is not None else [None] * n
    if len(srcs) != n:
        raise InvalidInputError(f"got {len(srcs)} sources for {n} items")
    return metas, srcs


def memory_from_row(modality: str, row: dict[str, Any]) -> Memory:
    return Memory(
        id=row["id"],
        modality=modality,
        namespace=row["namespace"],
        created_at=row["created_at"],
        updated_at=row.get("updated_at"),
        content=row.get("content"),
        source=row.get("source"),
        media_type=row.get("media_type"),
        metadata=json.loads(row["metadata"]) if row.get("metadata") else {},
        provider=row.get("provider", ""),
        score=row.get("score"),
        media=row.get("media"),
        extra={f.name: row.get(f.name) for f in EXTRA_COLUMNS[modality]},
    )


def metadata_filter(
    filter: Any, prefix: str = "aiosm_f", *, named: bool = True
) -> tuple[str, dict[str, Any] | list[Any]]:
    """An SQL predicate and its named parameters for ``{"key": value, ...}`` equality on metadata.

    A value matches when the metadata's JSON value at that key is equal to it (``json.dumps`` form, so
    ``1`` and ``1.0`` differ); a list or tuple matches any of its values. Keys and values travel as
    parameters: nothing of the filter is formatted into the SQL text. ``named=False`` gives ``?``
    placeholders and a list, for predicates that sit beside positional parameters.
    """
    if not isinstance(filter, Mapping) or not filter:
        raise InvalidInputError(
            "filter must be a non-empty dict of metadata key -> value (or list of values)"
        )
    clauses, params, positional = [], {}, []
    for i, (key, value) in enumerate(filter.items()):
        if not isinstance(key, str) or not key or len(key) > 256 or "\x00" in key:
            raise InvalidInputError(
                f"filter keys are non-empty strings of at most 256 characters, got {key!r}"
            )
        check_utf8(key, "a filter key")
        options = list(value) if isinstance(value, (list, tuple)) else [value]
        if not options:
            raise InvalidInputError(f"filter value for {key!r} is an empty list: nothing could match")
        path = "$." + json.dumps(key, ensure_ascii=False)  # $."key" quotes any character
        params[f"{prefix}{i}p"] = path
        alts = []
        for j, option in enumerate(options):
            try:
                text = json.dumps(option, ensure_ascii=False, allow_nan=False, sort_keys=True)
            except (TypeError, ValueError) as exc:
                raise InvalidInputError(f"filter value for {key!r} is not JSON: {exc}") from None
            params[f"{prefix}{i}v{j}"] = check_utf8(text, "a filter value")
            alts.append(f"json_extract(metadata, ${prefix}{i}p) = json(${prefix}{i}v{j})")
            positional.extend([path, params[f"{prefix}{i}v{j}"]])
        clauses.append("(" + " OR ".join(alts) + ")")
    where = " AND ".join(clauses)
    if not named:
        return re.sub(r"\$" + re.escape(prefix) + r"\w+", "?", where), positional
    return where, params


def with_metadata_filter(where: str | None, params: Any, filter: Any) -> tuple[str | None, Any]:
    """``where``/``params`` with a metadata ``filter`` ANDed in, in the caller's parameter style."""
    if filter is None:
        return where, params
    if isinstance(params, Mapping):
        clause, named = metadata_filter(filter, prefix="aiosmf_")
        clash = sorted(set(params) & set(named))  # type: ignore[arg-type]
        if clash:
            raise InvalidInputError(f"parameter names {clash} collide with the metadata filter's own")
        return (f"({where}) AND {clause}" if where else clause), {**params, **named}  # type: ignore[dict-item]
    if params is not None and (
        isinstance(params, (str, bytes, bytearray)) or not isinstance(params, Sequence)
    ):
        return where, params  # the search refuses these params with its own message
    clause, positional = metadata_filter(filter, prefix="aiosmf_", named=False)
    return (f"({where}) AND {clause}" if where else clause), [*(params or []), *positional]  # type: ignore[misc]
