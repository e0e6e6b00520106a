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
# Whisper's silence rule (openai-whisper's transcribe): a window whose <|nocaptions|> probability at the
# start-of-transcript position exceeds NO_SPEECH_THRESHOLD, and whose sampled tokens average a
# log-probability below LOGPROB_THRESHOLD, holds no speech: its transcript is empty, not a hallucination.
NO_SPEECH_THRESHOLD = 0.6
LOGPROB_THRESHOLD = -1.0
NO_SPEECH = "<|nocaptions|>"
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
    no_speech: int | None = None,
) -> list[list[int]]:
    """Sampled token ids (without the prompt and ``<|endoftext|>``) for audio features ``(B, 1500, C)``.

    With ``no_speech`` (the ``<|nocaptions|>`` id), windows judged silent by Whisper's rule get ``[]``.
    """
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
    sum_logprob = torch.zeros(B)
    no_speech_prob = torch.zeros(B)
    for step in range(max_new_tokens):
        all_logits = model.decoder(tokens, cache).float()  # (B, T, V)
        if step == 0 and no_speech is not None:  # at the <|startoftranscript|> position
            no_speech_prob = all_logits[:, 0].softmax(-1)[:, no_speech]
        logits = all_logits[:, -1]  # (B, V)
        logits.masked_fill_(begin if step == 0 else suppress, float("-inf"))
        nxt = logits.argmax(-1)  # (B,)
        sum_logprob += torch.where(done, 0.0, logits.log_softmax(-1).gather(1, nxt[:, None])[:, 0])
        nxt[done] = eot
        done |= nxt == eot
        for b in range(B):
            if not done[b]:
                out[b].append(int(nxt[b]))
        if bool(done.all()):
            break
        tokens = nxt[:, None]  # (B, 1)
    if no_speech is not None:
        avg_logprob = sum_logprob / torch.tensor([len(o) + 1 for o in out], dtype=torch.float32)
        silent = (no_speech_prob > NO_SPEECH_THRESHOLD) & (avg_logprob < LOGPROB_THRESHOLD)
        out = [[] if bool(silent[b]) else out[b] for b in range(B)]
    return out


def decode_text(tok: Any, ids: list[int], eot: int) -> str:
    """Text of sampled ids; special and timestamp tokens (ids >= ``<|endoftext|>``) are dropped."""
    return tok.decode([i for i in ids if i < eot], skip_special_tokens=True).strip()
