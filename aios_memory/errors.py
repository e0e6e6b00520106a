"""The exception hierarchy: every error aios-memory raises on purpose is an ``AiosMemoryError``.

Callers catch the base class, or one branch of it; each message says what was wrong and, where there
is one, what to do about it. Errors that are also a builtin kind (bad value, missing key) inherit that
builtin too, so ``except ValueError`` keeps working for callers who know nothing of this module.
"""

from __future__ import annotations


class AiosMemoryError(Exception):
    """Base class of every error raised by aios-memory."""


# --- input -------------------------------------------------------------------------------------------
class InvalidInputError(AiosMemoryError, ValueError):
    """The caller's input cannot be stored or searched as given."""


class EmptyContentError(InvalidInputError):
    """Text that is empty or only whitespace, or media with no bytes."""


class UnsupportedMediaError(InvalidInputError):
    """Bytes whose format is neither a known image nor a known audio format."""


class ModalityError(InvalidInputError):
    """Content of one modality given where another is required."""


class InputTooLargeError(InvalidInputError):
    """Input over one of the documented limits (text length, media bytes, image pixels, audio duration)."""


# --- providers and models ----------------------------------------------------------------------------
class ProviderError(AiosMemoryError):
    """An embedding provider failed or returned something unusable."""


class ProviderNotFoundError(ProviderError, LookupError):
    """No registered provider has the requested name or serves the requested modality."""


class ProviderMismatchError(ProviderError):
    """A table was built with one provider and is being extended or queried with another."""


class ModelNotInstalledError(ProviderError):
    """A provider's weights have not been converted into the model directory yet."""


class WeightFileError(AiosMemoryError):
    """A Parquet weight file is missing, truncated, corrupt, tampered with or of the wrong model."""


# --- store and queries -------------------------------------------------------------------------------
class StoreError(AiosMemoryError):
    """The store cannot carry out an operation."""


class StoreNotFoundError(StoreError):
    """The location holds no store (a store is created by its first write); the message names it."""


NOT_FOUND_HINT = (  # what a StoreNotFoundError's message ends with
    "; check the path, or create the store with `aios-memory --store PATH init` (`add` and `import` also do)"
)


class ObjectStoreError(StoreError, OSError):
    """A request to the object store failed (unreachable, denied, no such bucket); the message says which."""


class StoreCorruptError(StoreError):
    """A manifest or fragment on disk is damaged; the message names the file."""


class MemoryNotFoundError(StoreError, KeyError):
    """No memory has the given id."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else "memory not found"


class VersionNotFoundError(StoreError, LookupError):
    """A version that is not (or no longer) retained: ``cleanup`` removed it after the retention period."""


class CommitConflictError(StoreError):
    """Another writer committed the version this writer meant to create (retried internally)."""


class QueryError(AiosMemoryError, ValueError):
    """SQL that is not valid, refers to unknown columns, or tries to write."""


class QueryTimeoutError(QueryError):
    """A query or search ran past its time limit and was stopped; the message says the limit and how to
    raise it."""


class AccessDeniedError(AiosMemoryError, PermissionError):
    """The caller's scope (a token's namespaces and rights) does not allow the operation; nothing changed.
    Memories outside the scope are never named: reading one by id is a ``MemoryNotFoundError``."""
