"""What the page's JSON API returns, and the checks of its request parameters.

Every function here takes the store a request may use: ``MemoryStore.scoped(scope)`` for the caller's
token, which holds only the token's namespaces (reads) and refuses writes outside them. Nothing here
filters results by namespace itself.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

from aios_memory.errors import AiosMemoryError, ProviderError

MODALITIES = ("text", "image", "audio", "video")
MAX_UPLOAD_BYTES = 32 * 1024 * 1024  # a dropped image; larger bodies get 413 before any byte is read
MAX_JSON_BYTES = 64 * 1024
MAX_LIMIT = 200  # memories per page
SQL_TIMEOUT = 10.0  # seconds a listing query or search may run before it is stopped (QueryTimeoutError, 504)
MAX_K = 100  # search results per table
MAX_ID_CHARS = 128
MAX_SOURCE_CHARS = 1024
THUMB_PX = 320
VIEWS = {m: f"{m}_memories" for m in MODALITIES}


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "ApiError") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


# --- request parameters ------------------------------------------------------------------------------
def check_int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, str):
        if not re.fullmatch(r"-?\d{1,9}", value.strip()):
            raise ApiError(400, f"{name} must be an integer, got {value!r}", "InvalidInputError")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ApiError(
            400, f"{name} must be an integer from {low} to {high}, got {value!r}", "InvalidInputError"
        )
    return value


def check_modality(value: Any, allow_all: bool) -> str | None:
    if value in (None, "") and allow_all:
        return None
    if value not in MODALITIES:
        raise ApiError(
            400, f"unknown modality {value!r}; expected one of {', '.join(MODALITIES)}", "InvalidInputError"
        )
    return str(value)


def check_namespace(value: Any) -> str | None:
    if value in (None, ""):
        return None
    from aios_memory.memory import check_namespace as store_rule

    return store_rule(value)  # the store's own rule and message


# --- answers --------------------------------------------------------------------------------------------
def iso(value: Any) -> str | None:
    return value.isoformat() if hasattr(value, "isoformat") else None


def memory_json(modality: str, row: dict[str, Any]) -> dict[str, Any]:
    """One memory for the page: never its media bytes or vectors (the page fetches media by id)."""
    meta = row.get("metadata")
    if isinstance(meta, str):
        meta = json.loads(meta) if meta else {}
    out = {
        "id": row["id"],
        "modality": modality,
        "namespace": row["namespace"],
        "created_at": iso(row.get("created_at")),
        "source": row.get("source"),
        "content": row.get("content"),
        "media_type": row.get("media_type"),
        "metadata": meta or {},
        "provider": row.get("provider"),
    }
    for name in ("start_s", "end_s", "transcript", "score", "media_bytes", "signals"):
        if row.get(name) is not None:
            out[name] = row[name]
    return out


def stats_json(store: Any, caller: str, redact: Any) -> dict[str, Any]:
    """``store.stats()`` (of the caller's namespaces only) without the store's path, plus who the caller
    is and, per table, the kinds of query that can search it."""
    stats = store.stats()
    stats.pop("path", None)  # a server file system path: never sent
    stats["caller"] = {"name": caller, **store.scope.describe()}
    for modality, table in stats["tables"].items():
        accepts = []
        try:
            provider = store.provider_for(modality)
            accepts = sorted({provider.modality, *provider.query_modalities})
            text = store._text_provider_for(modality)  # audio: text queries rank transcripts
            if text is not None and "text" not in accepts:
                accepts.append("text")
        except AiosMemoryError as exc:
            table["error"] = redact(str(exc))
        table["accepts"] = sorted(accepts)
    return stats


def list_memories(
    store: Any, modality: str, namespace: str | None, limit: int, offset: int
) -> dict[str, Any]:
    """One page of ``modality``'s memories, newest first, by two fixed queries (nothing of the request
    is formatted into them). ``store`` must have the SQL right: the caller's handler gives it one for
    these queries only (see ``UiHandler``); its namespaces are the caller's."""
    from aios_memory.schema import EXTRA_COLUMNS, HIDDEN_EXTRA

    if modality not in store.stats()["tables"]:
        return {"modality": modality, "total": 0, "offset": offset, "limit": limit, "memories": []}
    view = VIEWS[modality]  # a fixed identifier: nothing of the request is formatted into the SQL
    where, params = ("WHERE namespace = ?", [namespace]) if namespace is not None else ("", [])
    extra = "".join(f", {f.name}" for f in EXTRA_COLUMNS[modality] if f.name not in HIDDEN_EXTRA)
    cols = "id, namespace, created_at, source, content, media_type, metadata, provider"
    rows = store.sql(
        f"SELECT {cols}, octet_length(media) AS media_bytes{extra} FROM {view} {where} "  # noqa: S608
        "ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
        [*params, limit, offset],
        timeout=SQL_TIMEOUT,
    ).to_pylist()
    count = f"SELECT count(*) AS n FROM {view} {where}"  # noqa: S608
    total = store.sql(count, params, timeout=SQL_TIMEOUT).to_pylist()[0]["n"]
    return {
        "modality": modality,
        "total": total,
        "offset": offset,
        "limit": limit,
        "memories": [memory_json(modality, r) for r in rows],
    }


