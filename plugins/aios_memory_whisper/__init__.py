"""Bundled plugin: Whisper base (audio embeddings + English transcripts). Registers through the ``aios_memory`` entry point."""

from aios_memory import hookimpl
from aios_memory_whisper.provider import WhisperProvider


@hookimpl
def register_embedding_providers(register):  # type: ignore[no-untyped-def]
    register(WhisperProvider())
