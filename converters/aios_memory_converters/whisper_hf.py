"""Hugging Face Whisper folder (``WhisperForConditionalGeneration``) → Parquet weight file.

The weight-file layout (shared with the CTranslate2 converter) is the Hugging Face key set without the
``model.`` prefix: ``encoder.conv1.weight``, ``encoder.layers.N.self_attn.q_proj.weight``, ...,
``decoder.embed_tokens.weight``. No transposes: ``nn.Linear``/``nn.Conv1d`` share the checkpoint's
(out, in[, k]) layout. Dropped on purpose: ``proj_out.weight`` (tied to ``decoder.embed_tokens``, which
is checked). Tensors are stored as float32. Side file: ``tokenizer.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from aios_memory.errors import WeightFileError
from aios_memory.weights import write_weights
from aios_memory_converters.common import as_float32, check_shapes, copy_side_file, load_hf_state

MODEL = "whisper-base"
CONFIG_KEYS = (
    "n_mels",
    "n_audio_ctx",
    "n_text_ctx",
    "d_model",
    "n_head",
    "encoder_layers",
    "decoder_layers",
    "ffn_dim",
    "vocab_size",
)


def whisper_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor of the weight file and its shape, in the file's order."""
    C, F, V = cfg["d_model"], cfg["ffn_dim"], cfg["vocab_size"]

    def attention(p: str) -> dict[str, tuple[int, ...]]:
        return {
            f"{p}q_proj.weight": (C, C),
            f"{p}q_proj.bias": (C,),
            f"{p}k_proj.weight": (C, C),  # no bias: Whisper's key projection has none
            f"{p}v_proj.weight": (C, C),
            f"{p}v_proj.bias": (C,),
            f"{p}out_proj.weight": (C, C),
            f"{p}out_proj.bias": (C,),
        }

    def norm(p: str) -> dict[str, tuple[int, ...]]:
        return {f"{p}.weight": (C,), f"{p}.bias": (C,)}

    def ffn(p: str) -> dict[str, tuple[int, ...]]:
        return {
            f"{p}fc1.weight": (F, C),
            f"{p}fc1.bias": (F,),
            f"{p}fc2.weight": (C, F),
            f"{p}fc2.bias": (C,),
        }

    shapes: dict[str, tuple[int, ...]] = {
        "encoder.conv1.weight": (C, cfg["n_mels"], 3),
        "encoder.conv1.bias": (C,),
        "encoder.conv2.weight": (C, C, 3),
        "encoder.conv2.bias": (C,),
        "encoder.embed_positions.weight": (cfg["n_audio_ctx"], C),
    }
    for i in range(cfg["encoder_layers"]):
        p = f"encoder.layers.{i}."
        shapes |= attention(p + "self_attn.") | norm(p + "self_attn_layer_norm")
        shapes |= ffn(p) | norm(p + "final_layer_norm")
    shapes |= norm("encoder.layer_norm")
    shapes["decoder.embed_tokens.weight"] = (V, C)
    shapes["decoder.embed_positions.weight"] = (cfg["n_text_ctx"], C)
    for i in range(cfg["decoder_layers"]):
        p = f"decoder.layers.{i}."
        shapes |= attention(p + "self_attn.") | norm(p + "self_attn_layer_norm")
        shapes |= attention(p + "encoder_attn.") | norm(p + "encoder_attn_layer_norm")
        shapes |= ffn(p) | norm(p + "final_layer_norm")
    shapes |= norm("decoder.layer_norm")
    return shapes


def finish_whisper(
    tensors: dict[str, Any],
    cfg: dict[str, Any],
    suppress: list[int],
    begin_suppress: list[int],
    tokenizer: Path,
    out_dir: Path,
    source: dict[str, Any],
) -> Path:
    """Check names and shapes, then write ``out_dir/weights.parquet`` + ``tokenizer.json`` (both converters)."""
    expected = whisper_shapes(cfg)
    check_shapes(tensors, expected, source.get("folder", "whisper"))
    if not tokenizer.is_file():
        raise WeightFileError(f"{tokenizer} is missing: Whisper needs its tokenizer.json")
    config = {k: int(cfg[k]) for k in CONFIG_KEYS}
    config |= {
        "layer_norm_eps": 1e-5,
        "suppress_tokens": sorted(int(t) for t in suppress),
        "begin_suppress_tokens": [int(t) for t in begin_suppress],
    }
    files = {"tokenizer.json": copy_side_file(tokenizer, out_dir)}
    return write_weights(
        out_dir / "weights.parquet",
        {k: tensors[k] for k in expected},
        model=MODEL,
        config=config,
        source=source,
        files=files,
    )


