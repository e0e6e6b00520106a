"""Greedy transcription without timestamps, as Whisper decodes: a fixed prompt, suppressed tokens, a KV cache.

Prompt ``<|startoftranscript|><|en|><|transcribe|><|notimestamps|>``; every step takes the arg-max of
the last position's logits after setting ``suppress_tokens`` to ``-inf`` (and, on the first sampled
step only, ``begin_suppress_tokens``: the blank " " and ``<|endoftext|>``). Stops at ``<|endoftext|>``
or after ``MAX_NEW_TOKENS`` (Whisper's ``n_text_ctx // 2``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from aios_memory.errors import InvalidInputError
from aios_memory_whisper.model import Whisper

MAX_NEW_TOKENS = 224
SOT, EOT = "<|startoftranscript|>", "<|endoftext|>"
TRANSCRIBE, TRANSLATE, NO_TIMESTAMPS = "<|transcribe|>", "<|translate|>", "<|notimestamps|>"


@dataclass(frozen=True)
class SpecialTokens:
    sot: int
    eot: int
    transcribe: int
    translate: int
    no_timestamps: int

    @classmethod
    def from_tokenizer(cls, tok: Any) -> SpecialTokens:
        ids = [tok.token_to_id(t) for t in (SOT, EOT, TRANSCRIBE, TRANSLATE, NO_TIMESTAMPS)]
        if any(i is None for i in ids):
            raise InvalidInputError("tokenizer.json lacks Whisper's special tokens")
        return cls(*ids)


def prompt_tokens(tok: Any, language: str = "en", task: str = "transcribe") -> list[int]:
    """``<|startoftranscript|><|lang|><|task|><|notimestamps|>`` as token ids."""
    sp = SpecialTokens.from_tokenizer(tok)
    lang = tok.token_to_id(f"<|{language}|>")
    if lang is None:
        raise InvalidInputError(f"unknown Whisper language code {language!r} (e.g. 'en', 'de', 'fr')")
    if task not in ("transcribe", "translate"):
        raise InvalidInputError(f"task must be 'transcribe' or 'translate', got {task!r}")
    return [sp.sot, lang, sp.transcribe if task == "transcribe" else sp.translate, sp.no_timestamps]


@torch.inference_mode()
def greedy_decode(
    model: Whisper,
    features: torch.Tensor,
    prompt: list[int],
    eot: int,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> list[list[int]]:
    """Sampled token ids (without the prompt and ``<|endoftext|>``) for audio features ``(B, 1500, C)``."""
    assert features.ndim == 3, features.shape
    B, cfg = features.shape[0], model.cfg
    assert len(prompt) + max_new_tokens <= cfg.n_text_ctx
    suppress = torch.zeros(cfg.vocab_size, dtype=torch.bool)
    suppress[cfg.suppress_tokens] = True
    begin = suppress.clone()
    begin[cfg.begin_suppress_tokens] = True
    cache = model.new_cache(features)
    tokens = torch.tensor([prompt] * B, dtype=torch.long)  # (B, P)
    out: list[list[int]] = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool)
    for step in range(max_new_tokens):
        logits = model.decoder(tokens, cache)[:, -1].float()  # (B, V)
        logits.masked_fill_(begin if step == 0 else suppress, float("-inf"))
        nxt = logits.argmax(-1)  # (B,)
        nxt[done] = eot
        done |= nxt == eot
        for b in range(B):
            if not done[b]:
                out[b].append(int(nxt[b]))
        if bool(done.all()):
            break
        tokens = nxt[:, None]  # (B, 1)
    return out


def decode_text(tok: Any, ids: list[int], eot: int) -> str:
    """Text of sampled ids; special and timestamp tokens (ids >= ``<|endoftext|>``) are dropped."""
    return tok.decode([i for i in ids if i < eot], skip_special_tokens=True).strip()
