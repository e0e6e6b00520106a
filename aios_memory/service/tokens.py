"""Bearer tokens of a store's service: created, listed and revoked by the CLI, stored hashed.

A token reads ``aiosm_<id>_<secret>``: ``id`` (8 hex digits) names it in listings and revocations, the
secret is 32 random bytes (URL-safe base64). The file ``<store>/_service/tokens.json`` (mode 0600) keeps
for each token its id, the SHA-256 of the whole token, its name and its scope; never the token itself, so
a copy of the file grants nothing. (A slow password hash buys nothing for 256 random bits.) Checks
compare digests in constant time. A revocation takes effect on the next request: ``TokenStore`` rereads
the file whenever its modification time or size changes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aios_memory.errors import InvalidInputError, StoreError
from aios_memory.scope import Scope

SERVICE_DIR = "_service"
TOKENS_FILE = "tokens.json"
PREFIX = "aiosm_"
_TOKEN_RE = re.compile(r"aiosm_([0-9a-f]{8})_([A-Za-z0-9_-]{43})")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class TokenInfo:
    id: str
    name: str
    scope: Scope
    created_at: float

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created_at)),
            **self.scope.describe(),
        }


class TokenStore:
    """The tokens of one store (``root``: the store directory)."""

    def __init__(self, root: str | Path) -> None:
        self.dir = Path(root) / SERVICE_DIR
        self.path = self.dir / TOKENS_FILE
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None  # (mtime_ns, size, inode) of the file last read
        self._entries: dict[str, dict[str, Any]] = {}

    # --- reading ---------------------------------------------------------------------------------------
    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            with self._lock:
                self._seen, self._entries = None, {}
            return {}
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        with self._lock:
            if key != self._seen:
                try:
                    data = json.loads(self.path.read_text("utf-8"))
                    entries = {e["id"]: e for e in data["tokens"]}
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    raise StoreError(
                        f"the token file {self.path} is unreadable ({exc}); recreate the tokens"
                    ) from exc
                self._seen, self._entries = key, entries
            return self._entries

    def list(self) -> list[TokenInfo]:
        return [self._info(e) for e in sorted(self._load().values(), key=lambda e: e["created_at"])]

    def verify(self, token: str | None) -> TokenInfo | None:
        """The token's info when ``token`` is a live token of this store, else ``None``."""
        if not isinstance(token, str):
            return None
        match = _TOKEN_RE.fullmatch(token.strip())
        if match is None:
            return None
        entry = self._load().get(match.group(1))
        if entry is None or not hmac.compare_digest(entry["sha256"], _digest(token.strip())):
            return None
        return self._info(entry)

    @staticmethod
    def _info(e: dict[str, Any]) -> TokenInfo:
        ns = e.get("namespaces")
        scope = Scope(
            frozenset(ns) if ns is not None else None,
            write=bool(e["write"]),
            sql=bool(e["sql"]),
            media=True,  # the operator's --allow-media-sql decides; a token only narrows
            admin=False,  # maintenance stays with the store's owner
            label=e["name"],
        )
        return TokenInfo(e["id"], e["name"], scope, float(e["created_at"]))

    # --- changing --------------------------------------------------------------------------------------
    def create(
        self,
        name: str,
        namespaces: list[str] | None,
        *,
        read_only: bool = False,
        sql: bool = True,
    ) -> tuple[str, TokenInfo]:
        """A new token and its info. The token is returned once and never stored."""
        if not isinstance(name, str) or not name.strip() or len(name) > 128:
            raise InvalidInputError("a token needs a name of 1 to 128 characters (who or what it is for)")
        scope = Scope.of(namespaces, write=not read_only, sql=sql, label=name)
        token_id = secrets.token_hex(4)
        token = f"{PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
        entry = {
            "id": token_id,
            "name": name,
            "sha256": _digest(token),
            "namespaces": None if scope.namespaces is None else sorted(scope.namespaces),
            "write": scope.write,
            "sql": scope.sql,
            "created_at": time.time(),
        }

        def change(entries: dict[str, dict[str, Any]]) -> None:
            if token_id in entries:  # 1 in 4 billion: ask for another
                raise InvalidInputError("token id collision; run the command again")
            entries[token_id] = entry

        self._change(change)
        return token, self._info(entry)

    def revoke(self, token_id: str) -> TokenInfo:
        """Remove a token (by its id, or the token itself); it is refused from the next request on."""
        match = _TOKEN_RE.fullmatch(token_id.strip())
        key = match.group(1) if match else token_id.strip()
        removed: list[dict[str, Any]] = []

        def change(entries: dict[str, dict[str, Any]]) -> None:
            if key not in entries:
                raise InvalidInputError(f"no token with id {key!r}; `aios-memory token list` shows them")
            removed.append(entries.pop(key))

        self._change(change)
        return self._info(removed[0])

    def _change(self, change: Any) -> None:
        from filelock import FileLock

        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        with FileLock(str(self.dir / "tokens.lock"), timeout=30):
            entries = dict(self._load())
            change(entries)
            body = json.dumps({"tokens": list(entries.values())}, indent=1).encode("utf-8")
            tmp = self.dir / f".tokens.{os.getpid()}.{secrets.token_hex(4)}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(body)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            dfd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        self._load()
