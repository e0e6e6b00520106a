"""What a caller may see and do: the namespaces it reads and writes, and its rights.

``MemoryStore.scoped(scope)`` returns a view of the same store that enforces a ``Scope`` in the store
layer itself: the DuckDB views behind ``sql`` and a search's ``where`` hold only the scope's rows (and no
``media`` column without the media right), searches select only the scope's rows, ``get``/``history``
of a memory outside the scope is ``MemoryNotFoundError``, and writes outside it are
``AccessDeniedError`` with nothing changed. The service (tokens, the daemon, the web page) only chooses
the scope; it never filters results itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from aios_memory.errors import AccessDeniedError, InvalidInputError


@dataclass(frozen=True)
class Scope:
    """``namespaces``: the namespaces readable and writable (``None``: all). ``write``: may add, update
    and delete. ``sql``: may run ``sql()``. ``media``: SQL views carry the ``media`` bytes column.
    ``admin``: may compact, clean up, index, verify and pin versions."""

    namespaces: frozenset[str] | None = None
    write: bool = True
    sql: bool = True
    media: bool = True
    admin: bool = True
    label: str = field(default="", compare=False)  # who holds it (a token's name), for messages and logs
    why: str = field(default="", compare=False)  # why it is read-only, when no token made it so

    @classmethod
    def of(
        cls,
        namespaces: Iterable[str] | None = None,
        *,
        write: bool = True,
        sql: bool = True,
        media: bool = True,
        admin: bool = False,
        label: str = "",
    ) -> Scope:
        """A scope with checked namespace names (``admin`` defaults to False here)."""
        from aios_memory.memory import check_namespace  # pyarrow: not on the serve proxy's import path

        if namespaces is not None:
            if isinstance(namespaces, str):
                raise InvalidInputError("namespaces must be a list of names, not one string")
            names = frozenset(check_namespace(n) for n in namespaces)
            if not names:
                raise InvalidInputError("a scope needs at least one namespace (or None for all)")
        else:
            names = None
        return cls(names, bool(write), bool(sql), bool(media), bool(admin), label)

    @property
    def unrestricted(self) -> bool:
        return self == FULL

    def narrow(self, other: Scope) -> Scope:
        """The rights both scopes grant (a token presented on a socket narrows the socket's scope)."""
        if self.namespaces is None:
            names = other.namespaces
        elif other.namespaces is None:
            names = self.namespaces
        else:
            names = self.namespaces & other.namespaces
        return Scope(
            names,
            self.write and other.write,
            self.sql and other.sql,
            self.media and other.media,
            self.admin and other.admin,
            other.label or self.label,
            other.why or self.why,
        )

    def with_media(self, media: bool) -> Scope:
        return replace(self, media=self.media and media)

    # --- checks the store makes ----------------------------------------------------------------------
    def sees(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces

    def readable(self, namespace: str | None) -> list[str] | None:
        """The namespaces a read of ``namespace`` (``None``: every namespace) may select; ``None`` means
        no restriction. A namespace outside the scope is refused (``AccessDeniedError``)."""
        if namespace is not None and not self.sees(namespace):
            raise AccessDeniedError(f"{self._who()}may not read namespace {namespace!r}")
        if namespace is not None:
            return [namespace]
        return None if self.namespaces is None else sorted(self.namespaces)

    def check_write(self, namespace: str | None = None) -> None:
        if not self.write:
            raise AccessDeniedError(f"{self.why or self._who() + 'is read-only'}; nothing was changed")
        if namespace is not None and not self.sees(namespace):
            raise AccessDeniedError(
                f"{self._who()}may not write namespace {namespace!r}; nothing was changed"
            )

    def check_sql(self) -> None:
        if not self.sql:
            raise AccessDeniedError(f"{self._who()}may not run SQL")

    def check_admin(self, what: str) -> None:
        if not self.admin:
            if self.why:
                raise AccessDeniedError(f"{self.why}: it may not {what}")
            raise AccessDeniedError(f"{self._who()}may not {what} (store maintenance needs full access)")

    def _who(self) -> str:
        return f"token {self.label!r} " if self.label else "this caller "

    def describe(self) -> dict[str, Any]:
        return {
            "namespaces": None if self.namespaces is None else sorted(self.namespaces),
            "write": self.write,
            "sql": self.sql,
            "media": self.media,
            "admin": self.admin,
        }


FULL = Scope()  # what an in-process MemoryStore has: everything
