"""Hugging Face BERT folder (sentence-transformers layout) → Parquet weight file.

Used for all-MiniLM-L6-v2. No transposes: ``nn.Linear`` and the checkpoint share the (out, in) layout.
Dropped on purpose: ``embeddings.position_ids`` (a buffer, recomputed) and ``pooler.*`` (sentence
embeddings use mean pooling, never the pooler).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aios_memory.errors import WeightFileError
from aios_memory.weights import write_weights
from aios_memory_converters.common import as_float32, check_shapes, copy_side_file, load_hf_state

DROPPED_PREFIXES = ("embeddings.position_ids", "pooler.")


def bert_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    C, F, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (V, C),
        "embeddings.position_embeddings.weight": (cfg["max_position_embeddings"], C),
        "embeddings.token_type_embeddings.weight": (cfg["type_vocab_size"], C),
        "embeddings.LayerNorm.weight": (C,),
        "embeddings.LayerNorm.bias": (C,),
    }
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            shapes[f"{p}attention.self.{name}.weight"] = (C, C)
            shapes[f"{p}attention.self.{name}.bias"] = (C,)
        shapes[f"{p}attention.output.dense.weight"] = (C, C)
        shapes[f"{p}attention.output.dense.bias"] = (C,)
        shapes[f"{p}intermediate.dense.weight"] = (F, C)
        shapes[f"{p}intermediate.dense.bias"] = (F,)
        shapes[f"{p}output.dense.weight"] = (C, F)
        shapes[f"{p}output.dense.bias"] = (C,)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[f"{p}{ln}.weight"] = (C,)
            shapes[f"{p}{ln}.bias"] = (C,)
    return shapes


def convert_bert(src: str | Path, out_dir: str | Path, *, model: str = "all-MiniLM-L6-v2") -> Path:
    """Convert a BERT sentence-embedding folder into ``out_dir/weights.parquet`` + ``tokenizer.json``."""
    src, out_dir = Path(src), Path(out_dir)
    try:
        cfg = json.loads((src / "config.json").read_text())
    except FileNotFoundError:
        raise WeightFileError(f"{src} has no config.json: not a Hugging Face model folder") from None
    if cfg.get("model_type") != "bert":
        raise WeightFileError(f"{src}: model_type is {cfg.get('model_type')!r}, expected 'bert'")
    max_seq = 512
    st_cfg = src / "sentence_bert_config.json"
    if st_cfg.is_file():
        max_seq = int(json.loads(st_cfg.read_text()).get("max_seq_length", max_seq))
    pooling = src / "1_Pooling" / "config.json"
    if pooling.is_file() and not json.loads(pooling.read_text()).get("pooling_mode_mean_tokens", False):
        raise WeightFileError(
            f"{src}: pooling is not mean pooling; this converter only supports mean pooling"
        )
    if (
        cfg.get("hidden_act", "gelu") != "gelu"
        or cfg.get("position_embedding_type", "absolute") != "absolute"
    ):
        raise WeightFileError(f"{src}: only gelu activations and absolute positions are supported")
    tok = src / "tokenizer.json"
    if not tok.is_file():
        raise WeightFileError(f"{src} has no tokenizer.json")

    raw, source = load_hf_state(src)
    state = {}
    for key, value in raw.items():
        key = key.removeprefix("bert.")
        if not key.startswith(DROPPED_PREFIXES):
            state[key] = as_float32(value)
    expected = bert_shapes(cfg)
    check_shapes(state, expected, f"{src}")
    tensors = {k: state[k] for k in expected}  # a fixed, documented order

    config = {
        k: cfg[k]
        for k in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
            "layer_norm_eps",
            "pad_token_id",
        )
        if k in cfg
    }
    config["max_seq_length"] = max_seq
    files = {"tokenizer.json": copy_side_file(tok, out_dir)}
    source = {**source, "folder": str(src.resolve()), "converter": "bert"}
    return write_weights(
        out_dir / "weights.parquet", tensors, model=model, config=config, source=source, files=files
    )
