"""The page's HTML as the server sends it: ``static/index.html`` with the caller's counts and first page of
memories already in it, so that a screenshot, a reader without JavaScript or a slow client sees the data
before (or without) ``app.js``. The script then loads the same data from the JSON API and draws it again
in the same places with the same markup and text (times in UTC both ways), so nothing visibly changes.

Everything comes from the store the caller's token allows: ``store`` is ``MemoryStore.scoped(scope)`` and
``listing`` the same scope with the SQL right for the listing's fixed queries, exactly what
``/api/stats`` and ``/api/memories`` use. A request without a valid token never gets here (the handler
answers it with the 401 page). Every string of a memory, a namespace or a token's name is escaped with
:func:`html.escape`; the template's ``{{name}}`` slots are filled in one pass, so nothing inserted is
read as a slot again.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from aios_memory.ui import api

TEMPLATE = Path(__file__).resolve().parent / "static" / "index.html"
PAGE = 24  # memories on the first page: app.js's PAGE
SLOT = re.compile(r"\{\{([a-z_]+)\}\}")
TABLES = ("text", "image", "audio", "video")


def e(value: Any) -> str:
    """``value`` as text in HTML, in an element or a quoted attribute."""
    return escape("" if value is None else str(value), quote=True)


def file_name(source: Any) -> str:
    """The last part of a source path or URL, %-decoded (app.js's ``fileName``)."""
    return unquote(str(source).split("/")[-1]) if source else ""


def when(iso: Any) -> str:
    """A creation time as UTC text, as app.js's ``when`` writes it (its tooltip: the browser's local time)."""
    if not iso:
        return ""
    try:
        stamp = datetime.fromisoformat(str(iso))
    except ValueError:
        return str(iso)
    if stamp.tzinfo is None:
        return stamp.strftime("%Y-%m-%d %H:%M:%S")
    return stamp.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def card(memory: Mapping[str, Any]) -> str:
    """One memory of a listing as app.js's ``card()`` draws it (thumbnails and players by id)."""
    modality = str(memory.get("modality") or "text")
    id = quote(str(memory["id"]), safe="-_.!~*'()")  # encodeURIComponent
    parts = [f'<article class="card {e(modality)}" data-id="{e(memory["id"])}">']
    if modality == "image":
        alt = file_name(memory.get("source")) or "image memory"
        parts.append(f'<img class="thumb" src="/api/thumb/{e(id)}" alt="{e(alt)}">')
    elif modality == "audio":
        parts.append(f'<p class="body transcript">{e(memory.get("transcript") or "(no words heard)")}</p>')
        windowed = "start_s" in memory and "end_s" in memory
        src = f"/api/media/{id}" + (f"#t={memory['start_s']},{memory['end_s']}" if windowed else "")
        parts.append(f'<audio controls preload="metadata" src="{e(src)}"></audio>')
    elif modality == "video":  # the segment's frame as the poster; the player starts at the segment
        parts.append(f'<p class="body transcript">{e(memory.get("transcript") or "(no words heard)")}</p>')
        src = f"/api/media/{id}#t={memory.get('start_s', 0)},{memory.get('end_s', '')}"
        parts.append(f'<video controls preload="none" poster="/api/thumb/{e(id)}" src="{e(src)}"></video>')
    else:
        parts.append(f'<p class="body">{e(memory.get("content"))}</p>')
    meta = [
        f'<span class="kind {e(modality)}">{e(modality)}</span>',
        f'<span class="chip">{e(memory["namespace"])}</span>',
    ]
    if modality in ("audio", "video") and "end_s" in memory:
        meta.append(f"<span>{float(memory['start_s']):.1f} s–{float(memory['end_s']):.1f} s</span>")
    meta.append(f"<span>{e(when(memory.get('created_at')))}</span>")
    parts.append(f'<div class="meta">{"".join(meta)}</div>')
    name = file_name(memory.get("source"))
    if name:
        parts.append(f'<div class="meta source" title="{e(memory["source"])}">{e(name)}</div>')
    parts.append("</article>")
    return "".join(parts)


def caller_line(name: str, described: Mapping[str, Any], version: Any) -> str:
    """The header's 'who is signed in' line (app.js's ``loadStats``)."""
    namespaces = described.get("namespaces")
    where = ", ".join(namespaces) if namespaces else "all namespaces"
    rights = "read-only" if described.get("write") is False else "read and write"
    return f"{name} · {where} · {rights}" + ("" if version is None else f" · version {version}")


def slots(store: Any, listing: Any, caller: str) -> dict[str, str]:
    """The filled slots of the template for ``caller``'s view of the store."""
    stats = store.stats()
    tables = stats.get("tables", {})
    counts = {m: int(tables[m]["memories"]) if m in tables else 0 for m in TABLES}
    modality = "text" if "text" in tables else next((m for m in TABLES if m in tables), "text")
    page = api.list_memories(listing, modality, None, PAGE, 0)
    memories = page["memories"]
    last = min(len(memories), page["total"])
    options = "".join(
        f'<option value="{e(ns)}">{e(ns)} ({e(n)})</option>' for ns, n in stats.get("namespaces", {}).items()
    )
    out = {
        "caller": e(caller_line(caller, store.scope.describe(), stats.get("version"))),
        "counts": "".join(f'<span class="chip">{counts[m]} {m}</span>' for m in TABLES),
        "namespaces": options,
        "grid": "".join(card(m) for m in memories)
        or f'<div class="empty">No {e(modality)} memories here yet.</div>',
        "page_info": f"1–{last} of {page['total']}" if page["total"] else "",
        "next": " disabled" if last >= page["total"] else "",
    }
    for m in TABLES:
        out[f"n_{m}"] = str(counts[m])
        out[f"sel_{m}"] = "true" if m == modality else "false"
    return out


def fill(template: str, values: Mapping[str, str]) -> str:
    """``template`` with each ``{{name}}`` replaced by ``values[name]`` (empty when absent), in one pass."""
    return SLOT.sub(lambda m: values.get(m.group(1), ""), template)


def render_page(store: Any, listing: Any, caller: str, redact: Callable[[str], str]) -> bytes:
    """The page for ``caller`` (already authenticated) over ``store``/``listing`` (its scoped views).

    A store that cannot be read now still gets the page: its grid says why (redacted), and the script
    tries again through the API."""
    from aios_memory.errors import AiosMemoryError

    template = TEMPLATE.read_text(encoding="utf-8")
    try:
        values = slots(store, listing, caller)
    except (AiosMemoryError, api.ApiError) as exc:
        values = {"grid": f'<div class="empty">{e(redact(str(exc)))}</div>', "next": " disabled"}
        values.update({f"sel_{m}": str(m == "text").lower() for m in TABLES})
    return fill(template, values).encode("utf-8")
