"""Where a store on object storage is and how to reach it: the URI rules, ``storage_options`` (checked
before any request), and obstore's errors as the ``OSError``s the store handles."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

from aios_memory.errors import InvalidInputError, ObjectStoreError

OPTIONS = frozenset(
    {
        "endpoint",
        "access_key_id",
        "secret_access_key",
        "session_token",
        "region",
        "allow_http",
        "lock_dir",
        "single_writer",
    }
)
_ENV = {
    "endpoint": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
    "access_key_id": ("AWS_ACCESS_KEY_ID",),
    "secret_access_key": ("AWS_SECRET_ACCESS_KEY",),
    "session_token": ("AWS_SESSION_TOKEN",),
    "region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
}
SCHEMES = ("s3", "s3a")


def is_remote(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` is an object-storage URI; any other ``scheme://`` is refused (it would
    otherwise become a local directory named ``gs:``)."""
    if not isinstance(location, str) or "://" not in location:
        return False
    scheme = location.split("://", 1)[0].strip().lower()
    if scheme not in SCHEMES:
        raise InvalidInputError(
            f"{location!r}: stores live in a local directory or at s3://bucket/prefix, not {scheme}://"
        )
    return True


_FLAGS = ("allow_http", "single_writer")
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def _flag(key: str, value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise InvalidInputError(f"storage_options[{key!r}] must be true or false, got {value!r}")


def parse_options(raw: Mapping[str, Any] | None) -> dict[str, Any]:
    if raw is not None and not isinstance(raw, Mapping):
        raise InvalidInputError(f"storage_options must be a mapping, got {type(raw).__name__}")
    opts = dict(raw or {})
    unknown = sorted(map(str, set(opts) - OPTIONS))
    if unknown:
        raise InvalidInputError(f"unknown storage_options {unknown}; known: {', '.join(sorted(OPTIONS))}")
    for key, names in _ENV.items():
        if opts.get(key) is None:
            opts[key] = next((os.environ[n] for n in names if os.environ.get(n)), None)
    for key in OPTIONS - set(_FLAGS):
        value = opts.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise InvalidInputError(f"storage_options[{key!r}] must be a non-empty string, got {value!r}")
    for key in _FLAGS:
        opts[key] = _flag(key, opts.get(key))
    endpoint = opts.get("endpoint")
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise InvalidInputError(f"the endpoint must be an http:// or https:// URL, got {endpoint!r}")
    opts["region"] = opts["region"] or "us-east-1"
    if opts.get("allow_http") is None:
        opts["allow_http"] = str(opts.get("endpoint") or "").startswith("http://")
    return opts


def os_error(exc: BaseException) -> OSError:
    """obstore's errors as ``OSError``s the store handles: a missing object is ``FileNotFoundError``
    (the store decides what that means), anything else a typed :class:`ObjectStoreError`."""
    from obstore.exceptions import NotFoundError

    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, NotFoundError):
        return FileNotFoundError(first)
    return ObjectStoreError(f"object storage: {first}")


@contextlib.contextmanager
def io_errors() -> Iterator[None]:
    from obstore.exceptions import BaseError

    try:
        yield
    except BaseError as exc:
        raise os_error(exc) from exc
    except FileNotFoundError:
        raise
    except (OSError, ValueError, RuntimeError) as exc:  # obstore raises some of these directly
        if isinstance(exc, ObjectStoreError):
            raise
        raise ObjectStoreError(f"object storage: {exc}") from exc