def convert_hf_whisper(folder: str | Path, out_dir: str | Path) -> Path:
    """Convert a Hugging Face Whisper folder into ``out_dir/weights.parquet`` (float32) + ``tokenizer.json``."""
    import torch

    src, out_dir = Path(folder), Path(out_dir)
    try:
        hf = json.loads((src / "config.json").read_text())
    except FileNotFoundError:
        raise WeightFileError(f"{src} has no config.json: not a Hugging Face model folder") from None
    if hf.get("model_type") != "whisper":
        raise WeightFileError(f"{src}: model_type is {hf.get('model_type')!r}, expected 'whisper'")
    if hf.get("activation_function", "gelu") != "gelu" or hf.get("scale_embedding", False):
        raise WeightFileError(f"{src}: only exact-gelu Whisper without embedding scaling is supported")
    if (
        hf["encoder_ffn_dim"] != hf["decoder_ffn_dim"]
        or hf["encoder_attention_heads"] != hf["decoder_attention_heads"]
    ):
        raise WeightFileError(f"{src}: encoder and decoder must share ffn width and head count")
    cfg = {
        "n_mels": hf["num_mel_bins"],
        "n_audio_ctx": hf["max_source_positions"],
        "n_text_ctx": hf["max_target_positions"],
        "d_model": hf["d_model"],
        "n_head": hf["encoder_attention_heads"],
        "encoder_layers": hf["encoder_layers"],
        "decoder_layers": hf["decoder_layers"],
        "ffn_dim": hf["encoder_ffn_dim"],
        "vocab_size": hf["vocab_size"],
    }
    gen_path = src / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.is_file() else {}
    suppress = gen.get("suppress_tokens") or hf.get("suppress_tokens")
    begin = gen.get("begin_suppress_tokens") or hf.get("begin_suppress_tokens")
    if suppress is None or begin is None:
        raise WeightFileError(f"{src}: neither generation_config.json nor config.json lists suppress_tokens")

    with torch.no_grad():
        raw, source = load_hf_state(src)
        state = {k.removeprefix("model."): v for k, v in raw.items()}
        tied = state.pop("proj_out.weight", None)
        tensors = {k: as_float32(v) for k, v in state.items()}
        emb = tensors.get("decoder.embed_tokens.weight")
        if tied is not None and emb is not None and not np.array_equal(as_float32(tied), emb):
            raise WeightFileError(f"{src}: proj_out is not tied to decoder.embed_tokens; unsupported")
    source = {**source, "folder": str(src.resolve()), "converter": "whisper_hf"}
    return finish_whisper(tensors, cfg, suppress, begin, src / "tokenizer.json", out_dir, source)


def to_hf_whisper(weights: str | Path) -> Any:
    """The inverse direction, for references and benchmarks: a ``transformers``
    ``WhisperForConditionalGeneration`` holding exactly the tensors of one of our weight files, in float32.

    Names map back by adding ``model.``; ``proj_out`` is tied to ``decoder.embed_tokens`` (not stored).
    """
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from aios_memory.weights import read_weights

    wf = read_weights(weights)
    c = wf.config
    cfg = WhisperConfig(
        vocab_size=c["vocab_size"],
        num_mel_bins=c["n_mels"],
        d_model=c["d_model"],
        encoder_layers=c["encoder_layers"],
        decoder_layers=c["decoder_layers"],
        encoder_attention_heads=c["n_head"],
        decoder_attention_heads=c["n_head"],
        encoder_ffn_dim=c["ffn_dim"],
        decoder_ffn_dim=c["ffn_dim"],
        max_source_positions=c["n_audio_ctx"],
        max_target_positions=c["n_text_ctx"],
        suppress_tokens=c["suppress_tokens"],
        begin_suppress_tokens=c["begin_suppress_tokens"],
        decoder_start_token_id=50258,
        eos_token_id=50257,
        pad_token_id=50257,
        bos_token_id=50257,
    )
    model = WhisperForConditionalGeneration(cfg).eval()
    state = {f"model.{k}": torch.from_numpy(t.numpy().astype(np.float32)) for k, t in wf.tensors.items()}
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    model.load_state_dict(state, strict=True)
    return model
