"""Bundled plugin: CLIP ViT-B/32 (image memories, text or image queries). Registers through the ``aios_memory``
entry point; importing it loads neither torch nor model code."""

from aios_memory import hookimpl
from aios_memory_clip.provider import ClipProvider


@hookimpl
def register_embedding_providers(register):  # type: ignore[no-untyped-def]
    register(ClipProvider())
