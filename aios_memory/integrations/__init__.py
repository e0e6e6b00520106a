"""Adapters that let agent frameworks use a ``MemoryStore`` as their memory (optional extras).

``aios_memory.integrations.langchain`` (``pip install "aios-memory[langchain]"``) and
``aios_memory.integrations.llama_index`` (``pip install "aios-memory[llama-index]"``).
"""
