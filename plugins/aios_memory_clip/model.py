"""CLIP (ViT-B/32 by default) natively in PyTorch: a vision transformer and a causal text transformer that
embed images and texts into one space, compared by cosine similarity scaled by a learned temperature.

Submodule names mirror the Hugging Face ``CLIPModel`` checkpoint keys (``vision_model.encoder.layers.0.
self_attn.q_proj``), so a converted weight file loads with ``load_state_dict(strict=True)`` and no renaming.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from aios_memory.precision import quantize_linear_int8

ACTIVATIONS = ("quick_gelu", "gelu")
LEGACY_EOS_TOKEN_ID = 2  # configs written before transformers PR #24773 pool at argmax(input_ids)
PRECISIONS = ("fp32", "bf16", "int8")  # Clip.optimize(): float32 (default), bfloat16, dynamic int8


@dataclass
class ClipConfig:
    # text tower
    vocab_size: int = 49408
    text_hidden_size: int = 512
    text_layers: int = 12
    text_heads: int = 8
    text_intermediate_size: int = 2048
    max_position_embeddings: int = 77  # the context length, start and end tokens included
    text_hidden_act: str = "quick_gelu"
    text_layer_norm_eps: float = 1e-5
    bos_token_id: int = 49406
    eos_token_id: int = 49407  # the pooling rule: 2 (legacy) = argmax of ids, else first position of this id
    pad_token_id: int = 49407  # what the tokenizer pads with (CLIP pads with <|endoftext|>)
    # vision tower
    image_size: int = 224
    patch_size: int = 32
    num_channels: int = 3
    vision_hidden_size: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    vision_intermediate_size: int = 3072
    vision_hidden_act: str = "quick_gelu"
    vision_layer_norm_eps: float = 1e-5
    # joint space
    projection_dim: int = 512

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClipConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def activation(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)  # CLIP's sigmoid approximation of GELU
    if name == "gelu":
        return F.gelu(x)  # exact (erf) GELU
    raise ValueError(f"unsupported activation {name!r}; expected one of {ACTIVATIONS}")


class Embedding(nn.Module):
    """A lookup table left uninitialised: its weights always come from the weight file."""

    def __init__(self, n: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class ClipAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        assert width % heads == 0, "width must divide into heads"
        self.n_head = heads
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.q_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        B, T, C = x.shape
        H = self.n_head
        q = self.q_proj(x).view(B, T, H, C // H).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, H, C // H).transpose(1, 2)
        v = self.v_proj(x).view(B, T, H, C // H).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (B, H, T, D), scale 1/sqrt(D)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))


class ClipMLP(nn.Module):
    def __init__(self, width: int, hidden: int, act: str) -> None:
        super().__init__()
        self.act = act
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(activation(self.act, self.fc1(x)))


class ClipEncoderLayer(nn.Module):
    """Pre-norm residual block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, width: int, heads: int, hidden: int, act: str, eps: float) -> None:
        super().__init__()
        self.self_attn = ClipAttention(width, heads)
        self.layer_norm1 = nn.LayerNorm(width, eps=eps)
        self.mlp = ClipMLP(width, hidden, act)
        self.layer_norm2 = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), causal)
        return x + self.mlp(self.layer_norm2(x))


class ClipEncoder(nn.Module):
    def __init__(self, n: int, width: int, heads: int, hidden: int, act: str, eps: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList([ClipEncoderLayer(width, heads, hidden, act, eps) for _ in range(n)])

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, causal)
        return x


