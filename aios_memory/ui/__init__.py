"""``aios-memory ui``: a small local web page to browse and search a store (loopback only, tokens).

Python's ``http.server``, a JSON API and one static page shipped with the package: no web framework,
no CDN, no build step. :mod:`aios_memory.ui.server` (the server and the command),
:mod:`aios_memory.ui.handler` (routes), :mod:`aios_memory.ui.auth` (tokens, cookie, redaction),
:mod:`aios_memory.ui.api` (JSON answers). See docs/ui.md.
"""

from __future__ import annotations

__all__ = ["UiServer", "build_server", "new_owner_token"]


def __getattr__(name: str) -> object:  # keep `import aios_memory.ui` free of the store and click
    if name in __all__:
        from aios_memory.ui import server

        return getattr(server, name)
    raise AttributeError(name)
