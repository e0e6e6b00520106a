"""``aios-memory ui``: a small local web page to browse and search a store (loopback only).

Python's ``http.server``, a JSON API and one static page shipped with the package: no web framework,
no CDN, no build step. See :mod:`aios_memory.ui.server` and docs/ui.md.
"""

from __future__ import annotations

__all__ = ["build_server"]


def __getattr__(name: str) -> object:  # keep `import aios_memory.ui` free of the store and click
    if name == "build_server":
        from aios_memory.ui.server import build_server

        return build_server
    raise AttributeError(name)