class ClipVisionEmbeddings(nn.Module):
    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        C, P = cfg.vision_hidden_size, cfg.patch_size
        self.class_embedding = nn.Parameter(torch.empty(C))
        self.patch_embedding = nn.Conv2d(cfg.num_channels, C, kernel_size=P, stride=P, bias=False)
        self.position_embedding = Embedding((cfg.image_size // P) ** 2 + 1, C)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        B = pixels.shape[0]
        patches = self.patch_embedding(pixels)  # (B, C, H/P, W/P)
        patches = patches.flatten(2).transpose(1, 2)  # (B, N, C), row-major over the patch grid
        cls = self.class_embedding.expand(B, 1, -1)  # (B, 1, C)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight  # (B, N+1, C)


class ClipVisionTransformer(nn.Module):
    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        C, eps = cfg.vision_hidden_size, cfg.vision_layer_norm_eps
        self.embeddings = ClipVisionEmbeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(C, eps=eps)  # sic: the checkpoint's spelling
        self.encoder = ClipEncoder(
            cfg.vision_layers, C, cfg.vision_heads, cfg.vision_intermediate_size, cfg.vision_hidden_act, eps
        )
        self.post_layernorm = nn.LayerNorm(C, eps=eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.encoder(self.pre_layrnorm(self.embeddings(pixels)))  # (B, N+1, C)
        return self.post_layernorm(x[:, 0])  # (B, C): the class token


class ClipTextEmbeddings(nn.Module):
    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        self.token_embedding = Embedding(cfg.vocab_size, cfg.text_hidden_size)
        self.position_embedding = Embedding(cfg.max_position_embeddings, cfg.text_hidden_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        T = ids.shape[1]
        return self.token_embedding(ids) + self.position_embedding.weight[:T]  # (B, T, C)


class ClipTextTransformer(nn.Module):
    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        C, eps = cfg.text_hidden_size, cfg.text_layer_norm_eps
        self.eos_token_id = cfg.eos_token_id
        self.embeddings = ClipTextEmbeddings(cfg)
        self.encoder = ClipEncoder(
            cfg.text_layers, C, cfg.text_heads, cfg.text_intermediate_size, cfg.text_hidden_act, eps
        )
        self.final_layer_norm = nn.LayerNorm(C, eps=eps)

    def pooling_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """(B,) index of the end-of-text token: the largest id (legacy configs), else the first eos id."""
        if self.eos_token_id == LEGACY_EOS_TOKEN_ID:
            return ids.to(torch.int).argmax(dim=-1)  # first maximum: <|endoftext|> is the largest id
        return (ids == self.eos_token_id).to(torch.int).argmax(dim=-1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # causal attention: a position never sees the padding after it, so no padding mask is needed
        x = self.final_layer_norm(self.encoder(self.embeddings(ids), causal=True))  # (B, T, C)
        return x[torch.arange(ids.shape[0], device=ids.device), self.pooling_positions(ids)]  # (B, C)


class Clip(nn.Module):
    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        self.config = cfg
        self.text_model = ClipTextTransformer(cfg)
        self.vision_model = ClipVisionTransformer(cfg)
        self.visual_projection = nn.Linear(cfg.vision_hidden_size, cfg.projection_dim, bias=False)
        self.text_projection = nn.Linear(cfg.text_hidden_size, cfg.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.empty(()))  # log of the inverse temperature

    def optimize(self, precision: str = "fp32") -> Clip:
        """Inference rewrites, run once after the weights load. ``fp32``: none (the weights stay views of
        the mapped file; a fused QKV GEMM measured no gain here: 1.00x at batch 32, 0.97x at batch 1, for
        85 MB more memory). ``bf16``: the towers' weights in bfloat16 (activations follow). ``int8``:
        dynamic int8 ``nn.Linear`` (per-channel int8 weights, activations quantized per call), the rest
        fp32. Embeddings come out float32 whatever the precision."""
        assert precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {precision!r}"
        if precision == "int8":
            quantize_linear_int8(self)
            return self
        if precision == "bf16":  # logit_scale stays float32: the temperature keeps its 24-bit mantissa
            for tower in (self.text_model, self.vision_model, self.visual_projection, self.text_projection):
                tower.to(torch.bfloat16)
        return self

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype: float32, or bfloat16 after ``optimize("bf16")``."""
        return self.vision_model.pre_layrnorm.weight.dtype

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, projection_dim) L2-normalised float32 embeddings."""
        S = self.config.image_size
        assert pixels.ndim == 4 and tuple(pixels.shape[1:]) == (self.config.num_channels, S, S), (
            f"expected (B, {self.config.num_channels}, {S}, {S}) pixels, got {tuple(pixels.shape)}"
        )
        x = self.visual_projection(self.vision_model(pixels.to(self.dtype)))  # (B, P)
        return F.normalize(x.float(), dim=-1)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids, each row holding an end-of-text token -> (B, projection_dim) L2-normalised."""
        assert ids.ndim == 2 and 0 < ids.shape[1] <= self.config.max_position_embeddings, (
            f"expected (B, T <= {self.config.max_position_embeddings}) ids, got {tuple(ids.shape)}"
        )
        return F.normalize(self.text_projection(self.text_model(ids)).float(), dim=-1)

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(n_img, n_txt) logits: cosine similarity times exp(logit_scale), as ``logits_per_image``."""
        return self.logit_scale.exp() * self.encode_image(pixels) @ self.encode_text(ids).T