def search_json(
    store: Any,
    query: Any,
    modality: str | None,
    namespace: str | None,
    k: int,
    redact: Any,
    mode: str | None = None,
) -> dict[str, Any]:
    """Results of one query, best first: ``store.search`` itself (the CLI's and MCP's ranking), so with no
    modality every table the query reaches, fused into one list (docs/concepts.md "Search")."""
    from aios_memory.errors import ModalityError

    try:
        got = store.explain_search(
            query, k=k, modality=modality, namespace=namespace, mode=mode, timeout=SQL_TIMEOUT
        )
    except (ModalityError, ProviderError) as exc:
        if modality is not None:  # the one table asked for cannot take this query: a bad request
            raise
        return {"results": [], "searched": [], "skipped": {"all": redact(str(exc))}}
    signals = got.get("signals")
    searched = (
        list(dict.fromkeys(s["table"] for s in signals)) if signals else [got.get("modality") or "text"]
    )
    skipped = {t: redact(reason) for t, reason in got.get("skipped", {}).items()}
    results = [memory_json(m.modality, {**m.__dict__, **m.extra}) for m in got["results"]]
    return {"results": results, "searched": searched, "skipped": skipped}


def add_memory(store: Any, data: bytes, ctype: str, namespace: str | None, source: str | None) -> Any:
    """Store one uploaded memory: ``text/plain`` bodies as UTF-8 text, any other body as media bytes
    (the store decides image or audio from them). The store refuses a namespace outside the scope."""
    if not data:
        raise ApiError(400, "the body is empty: send the memory's content", "EmptyContentError")
    if source is not None and len(source) > MAX_SOURCE_CHARS:
        raise ApiError(400, f"source is over {MAX_SOURCE_CHARS} characters", "InvalidInputError")
    content: str | bytes = data
    if ctype == "text/plain":
        try:
            content = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ApiError(
                400, f"text/plain bodies must be UTF-8 ({exc.reason})", "InvalidInputError"
            ) from None
    id = store.add(content, namespace=namespace or "default", source=source or None)
    memory = store.get(id)
    size = len(memory.media) if memory.media else None
    return memory_json(memory.modality, {**memory.__dict__, **memory.extra, "media_bytes": size})


def thumbnail(data: bytes) -> tuple[bytes, str]:
    """A small PNG (images with alpha) or JPEG of an image memory, at most THUMB_PX on its long side."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (THUMB_PX, THUMB_PX))  # JPEG: decode at a reduced scale
        img = ImageOps.exif_transpose(img)
        img.thumbnail((THUMB_PX, THUMB_PX))
        alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
        img = img.convert("RGBA" if alpha else "RGB")
        buf = io.BytesIO()
        if alpha:
            img.save(buf, format="PNG", optimize=True)
            return buf.getvalue(), "image/png"
        img.save(buf, format="JPEG", quality=85)
        return buf.getvalue(), "image/jpeg"
