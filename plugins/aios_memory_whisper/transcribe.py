"""Window transcription as openai-whisper's ``transcribe`` does it: temperature fallback, the no-speech
rule and, optionally, timestamped segments.

Each 30 s window is decoded at temperature 0 (greedy, or beam search with ``beam_size`` > 1). A window is
decoded again at the next temperature (0.2, 0.4, ... 1.0; sampling, best of ``best_of``) while its text's
gzip compression ratio exceeds 2.4 (a repetition loop) or its average log-probability is below -1.0;
unless it is silent: ``<|nocaptions|>`` probability above 0.6 with that low log-probability, which then
gives no text at all. When every temperature fails, the window keeps the try with the best average
log-probability among those under the compression threshold (faster-whisper's choice; openai-whisper
keeps the last, hottest try). Sampled windows are decoded one at a time, each with a generator seeded
the same way, so a window's transcript repeats and does not depend on the windows batched with it.

Imports no torch until a window is decoded.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aios_memory.errors import InvalidInputError

if TYPE_CHECKING:
    import torch

    from aios_memory_whisper.beam import Hypothesis, LogitRules
    from aios_memory_whisper.model import Whisper

# openai-whisper's transcribe defaults (decoding.py holds the same two thresholds for greedy_decode)
NO_SPEECH_THRESHOLD = 0.6
LOGPROB_THRESHOLD = -1.0
TIME_PRECISION = 0.02  # seconds per timestamp token
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
COMPRESSION_RATIO_THRESHOLD = 2.4
MAX_BEAM = 16
SEED = 0


@dataclass(frozen=True)
class DecodeOptions:
    beam_size: int = 1  # 1: greedy
    patience: float = 1.0
    best_of: int = 5  # samples per window at temperature > 0
    temperatures: tuple[float, ...] = TEMPERATURES
    compression_ratio_threshold: float | None = COMPRESSION_RATIO_THRESHOLD
    logprob_threshold: float | None = LOGPROB_THRESHOLD
    no_speech_threshold: float | None = NO_SPEECH_THRESHOLD
    timestamps: bool = False
    length_penalty: float | None = None

    def __post_init__(self) -> None:
        for name in ("beam_size", "best_of"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_BEAM:
                raise InvalidInputError(f"{name} must be an integer from 1 to {MAX_BEAM}, got {v!r}")
        if not isinstance(self.patience, (int, float)) or not 0 < self.patience <= 4:
            raise InvalidInputError(f"patience must be a number in (0, 4], got {self.patience!r}")
        temps = self.temperatures
        if not temps or any(not isinstance(t, (int, float)) or not 0 <= t <= 2 for t in temps):
            raise InvalidInputError(f"temperatures must be numbers in [0, 2], got {temps!r}")


@dataclass(frozen=True)
class WindowResult:
    """One window's chosen decoding: its text, tokens, the temperature that produced it, and whether the
    no-speech rule emptied it."""

    text: str
    hypothesis: Hypothesis
    compression_ratio: float
    silent: bool
    attempts: int = 1  # temperatures tried

    @property
    def temperature(self) -> float:
        return self.hypothesis.temperature


@dataclass(frozen=True)
class Segment:
    start: float  # seconds from the start of the audio
    end: float
    text: str


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def _decode(
    model: Whisper,
    features: torch.Tensor,
    prompt: list[int],
    rules: LogitRules,
    opts: DecodeOptions,
    temperature: float,
    no_speech: int | None,
    seed: int,
) -> list[Hypothesis]:
    import torch

    from aios_memory_whisper.beam import beam_search, sample
    from aios_memory_whisper.decoding import MAX_NEW_TOKENS

    if temperature == 0 and opts.beam_size > 1:
        return beam_search(
            model,
            features,
            prompt,
            rules,
            opts.beam_size,
            opts.patience,
            MAX_NEW_TOKENS,
            no_speech,
            opts.length_penalty,
        )
    gen = torch.Generator().manual_seed(seed)
    best_of = 1 if temperature == 0 else opts.best_of
    return sample(
        model,
        features,
        prompt,
        rules,
        temperature,
        best_of,
        MAX_NEW_TOKENS,
        no_speech,
        gen,
        opts.length_penalty,
    )


def _needs_fallback(h: Hypothesis, ratio: float, opts: DecodeOptions) -> bool:
    fail = False
    if opts.compression_ratio_threshold is not None and ratio > opts.compression_ratio_threshold:
        fail = True
    if opts.logprob_threshold is not None and h.avg_logprob < opts.logprob_threshold:
        fail = True
    if _silent(h, opts):
        fail = False  # no speech: re-sampling would only invent words
    return fail


def _silent(h: Hypothesis, opts: DecodeOptions) -> bool:
    if opts.no_speech_threshold is None or h.no_speech_prob <= opts.no_speech_threshold:
        return False
    return opts.logprob_threshold is None or h.avg_logprob < opts.logprob_threshold


def decode_windows(
    model: Whisper,
    tok: Any,
    features: torch.Tensor,
    prompt: list[int],
    eot: int,
    opts: DecodeOptions,
    no_speech: int | None = None,
) -> list[WindowResult]:
    """Decode each window of ``features`` ``(B, 1500, C)`` with temperature fallback.

    ``prompt`` ends in ``<|notimestamps|>`` (as ``decoding.prompt_tokens`` builds it); with
    ``opts.timestamps`` that token is dropped and the timestamp rules apply.
    """
    from aios_memory_whisper.beam import LogitRules
    from aios_memory_whisper.decoding import decode_text

    if opts.timestamps:
        ts_begin = prompt[-1] + 1
        prompt = prompt[:-1]
        rules = LogitRules(model, eot, ts_begin)
    else:
        rules = LogitRules(model, eot)
    tries: list[list[tuple[Hypothesis, float]]] = [[] for _ in range(len(features))]
    pending = list(range(len(features)))
    for temperature in opts.temperatures:
        if not pending:
            break
        t = float(temperature)
        if t == 0:  # deterministic: the whole batch at once
            hyps = _decode(model, features[pending], prompt, rules, opts, t, no_speech, SEED)
        else:
            hyps = [
                _decode(model, features[i : i + 1], prompt, rules, opts, t, no_speech, SEED)[0]
                for i in pending
            ]
        still = []
        for i, h in zip(pending, hyps, strict=True):
            ratio = compression_ratio(decode_text(tok, h.tokens, eot))
            tries[i].append((h, ratio))
            if _needs_fallback(h, ratio, opts):
                still.append(i)
        pending = still
    out = []
    for i, window in enumerate(tries):
        h, ratio = window[-1]
        if i in pending:  # every temperature failed: the best try under the compression threshold
            ok = [
                t
                for t in window
                if opts.compression_ratio_threshold is None or t[1] <= opts.compression_ratio_threshold
            ]
            h, ratio = max(ok or window, key=lambda t: t[0].avg_logprob)
        silent = _silent(h, opts)
        text = "" if silent else decode_text(tok, h.tokens, eot)
        out.append(WindowResult(text, h, ratio, silent, len(window)))
    return out


def segments(
    tok: Any, tokens: list[int], eot: int, ts: int, offset: float = 0.0, duration: float = 30.0
) -> list[Segment]:
    """Timestamped segments of one window's tokens (``<|t0|> text <|t1|>`` ...), times shifted by ``offset``.

    ``ts`` is ``<|0.00|>``'s id (``<|notimestamps|>`` + 1). Text after the last timestamp ends at
    ``duration`` (the window's real length)."""
    from aios_memory_whisper.decoding import decode_text

    out: list[Segment] = []
    start: float | None = None
    text: list[int] = []
    for t in tokens:
        if t >= ts:
            time = (t - ts) * TIME_PRECISION
            if start is not None and text:
                out.append(Segment(offset + start, offset + time, decode_text(tok, text, eot)))
                start, text = None, []
            elif start is None:
                start = time
        elif t < eot:
            if start is None:
                start = out[-1].end - offset if out else 0.0
            text.append(t)
    if text:
        out.append(
            Segment(
                offset + (start or 0.0), offset + max(duration, start or 0.0), decode_text(tok, text, eot)
            )
        )
    return [s for s in out if s.text]
