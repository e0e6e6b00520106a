"""Bundled plugin: CLIP ViT-B/32 (image memories, text or image queries). Registers through the ``aios_memory``
entry point; importing it loads neither torch nor model code."""

from aios_memory import hookimpl
from aios_memory_clip.provider import ClipProvider


@hookimpl
def register_embedding_providers(register):  # type: ignore[no-untyped-def]
    register(ClipProvider())
    for precision in ("bf16", "int8"):  # opt-in reduced precision, same weights: clip-vit-b-32@bf16, @int8
        register(ClipProvider(precision=precision))
