"""Bundled plugin: the text provider (all-MiniLM-L6-v2). Registers through the ``aios_memory`` entry point."""

from aios_memory import hookimpl
from aios_memory_text.provider import MiniLMProvider


@hookimpl
def register_embedding_providers(register):  # type: ignore[no-untyped-def]
    register(MiniLMProvider())
    for precision in ("bf16", "int8"):  # opt-in reduced precision, same weights: minilm-l6-v2@bf16, @int8
        register(MiniLMProvider(precision=precision))
