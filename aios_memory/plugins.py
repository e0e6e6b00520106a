"""The one plugin manager. Bundled plugins load through the entry-point group a third party uses."""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

import pluggy

from aios_memory import hookspecs
from aios_memory.errors import ProviderError, ProviderNotFoundError

if TYPE_CHECKING:
    from aios_memory.provider import EmbeddingProvider

ENTRY_POINT_GROUP = "aios_memory"
# The provider a modality gets when the store has no table for it yet and the caller names none.
DEFAULT_PROVIDERS = {
    "text": "minilm-l6-v2",
    "image": "clip-vit-b-32",
    "audio": "whisper-base",
    "video": "clip-whisper-video",
}

pm = pluggy.PluginManager("aios_memory")
pm.add_hookspecs(hookspecs)

_lock = threading.RLock()
_loaded = False
_providers: dict[str, EmbeddingProvider] | None = None


def load_plugins() -> pluggy.PluginManager:
    """Load every plugin installed under the entry-point group, once per process (idempotent).

    ``AIOS_MEMORY_BLOCK_PLUGINS`` may name plugins (comma separated entry-point names) to skip.
    """
    global _loaded
    with _lock:
        if not _loaded:
            for name in filter(None, os.environ.get("AIOS_MEMORY_BLOCK_PLUGINS", "").split(",")):
                pm.set_blocked(name.strip())
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
            pm.check_pending()
            _loaded = True
    return pm


def register_plugin(plugin: object, name: str | None = None) -> None:
    """Register an in-process plugin object or module (tests, notebooks); invalidates the provider cache."""
    global _providers
    with _lock:
        load_plugins()
        pm.register(plugin, name=name)
        pm.check_pending()
        _providers = None


def unregister_plugin(plugin: object) -> None:
    global _providers
    with _lock:
        pm.unregister(plugin)
        _providers = None


def get_providers() -> dict[str, EmbeddingProvider]:
    """All registered providers by name. Building this imports plugin modules, never model code."""
    global _providers
    from aios_memory.provider import EmbeddingProvider

    with _lock:
        if _providers is None:
            load_plugins()
            found: dict[str, EmbeddingProvider] = {}

            def register(provider: EmbeddingProvider) -> None:
                if not isinstance(provider, EmbeddingProvider):
                    raise ProviderError(
                        f"register() takes an EmbeddingProvider instance, got {type(provider).__name__}"
                    )
                if provider.name in found:
                    raise ProviderError(f"two plugins register a provider named {provider.name!r}")
                found[provider.name] = provider

            pm.hook.register_embedding_providers(register=register)
            _providers = found
        return dict(_providers)


def get_provider(name: str) -> EmbeddingProvider:
    providers = get_providers()
    try:
        return providers[name]
    except KeyError:
        known = ", ".join(sorted(providers)) or "none"
        raise ProviderNotFoundError(f"unknown provider {name!r}; registered providers: {known}") from None


def plugin_info() -> list[dict[str, object]]:
    """What `aios-memory plugins` prints: each plugin, its hooks and the providers it registers."""
    load_plugins()
    by_plugin: dict[str, list[str]] = {}
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin) or repr(plugin)
        provided: list[str] = []

        def register(provider: EmbeddingProvider, _acc: list[str] = provided) -> None:
            _acc.append(provider.name)

        hook = getattr(plugin, "register_embedding_providers", None)
        if hook is not None:
            hook(register=register)
        by_plugin[name] = provided
    dists = {p: d for p, d in pm.list_plugin_distinfo()}
    out: list[dict[str, object]] = []
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin) or repr(plugin)
        dist = dists.get(plugin)
        out.append(
            {
                "name": name,
                "package": dist.project_name if dist is not None else None,
                "version": dist.version if dist is not None else None,
                "hooks": sorted(h.name for h in pm.get_hookcallers(plugin) or []),
                "providers": by_plugin[name],
            }
        )
    return sorted(out, key=lambda d: str(d["name"]))


def resolve_provider(state: Any, modality: str, chosen: str | None, path: Any) -> EmbeddingProvider:
    """The provider for ``modality``'s table of the store at ``path``: the one its ``state`` (a
    ``TableState`` or None) was built with, else ``chosen``, else the default (or another ready one)."""
    from aios_memory.errors import InvalidInputError, ProviderMismatchError
    from aios_memory.identity import mismatch_message, same_model
    from aios_memory.provider import MODALITIES

    if modality not in MODALITIES:
        raise InvalidInputError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    if chosen is not None:
        get_provider(chosen)  # an unknown name is a ProviderNotFoundError, whatever the table holds
    if state is not None:
        if chosen is not None and chosen != state.provider:
            raise ProviderMismatchError(
                f"{modality} memories in {path} were embedded with {state.provider!r}, not {chosen!r}; "
                f"open the store with providers={{'{modality}': '{state.provider}'}}, or move the table to "
                f"{chosen!r} with `aios-memory --store {path} reembed {modality} --provider {chosen}`"
            )
        try:
            provider = get_provider(state.provider)
        except ProviderNotFoundError:
            from aios_memory.foreign import is_foreign, unregistered_message

            if not is_foreign(state.fingerprint):
                raise
            raise ProviderNotFoundError(unregistered_message(modality, path, state.fingerprint)) from None
        current = provider.fingerprint()
        if not same_model(state.fingerprint, current):
            raise ProviderMismatchError(mismatch_message(modality, path, state.fingerprint, current))
        return provider
    if chosen is not None:
        provider = get_provider(chosen)
    else:
        from aios_memory.foreign import ForeignEmbeddingProvider

        registered = get_providers()
        # a foreign model (aios_memory.foreign) serves only the stores that name it, never as a default
        candidates = sorted(
            n
            for n, p in registered.items()
            if p.modality == modality and not isinstance(p, ForeignEmbeddingProvider)
        )
        if not candidates:
            raise ProviderNotFoundError(
                f"no installed plugin provides {modality} embeddings; registered providers: "
                f"{', '.join(sorted(registered)) or 'none'}"
            )
        # the default provider, unless its weights are missing and another one is ready to embed
        default = DEFAULT_PROVIDERS[modality]
        ready = [n for n in candidates if registered[n].is_installed()]
        if default in registered and (registered[default].is_installed() or not ready):
            provider = registered[default]
        else:
            provider = registered[(ready or candidates)[0]]
    if provider.modality != modality:
        raise ProviderMismatchError(f"provider {provider.name!r} embeds {provider.modality}, not {modality}")
    return provider
