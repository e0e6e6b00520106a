"""Whisper natively in PyTorch: the audio encoder and the text decoder with a key/value cache.

Submodule names mirror the Hugging Face checkpoint keys without their ``model.`` prefix
(``encoder.layers.0.self_attn.q_proj``), so a converted weight file loads with
``load_state_dict(strict=True)``. The output projection is tied to ``decoder.embed_tokens``.
Exact GELU, LayerNorm eps 1e-5, attention scaled by ``head_dim ** -0.5``; ``k_proj`` has no bias.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class WhisperConfig:
    n_mels: int = 80
    n_audio_ctx: int = 1500  # encoder positions per 30 s window
    n_text_ctx: int = 448  # decoder positions
    d_model: int = 512
    n_head: int = 8
    encoder_layers: int = 6
    decoder_layers: int = 6
    ffn_dim: int = 2048
    vocab_size: int = 51865
    layer_norm_eps: float = 1e-5
    suppress_tokens: list[int] = field(default_factory=list)  # never sampled
    begin_suppress_tokens: list[int] = field(default_factory=list)  # never the first sampled token

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WhisperConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class Linear(nn.Linear):
    """``nn.Linear`` without the random initialisation: its weights always come from the weight file."""

    def reset_parameters(self) -> None:
        pass


class Conv1d(nn.Conv1d):
    def reset_parameters(self) -> None:
        pass


class Attention(nn.Module):
    def __init__(self, d_model: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.q_proj = Linear(d_model, d_model)
        self.k_proj = Linear(d_model, d_model, bias=False)
        self.v_proj = Linear(d_model, d_model)
        self.out_proj = Linear(d_model, d_model)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        return x.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, D)

    def kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.k_proj(x)), self.heads(self.v_proj(x))  # (B, H, T, D) each

    def forward(
        self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor] | None = None, causal: bool = False
    ) -> torch.Tensor:
        B, T, C = x.shape
        q = self.heads(self.q_proj(x))  # (B, H, T, D)
        k, v = kv if kv is not None else self.kv(x)  # (B, H, S, D)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal and T > 1)  # (B, H, T, D)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: WhisperConfig) -> None:
        super().__init__()
        C, eps = cfg.d_model, cfg.layer_norm_eps
        self.self_attn = Attention(C, cfg.n_head)
        self.self_attn_layer_norm = nn.LayerNorm(C, eps=eps)
        self.fc1 = Linear(C, cfg.ffn_dim)
        self.fc2 = Linear(cfg.ffn_dim, C)
        self.final_layer_norm = nn.LayerNorm(C, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C)
        x = x + self.self_attn(self.self_attn_layer_norm(x))
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


class Encoder(nn.Module):
    def __init__(self, cfg: WhisperConfig) -> None:
        super().__init__()
        C = cfg.d_model
        self.conv1 = Conv1d(cfg.n_mels, C, kernel_size=3, padding=1)
        self.conv2 = Conv1d(C, C, kernel_size=3, stride=2, padding=1)
        self.embed_positions = nn.Module()
        self.embed_positions.weight = nn.Parameter(torch.empty(cfg.n_audio_ctx, C))  # sinusoids
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.layer_norm = nn.LayerNorm(C, eps=cfg.layer_norm_eps)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv1(mel))  # (B, C, 3000)
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (B, 1500, C)
        x = x + self.embed_positions.weight
        for layer in self.layers:
            x = layer(x)
        return self.layer_norm(x)  # (B, 1500, C)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: WhisperConfig) -> None:
        super().__init__()
        C, eps = cfg.d_model, cfg.layer_norm_eps
        self.self_attn = Attention(C, cfg.n_head)
        self.self_attn_layer_norm = nn.LayerNorm(C, eps=eps)
        self.encoder_attn = Attention(C, cfg.n_head)
        self.encoder_attn_layer_norm = nn.LayerNorm(C, eps=eps)
        self.fc1 = Linear(C, cfg.ffn_dim)
        self.fc2 = Linear(cfg.ffn_dim, C)
        self.final_layer_norm = nn.LayerNorm(C, eps=eps)

    def forward(self, x: torch.Tensor, cache: KVCache, i: int) -> torch.Tensor:  # (B, T, C)
        h = self.self_attn_layer_norm(x)
        k, v = cache.append(i, *self.self_attn.kv(h))  # (B, H, past + T, D)
        x = x + self.self_attn(h, (k, v), causal=cache.length == 0)
        x = x + self.encoder_attn(self.encoder_attn_layer_norm(x), cache.cross[i])
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


class KVCache:
    """Keys and values of every decoder layer: self-attention ones grow in a preallocated buffer (no
    re-computation, no re-concatenation), cross-attention ones are computed once from the audio."""

    def __init__(self, decoder: Decoder, xa: torch.Tensor, repeat: int = 1) -> None:
        B, H = xa.shape[0] * repeat, decoder.cfg.n_head
        D, n = decoder.cfg.d_model // H, decoder.cfg.decoder_layers
        self.cross = [layer.encoder_attn.kv(xa) for layer in decoder.layers]  # (B, H, 1500, D) each
        if repeat > 1:  # beams / samples of one audio share its cross-attention keys and values
            self.cross = [
                (k.repeat_interleave(repeat, 0), v.repeat_interleave(repeat, 0)) for k, v in self.cross
            ]
        shape = (n, B, H, decoder.cfg.n_text_ctx, D)
        self.k, self.v = torch.empty(shape, dtype=xa.dtype), torch.empty(shape, dtype=xa.dtype)
        self.length = 0  # tokens already cached

    def append(self, i: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[2]
        assert end <= self.k.shape[3], "decoder context (448 tokens) exceeded"
        self.k[i, :, :, self.length : end] = k
        self.v[i, :, :, self.length : end] = v
        return self.k[i, :, :, :end], self.v[i, :, :, :end]

    def reorder(self, rows: torch.Tensor) -> None:
        """Row ``b`` takes the cached self-attention keys/values of row ``rows[b]`` (beam search: each
        surviving hypothesis continues from its source beam). Cross-attention is per audio and, since a
        beam never changes audio, stays as it is."""
        n = self.length
        self.k[:, :, :, :n] = self.k[:, rows, :, :n]
        self.v[:, :, :, :n] = self.v[:, rows, :, :n]


class Decoder(nn.Module):
    def __init__(self, cfg: WhisperConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Module()
        self.embed_tokens.weight = nn.Parameter(torch.empty(cfg.vocab_size, cfg.d_model))
        self.embed_positions = nn.Module()
        self.embed_positions.weight = nn.Parameter(torch.empty(cfg.n_text_ctx, cfg.d_model))
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.layer_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)

    def forward(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits ``(B, T, V)`` of the next token after each of ``tokens`` ``(B, T)``, which follow the
        ``cache.length`` tokens already in the cache (which then holds them too)."""
        T = tokens.shape[1]
        assert tokens.ndim == 2 and (T == 1 or cache.length == 0), "prompt first, then one token a step"
        pos = self.embed_positions.weight[cache.length : cache.length + T]  # (T, C)
        x = F.embedding(tokens, self.embed_tokens.weight) + pos  # (B, T, C)
        for i, layer in enumerate(self.layers):
            x = layer(x, cache, i)
        cache.length += T
        x = self.layer_norm(x)
        return x @ self.embed_tokens.weight.T  # (B, T, V): output projection tied to the embeddings


class Whisper(nn.Module):
    def __init__(self, cfg: WhisperConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """Audio features ``(B, 1500, C)`` of log-mel windows ``(B, 80, 3000)``."""
        assert mel.ndim == 3 and mel.shape[1:] == (self.cfg.n_mels, 2 * self.cfg.n_audio_ctx), mel.shape
        return self.encoder(mel.float())

    def new_cache(self, xa: torch.Tensor, repeat: int = 1) -> KVCache:
        """A cache for ``xa`` ``(B, 1500, C)``, each audio's row repeated ``repeat`` times (beams)."""
        assert xa.ndim == 3 and xa.shape[2] == self.cfg.d_model, xa.shape
        return KVCache(self.decoder, xa, repeat)


def pooled_embedding(features: torch.Tensor, n_real: list[int]) -> torch.Tensor:
    """(B, C) mean over each window's first ``n_real[b]`` encoder positions (real audio, not padding)."""
    assert features.ndim == 3 and len(n_real) == features.shape[0]
    return torch.stack([features[b, : max(1, n)].mean(0) for b, n in enumerate(n_real)])
