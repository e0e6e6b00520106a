"""Hugging Face CLIP folder (``openai/clip-vit-base-patch32`` layout) → Parquet weight file + tokenizer.json.

Transposes: none. ``nn.Linear`` (out, in) and ``nn.Conv2d`` (out, in, kH, kW) share the checkpoint's
layouts, so every tensor is copied bit for bit. Kept: ``logit_scale`` (a 0-d tensor, the log of the
inverse temperature). Dropped on purpose: ``*.embeddings.position_ids`` (buffers in older checkpoints,
recomputed). The tokenizer is the checkpoint's own: ``tokenizer.json`` copied when present, otherwise
built from ``vocab.json`` + ``merges.txt`` with CLIP's normalisation and pre-tokenisation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aios_memory.errors import WeightFileError
from aios_memory.weights import file_sha256, write_weights
from aios_memory_converters.common import as_float32, check_shapes, copy_side_file, load_hf_state

MODEL_ID = "clip-vit-base-patch32"
DROPPED_KEYS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")
TRANSPOSED: tuple[str, ...] = ()  # no tensor changes layout
RESHAPED = {"logit_scale": ()}  # a 0-d scalar, whatever rank the reader hands back
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# OpenAI CLIP's word pattern: special tokens, English contractions, letter runs, single digits, other symbols
CLIP_SPLIT = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)

# transformers' CLIPTextConfig / CLIPVisionConfig defaults, used where a config.json leaves a key out
TEXT_DEFAULTS: dict[str, Any] = dict(
    vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
    num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    eos_token_id=49407,
)  # fmt: skip
VISION_DEFAULTS: dict[str, Any] = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    num_channels=3, image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5,
)  # fmt: skip
ACTIVATIONS = ("quick_gelu", "gelu")


def clip_config(hf: dict[str, Any]) -> dict[str, Any]:
    """Our flat ``ClipConfig`` dict from a Hugging Face ``CLIPConfig`` dict."""
    t = {**TEXT_DEFAULTS, **(hf.get("text_config") or {})}
    v = {**VISION_DEFAULTS, **(hf.get("vision_config") or {})}
    for tower, c in (("text", t), ("vision", v)):
        if c["hidden_act"] not in ACTIVATIONS:
            raise WeightFileError(
                f"{tower}_config.hidden_act is {c['hidden_act']!r}; supported: {ACTIVATIONS}"
            )
        if c["hidden_size"] % c["num_attention_heads"]:
            raise WeightFileError(f"{tower}_config: hidden_size is not a multiple of num_attention_heads")
    if v["image_size"] % v["patch_size"]:
        raise WeightFileError("vision_config: image_size is not a multiple of patch_size")
    return {
        "vocab_size": t["vocab_size"],
        "text_hidden_size": t["hidden_size"],
        "text_layers": t["num_hidden_layers"],
        "text_heads": t["num_attention_heads"],
        "text_intermediate_size": t["intermediate_size"],
        "max_position_embeddings": t["max_position_embeddings"],
        "text_hidden_act": t["hidden_act"],
        "text_layer_norm_eps": t["layer_norm_eps"],
        "eos_token_id": t["eos_token_id"],
        "image_size": v["image_size"],
        "patch_size": v["patch_size"],
        "num_channels": v["num_channels"],
        "vision_hidden_size": v["hidden_size"],
        "vision_layers": v["num_hidden_layers"],
        "vision_heads": v["num_attention_heads"],
        "vision_intermediate_size": v["intermediate_size"],
        "vision_hidden_act": v["hidden_act"],
        "vision_layer_norm_eps": v["layer_norm_eps"],
        "projection_dim": hf.get("projection_dim", 512),
    }


def clip_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor of a ``CLIPModel`` checkpoint and its shape, from our flat config."""
    P, E = cfg["patch_size"], cfg["projection_dim"]
    shapes: dict[str, tuple[int, ...]] = {"logit_scale": ()}
    for tower in ("text", "vision"):
        C, F = cfg[f"{tower}_hidden_size"], cfg[f"{tower}_intermediate_size"]
        for i in range(cfg[f"{tower}_layers"]):
            p = f"{tower}_model.encoder.layers.{i}."
            for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
                shapes[f"{p}self_attn.{proj}.weight"] = (C, C)
                shapes[f"{p}self_attn.{proj}.bias"] = (C,)
            shapes[f"{p}mlp.fc1.weight"], shapes[f"{p}mlp.fc1.bias"] = (F, C), (F,)
            shapes[f"{p}mlp.fc2.weight"], shapes[f"{p}mlp.fc2.bias"] = (C, F), (C,)
            for ln in ("layer_norm1", "layer_norm2"):
                shapes[f"{p}{ln}.weight"], shapes[f"{p}{ln}.bias"] = (C,), (C,)
    C = cfg["text_hidden_size"]
    shapes["text_model.embeddings.token_embedding.weight"] = (cfg["vocab_size"], C)
    shapes["text_model.embeddings.position_embedding.weight"] = (cfg["max_position_embeddings"], C)
    shapes["text_model.final_layer_norm.weight"] = shapes["text_model.final_layer_norm.bias"] = (C,)
    shapes["text_projection.weight"] = (E, C)
    C = cfg["vision_hidden_size"]
    shapes["vision_model.embeddings.class_embedding"] = (C,)
    shapes["vision_model.embeddings.patch_embedding.weight"] = (C, cfg["num_channels"], P, P)
    shapes["vision_model.embeddings.position_embedding.weight"] = ((cfg["image_size"] // P) ** 2 + 1, C)
    for ln in ("pre_layrnorm", "post_layernorm"):
        shapes[f"vision_model.{ln}.weight"] = shapes[f"vision_model.{ln}.bias"] = (C,)
    shapes["visual_projection.weight"] = (E, C)
    return shapes


def build_clip_tokenizer(vocab_file: Path, merges_file: Path) -> Any:
    """CLIP's byte-level BPE as a ``tokenizers.Tokenizer``: NFC, whitespace runs to one space, lower case,
    CLIP's word pattern, bytes mapped to unicode, BPE with ``</w>`` ending each word, then
    ``<|startoftext|> ... <|endoftext|>`` around the ids."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    merges = []
    for line in merges_file.read_text(encoding="utf-8").splitlines():
        if line.startswith("#version") or not line.strip():
            continue
        left, right = line.split()
        merges.append((left, right))
    for special in (BOS, EOS):
        if special not in vocab:
            raise WeightFileError(f"{vocab_file} has no {special} token; not a CLIP vocabulary")
    tok = Tokenizer(
        BPE(
            vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="</w>", unk_token=EOS
        )
    )
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([BOS, EOS])
    tok.post_processor = processors.RobertaProcessing(
        (EOS, vocab[EOS]), (BOS, vocab[BOS]), trim_offsets=False, add_prefix_space=False
    )
    return tok


def convert_clip(src: str | Path, out_dir: str | Path, *, model: str = MODEL_ID) -> Path:
    """Convert a Hugging Face ``CLIPModel`` folder into ``out_dir/weights.parquet`` + ``tokenizer.json``."""
    src, out_dir = Path(src), Path(out_dir)
    try:
        hf = json.loads((src / "config.json").read_text())
    except FileNotFoundError:
        raise WeightFileError(f"{src} has no config.json: not a Hugging Face model folder") from None
    if hf.get("model_type") != "clip":
        raise WeightFileError(f"{src}: model_type is {hf.get('model_type')!r}, expected 'clip'")
    config = clip_config(hf)

    from tokenizers import Tokenizer

    tok_json = src / "tokenizer.json"
    if tok_json.is_file():
        tok = Tokenizer.from_file(str(tok_json))
    elif (src / "vocab.json").is_file() and (src / "merges.txt").is_file():
        tok = build_clip_tokenizer(src / "vocab.json", src / "merges.txt")
    else:
        raise WeightFileError(
            f"{src} has no tokenizer: expected tokenizer.json, or vocab.json and merges.txt"
        )
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    if bos is None or eos is None:
        raise WeightFileError(f"{src}: the tokenizer has no {BOS} or {EOS} token; not a CLIP tokenizer")
    probe = tok.encode("a photo").ids
    if not probe or probe[0] != bos or probe[-1] != eos:
        raise WeightFileError(
            f"{src}: the tokenizer does not wrap texts in {BOS} ... {EOS}; not a CLIP tokenizer"
        )
    if tok.get_vocab_size() > config["vocab_size"]:
        raise WeightFileError(
            f"{src}: the tokenizer has {tok.get_vocab_size()} tokens, the model only {config['vocab_size']}"
        )
    if config["eos_token_id"] not in (2, eos):  # 2: the legacy rule, pooling at argmax(ids)
        raise WeightFileError(
            f"{src}: text_config.eos_token_id is {config['eos_token_id']}, the tokenizer's {EOS} is {eos}"
        )
    config.update(bos_token_id=bos, pad_token_id=eos)  # CLIP pads with <|endoftext|>

    import torch

    with torch.no_grad():
        raw, source = load_hf_state(src)
        state = {k: as_float32(v) for k, v in raw.items() if k not in DROPPED_KEYS}
        for name, shape in RESHAPED.items():  # as_float32 (np.ascontiguousarray) makes a 0-d tensor (1,)
            if name in state and state[name].size == 1:
                state[name] = state[name].reshape(shape)
        expected = clip_shapes(config)
        check_shapes(state, expected, f"{src}")
        # a fixed, documented order; no transposes (TRANSPOSED). Torch tensors: the writer keeps 0-d shapes
        tensors = {k: torch.from_numpy(state[k]).reshape(expected[k]) for k in expected}

    out_dir.mkdir(parents=True, exist_ok=True)
    if tok_json.is_file():
        files = {"tokenizer.json": copy_side_file(tok_json, out_dir)}
    else:
        tok.save(str(out_dir / "tokenizer.json"))
        files = {"tokenizer.json": file_sha256(out_dir / "tokenizer.json")}
    tokenizer_from = "tokenizer.json" if tok_json.is_file() else "vocab.json+merges.txt"
    source = {**source, "folder": str(src.resolve()), "converter": "clip", "tokenizer": tokenizer_from}
    return write_weights(
        out_dir / "weights.parquet", tensors, model=model, config=config, source=source, files=files
    )
