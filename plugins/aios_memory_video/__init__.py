"""Bundled plugin: video memories (one row per segment), composing the registered CLIP provider (frames)
and Whisper provider (the audio track). Registers through the ``aios_memory`` entry point; importing it
loads neither PyAV, torch nor model code."""

from aios_memory import hookimpl
from aios_memory_video.provider import VideoProvider


@hookimpl
def register_embedding_providers(register):  # type: ignore[no-untyped-def]
    register(VideoProvider())
