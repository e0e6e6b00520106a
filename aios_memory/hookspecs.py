"""The hooks a plugin may implement. Kept short on purpose: one hook per kind of thing a plugin adds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("aios_memory")
hookimpl = pluggy.HookimplMarker("aios_memory")


@hookspec
def register_embedding_providers(register: Callable[[Any], None]) -> None:
    """Register embedding providers by calling ``register(provider)`` once per provider.

    ``provider`` is an instance of :class:`aios_memory.EmbeddingProvider`. Constructing it must be cheap:
    no weights are read and no heavy module is imported until its first embed call.
    """
