"""A cheap, real, process-stable text provider for tests that start many processes (crash, concurrency).

Hashed character trigrams with crc32 (Python's own ``hash`` is salted per process, so two processes would
embed the same text differently). It needs no torch and no weights, so a child process starts in a blink.
"""

from __future__ import annotations

import zlib

import numpy as np

from aios_memory import EmbeddingProvider, hookimpl

NAME = "trigram-crc-64"
BIGRAM = "bigram-crc-96"


class TrigramProvider(EmbeddingProvider):
    name = NAME
    modality = "text"
    dim = 64

    def _embed(self, items: list[str]) -> np.ndarray:
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        for i, text in enumerate(items):
            s = f"  {text.lower()} "
            for j in range(len(s) - 2):
                out[i, zlib.crc32(s[j : j + 3].encode()) % self.dim] += 1.0
        return out


class BigramProvider(EmbeddingProvider):
    """A second cheap model of another dimension: the target of a re-embedding between third-party providers."""

    name = BIGRAM
    modality = "text"
    dim = 96

    def _embed(self, items: list[str]) -> np.ndarray:
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        for i, text in enumerate(items):
            s = f" {text.lower()} "
            for j in range(len(s) - 1):
                out[i, zlib.crc32(s[j : j + 2].encode()) % self.dim] += 1.0
        return out


class TrigramPlugin:
    @hookimpl
    def register_embedding_providers(self, register):  # type: ignore[no-untyped-def]
        register(TrigramProvider())
        register(BigramProvider())


def register() -> None:
    """Register the provider in this process (children call this before opening a store)."""
    from aios_memory.plugins import get_providers, register_plugin

    if NAME not in get_providers():
        register_plugin(TrigramPlugin(), name="trigram-test-plugin")
