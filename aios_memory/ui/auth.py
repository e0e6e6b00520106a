"""Who a request of the page comes from, and what of a server's own paths its answers must not name.

A request carries a token in ``Authorization: Bearer <token>`` or in the page's cookie (set by a visit
to ``/?token=<token>``, which then redirects to ``/`` so the token leaves the address bar, as Jupyter
does). Two kinds of token are accepted:

- the **owner token**: made by ``aios-memory ui`` when it starts (:func:`new_owner_token`), held only in
  that process's memory (never written to disk), granting the full scope;
- a **service token** of the store (``aios-memory token create``), checked by
  :class:`aios_memory.service.tokens.TokenStore` (hashed on disk, revocation seen on the next request),
  granting the token's scope.

Comparisons are constant-time: the owner token's SHA-256 against the one held, a service token's
inside ``TokenStore.verify``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aios_memory.scope import FULL, Scope

OWNER_PREFIX = "aiosm-owner_"
OWNER_NAME = "owner"
COOKIE_PREFIX = "aiosm_ui_"  # + the port: browsers share cookies between the ports of one host
MAX_TOKEN_CHARS = 256


def new_owner_token() -> str:
    """A fresh random owner token (256 bits): hand it to :class:`~aios_memory.ui.server.UiServer`."""
    return OWNER_PREFIX + secrets.token_urlsafe(32)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class Caller:
    """An authenticated request's sender: its name (``owner`` or the token's name) and scope."""

    name: str
    scope: Scope


class Gate:
    """Decides who a token belongs to. ``tokens``: a ``TokenStore`` (or anything with its ``verify``)
    whose live tokens are accepted with their scopes, or ``None``; ``owner_token``: a secret accepted
    with the full scope, or ``None``. Only the owner token's digest is kept."""

    def __init__(self, tokens: Any | None, owner_token: str | None) -> None:
        if owner_token is not None and (not isinstance(owner_token, str) or len(owner_token) < 32):
            raise ValueError("owner_token must be a string of at least 32 random characters")
        self.tokens = tokens
        self._owner = _digest(owner_token) if owner_token is not None else None

    def caller(self, token: str | None) -> Caller | None:
        """The caller ``token`` names, or ``None`` (missing, malformed, unknown or revoked)."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        if self._owner is not None and hmac.compare_digest(_digest(token), self._owner):
            return Caller(OWNER_NAME, replace(FULL, label=OWNER_NAME))
        if self.tokens is None or token.startswith(OWNER_PREFIX):
            return None
        info = self.tokens.verify(token)
        return None if info is None else Caller(info.name, info.scope)


def presented_token(headers: Any, cookie_name: str) -> tuple[str | None, bool]:
    """(the token a request presents, whether it came in the cookie). An ``Authorization`` header wins
    over the cookie; a header that is not ``Bearer <token>`` presents an empty token (refused)."""
    auth = headers.get("Authorization")
    if auth is not None:
        match = re.fullmatch(r"\s*[Bb][Ee][Aa][Rr][Ee][Rr]\s+(\S+)\s*", auth)
        return (match.group(1) if match else ""), False
    for header in headers.get_all("Cookie") or []:
        for part in header.split(";"):
            name, sep, value = part.strip().partition("=")
            if sep and name == cookie_name:
                return value.strip().strip('"'), True
    return None, False


def cookie_header(name: str, token: str) -> str:
    """The ``Set-Cookie`` value that keeps ``token`` for this server's pages: not readable by scripts,
    never sent with another site's requests, gone when the browser closes."""
    return f"{name}={token}; HttpOnly; SameSite=Strict; Path=/"


def clear_cookie_header(name: str) -> str:
    return f"{name}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"


class Redactor:
    """Replaces the server's own directories in a message: the store's by ``<store>``, the model home
    by ``<home>``, the user's home by ``~`` (a client never learns the server's file system layout)."""

    def __init__(self, store_root: str | Path) -> None:
        from aios_memory.home import home

        pairs: dict[str, str] = {}
        for root, label in ((Path.home(), "~"), (home(), "<home>"), (Path(store_root), "<store>")):
            for form in {str(root), str(root.absolute()), os.path.realpath(root), root.absolute().as_uri()}:
                if len(form) > 1 and form not in ("file:///", "/"):
                    pairs[form] = label
        self._pairs = sorted(pairs.items(), key=lambda p: -len(p[0]))  # longest first: the store
        # is usually inside the user's home

    def __call__(self, text: str) -> str:
        for path, label in self._pairs:
            text = text.replace(path, label)
        return text
