"""Converters: one function per source format, each writing the Parquet weight format of ``aios_memory.weights``."""
