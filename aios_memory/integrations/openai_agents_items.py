"""What one OpenAI Agents SDK session item becomes in the store: its searchable text (the memory's
content) and its JSON (kept in the memory's metadata and returned as given)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aios_memory.errors import InvalidInputError
from aios_memory.modality import MAX_TEXT_CHARS


def _texts(value: Any) -> list[str]:
    """The text of a ``content`` / ``output`` / ``summary`` value: a string, or its parts' texts."""
    if isinstance(value, str):
        return [value]
    parts = [p for p in value if isinstance(p, dict)] if isinstance(value, list) else []
    texts = [p.get("text", p.get("refusal", p.get("transcript"))) for p in parts]
    return [t for t in texts if isinstance(t, str)]


def _clean(text: str) -> str:
    """Text the store accepts: no NUL, no lone surrogate, at most its length limit."""
    text = text.replace("\x00", " ").encode("utf-8", "replace").decode("utf-8")
    return text[:MAX_TEXT_CHARS]


def content_of(item: Mapping[str, Any]) -> str:
    """The searchable text of an item (a message's text, ``name(arguments)`` of a tool call, a tool's
    output, a reasoning summary), or its compact JSON when it has none."""
    kind = item.get("type")
    if kind in ("function_call", "custom_tool_call"):
        args = item.get("arguments", item.get("input", ""))
        texts = [f"{item.get('name', '')}({args if isinstance(args, str) else json.dumps(args)})"]
    elif isinstance(kind, str) and kind.endswith("_call_output"):
        texts = _texts(item.get("output"))
    elif kind == "reasoning":
        texts = _texts(item.get("summary")) + _texts(item.get("content"))
    else:
        texts = _texts(item.get("content"))
    text = _clean("\n".join(t for t in texts if t.strip()))
    if not text.strip():
        text = _clean(json.dumps(item, ensure_ascii=False, separators=(",", ":")))
    return text


def item_json(item: Any) -> str:
    """An item as the JSON text kept in its memory's metadata; ``InvalidInputError`` if it is not a
    JSON-serialisable dict."""
    if not isinstance(item, dict):
        raise InvalidInputError(f"session items are dicts (JSON objects), got {type(item).__name__}")
    try:
        text = json.dumps(item, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"a session item must be JSON-serialisable: {exc}") from exc
    except RecursionError:
        raise InvalidInputError("a session item is nested too deeply") from None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: keep it escaped, as json.dumps does by default
        text = json.dumps(item)
    return text
