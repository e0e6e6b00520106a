"""Bundled plugin: CLIP ViT-B/32 (image tower + text tower). Work in progress: registers nothing yet."""

from aios_memory import hookimpl


@hookimpl
def register_embedding_providers(register):  # type: ignore[no-untyped-def]
    pass
