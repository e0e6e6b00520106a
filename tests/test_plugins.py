"""The plugin manager: entry-point loading (bundled plugins included), laziness, registration errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from aios_memory import EmbeddingProvider, hookimpl
from aios_memory.errors import ProviderError, ProviderNotFoundError
from aios_memory.plugins import (
    ENTRY_POINT_GROUP,
    get_provider,
    get_providers,
    load_plugins,
    plugin_info,
    pm,
    register_plugin,
    unregister_plugin,
)


def test_bundled_text_plugin_comes_through_the_entry_point_group():
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert eps.get("text") == "aios_memory_text"
    load_plugins()
    assert load_plugins() is pm  # idempotent
    assert "text" in [pm.get_name(p) for p in pm.get_plugins()]
    info = {p["name"]: p for p in plugin_info()}
    assert info["text"]["providers"] == ["minilm-l6-v2", "minilm-l6-v2@bf16", "minilm-l6-v2@int8"]
    assert info["text"]["package"] == "aios-memory"


def test_listing_loads_no_model_and_no_torch(tmp_path):
    script = textwrap.dedent(
        f"""
        import json, sys
        from aios_memory import MemoryStore
        from aios_memory.plugins import get_providers, plugin_info
        providers = get_providers()
        plugin_info()
        s = MemoryStore({str(tmp_path / "s")!r})
        s.providers(); s.stats(); s.sql("SELECT count(*) FROM text_memories")
        print(json.dumps({{"torch": "torch" in sys.modules, "loaded": [p.loaded for p in providers.values()],
                          "model_code": "aios_memory_text.model" in sys.modules}}))
        """
    )
    out = json.loads(
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    )
    assert out == {"torch": False, "loaded": [False] * len(out["loaded"]), "model_code": False}


class _Dup(EmbeddingProvider):
    name = "minilm-l6-v2"
    modality = "text"
    dim = 3

    def _embed(self, items):
        return [[1.0, 0.0, 0.0]] * len(items)


def test_duplicate_provider_names_are_an_error():
    class Plugin:
        @hookimpl
        def register_embedding_providers(self, register):
            register(_Dup())

    plugin = Plugin()
    register_plugin(plugin, name="dup")
    try:
        with pytest.raises(ProviderError, match="two plugins register a provider named 'minilm-l6-v2'"):
            get_providers()
    finally:
        unregister_plugin(plugin)
    assert get_providers()["minilm-l6-v2"].dim == 384


def test_registering_something_that_is_not_a_provider():
    class Plugin:
        @hookimpl
        def register_embedding_providers(self, register):
            register("not a provider")

    plugin = Plugin()
    register_plugin(plugin, name="junk")
    try:
        with pytest.raises(ProviderError, match="takes an EmbeddingProvider"):
            get_providers()
    finally:
        unregister_plugin(plugin)


def test_unknown_hook_is_caught_by_check_pending():
    class Typo:
        @hookimpl
        def register_embedding_provider(self, register):  # missing "s"
            pass

    from pluggy import PluginValidationError

    with pytest.raises(PluginValidationError):
        register_plugin(Typo(), name="typo")
    pm.unregister(name="typo")


def test_unknown_provider_names_the_known_ones():
    with pytest.raises(ProviderNotFoundError, match="minilm-l6-v2"):
        get_provider("nope")


def test_blocked_plugins_env(tmp_path):
    script = "from aios_memory.plugins import get_providers; print(sorted(get_providers()))"
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={**__import__("os").environ, "AIOS_MEMORY_BLOCK_PLUGINS": "text"},
    )
    assert "minilm-l6-v2" not in out.stdout
