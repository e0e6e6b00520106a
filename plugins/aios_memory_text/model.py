"""all-MiniLM-L6-v2 natively in PyTorch: a BERT encoder, mean pooling over the attention mask, L2 norm.

Submodule names mirror the Hugging Face checkpoint keys (``encoder.layer.0.attention.self.query``), so
the converted weight file loads with ``load_state_dict(strict=True)`` and no renaming.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from aios_memory.precision import quantize_linear_int8_per_token

PRECISIONS = ("fp32", "bf16", "int8")  # MiniLM.optimize(): float32 (default), bfloat16, dynamic int8


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    max_seq_length: int = 256  # sentence-transformers truncates here, special tokens included
    pad_token_id: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BertConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class Embedding(nn.Module):
    """A lookup table left uninitialised: its weights always come from the weight file. (``nn.Embedding``
    would draw random values first, and on the meta device that drags in ``torch._dynamo``: +1 s.)"""

    def __init__(self, n: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        T = input_ids.shape[1]
        pos = torch.arange(T, device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(pos)  # (B, T, C)
        x = x + self.token_type_embeddings.weight[0]  # single-segment input: token type 0 everywhere
        return self.LayerNorm(x)


class BertSelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.n_head = cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.register_parameter("qkv_weight", None)  # fuse_qkv(): (3C, C), query, key, value rows stacked
        self.register_parameter("qkv_bias", None)

    def fuse_qkv(self) -> None:
        """One (3C, C) GEMM instead of three (C, C) ones: the same sums, a third of the calls. Run after
        the weights load; the checkpoint-named projections become views of the fused rows."""
        w = torch.cat([self.query.weight, self.key.weight, self.value.weight])  # (3C, C)
        b = torch.cat([self.query.bias, self.key.bias, self.value.bias])  # (3C,)
        self.qkv_weight, self.qkv_bias = nn.Parameter(w, False), nn.Parameter(b, False)
        for proj, rows, bias in zip((self.query, self.key, self.value), w.chunk(3), b.chunk(3), strict=True):
            proj.weight, proj.bias = nn.Parameter(rows, False), nn.Parameter(bias, False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.shape
        H = self.n_head
        if self.qkv_weight is not None:
            qkv = F.linear(x, self.qkv_weight, self.qkv_bias).view(B, T, 3, H, C // H)  # (B, T, 3, H, D)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, H, T, D) each
        else:
            q = self.query(x).view(B, T, H, C // H).transpose(1, 2)  # (B, H, T, D)
            k = self.key(x).view(B, T, H, C // H).transpose(1, 2)
            v = self.value(x).view(B, T, H, C // H).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T, D)
        return y.transpose(1, 2).reshape(B, T, C)


class BertSelfOutput(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(h) + x)  # post-norm residual


class BertAttention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(cfg)
        self.output = BertSelfOutput(cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # exact (erf) GELU, as BERT's "gelu"


class BertOutput(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(h) + x)


class BertLayer(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertOutput(cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        a = self.attention(x, mask)
        return self.output(self.intermediate(a), a)


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(cfg) for _ in range(cfg.num_hidden_layers)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        for block in self.layer:
            x = block(x, mask)
        return x


class MiniLM(nn.Module):
    """BERT encoder + sentence-transformers' mean pooling and normalisation."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)

    def optimize(self, precision: str = "fp32") -> MiniLM:
        """Inference rewrites, run once after the weights load. ``fp32``: none, the weights stay views of
        the mapped file (a fused QKV copy measured 1.02x and cost 11 MiB of RSS). ``bf16``: every weight in
        bfloat16 (activations follow; pooling in float32), then fused QKV (new tensors anyway). ``int8``: dynamic
        int8 ``nn.Linear`` (per-channel int8 weights, activations quantized per token on every call), the
        rest float32; the value projections, whose int8 error dominates, run in bfloat16 (min cosine to
        fp32 on the retrieval set: 0.9937 with every Linear in int8, 0.9956 with bfloat16 values)."""
        assert precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {precision!r}"
        if precision == "int8":  # separate q, k, v: only the value projection stays in bfloat16
            quantize_linear_int8_per_token(self, keep_bf16=lambda name: name.endswith("attention.self.value"))
            return self
        if precision == "bf16":
            self.to(torch.bfloat16)
            for layer in self.encoder.layer:
                layer.attention.self.fuse_qkv()
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        assert input_ids.ndim == 2 and input_ids.shape == attention_mask.shape, "expected (B, T) ids and mask"
        assert input_ids.shape[1] <= self.config.max_position_embeddings, "sequence longer than positions"
        keep = attention_mask.bool()  # (B, T)
        # (B, 1, 1, T) boolean mask, True = attend; no mask when nothing is padded (faster SDPA path)
        mask = None if bool(keep.all()) else keep[:, None, None, :]
        h = self.encoder(self.embeddings(input_ids), mask).float()  # (B, T, C), float32 from here
        w = keep.to(h.dtype).unsqueeze(-1)  # (B, T, 1)
        pooled = (h * w).sum(1) / w.sum(1).clamp(min=1e-9)  # (B, C)
        return F.normalize(pooled, p=2, dim=1)
