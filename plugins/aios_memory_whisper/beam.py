"""Whisper decoding beyond greedy: beam search, temperature sampling and timestamp tokens, over the KV cache.

Semantics follow openai-whisper's ``decoding.py`` (written anew here):

* Logit rules, in order: on the first sampled step ``begin_suppress_tokens`` (blank, ``<|endoftext|>``);
  always ``suppress_tokens``; with timestamps, Whisper's timestamp rules (``<|notimestamps|>`` never;
  timestamps come in pairs; they never decrease; the first token is a timestamp no later than
  ``max_initial_timestamp`` seconds; if the timestamps together outweigh every text token, a timestamp).
* Beam search, with CTranslate2's bookkeeping (what faster-whisper runs): each audio keeps ``beam_size``
  live hypotheses, scored by their summed log-probabilities. Every step the ``2 * beam_size`` best
  one-token extensions are ranked; those among the first ``beam_size`` that end in ``<|endoftext|>`` are
  finished, and the first ``beam_size`` that do not are the next live ones. An audio is done once it
  has ``round(beam_size * patience)`` finished ones (at the length limit the live ones are closed).
  Finished hypotheses are ranked by sum log-probability / length (``<|endoftext|>`` not counted; length
  penalty ``None``, which is CTranslate2's ``length_penalty=1``) or / ``((5 + length) / 6) ** penalty``.
  openai-whisper differs only in which ends it records: every one ranked above the ``beam_size``-th live
  extension, at most ``round(beam_size * patience)`` in all; where that changes the result (a short
  finished guess crowding out a longer, better one) CTranslate2's rule is kept, as the reference.
* Sampling (temperature > 0): ``best_of`` samples per audio from ``softmax(logits / T)``, ranked the same
  way; log-probabilities are those of the untempered logits. Temperature 0 with ``best_of=1`` is greedy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aios_memory_whisper.model import Whisper
from aios_memory_whisper.transcribe import TIME_PRECISION

MAX_INITIAL_TIMESTAMP = 1.0  # seconds


@dataclass(frozen=True)
class Hypothesis:
    """One decoded window: sampled ids (no prompt, no ``<|endoftext|>``), their summed log-probability
    (the ``<|endoftext|>`` step included, as Whisper sums it) and the ``<|nocaptions|>`` probability."""

    tokens: list[int]
    sum_logprob: float
    no_speech_prob: float = 0.0
    temperature: float = 0.0

    @property
    def avg_logprob(self) -> float:
        return self.sum_logprob / (len(self.tokens) + 1)


class LogitRules:
    """Suppression and (optionally) timestamp rules applied in place to next-token logits ``(N, V)``."""

    def __init__(self, model: Whisper, eot: int, timestamp_begin: int | None = None) -> None:
        V = model.cfg.vocab_size
        self.eot, self.ts = eot, timestamp_begin
        self.suppress = torch.zeros(V, dtype=torch.bool)
        self.suppress[model.cfg.suppress_tokens] = True
        self.begin = self.suppress.clone()
        self.begin[model.cfg.begin_suppress_tokens] = True
        self.max_initial = round(MAX_INITIAL_TIMESTAMP / TIME_PRECISION)  # 50 steps

    def __call__(self, logits: torch.Tensor, seqs: list[list[int]], step: int) -> None:
        logits.masked_fill_(self.begin if step == 0 else self.suppress, float("-inf"))
        ts = self.ts
        if ts is None:
            return
        inf = float("-inf")
        logits[:, ts - 1] = inf  # <|notimestamps|>
        for k, seq in enumerate(seqs):
            last = len(seq) >= 1 and seq[-1] >= ts
            penultimate = len(seq) < 2 or seq[-2] >= ts
            if last:
                if penultimate:  # a pair just closed (or the opening one): text next
                    logits[k, ts:] = inf
                else:  # a segment's end: its partner timestamp or <|endoftext|>
                    logits[k, : self.eot] = inf
            stamps = [t for t in seq if t >= ts]
            if stamps:  # never earlier than the last one (repeat allowed only to pair it)
                floor = stamps[-1] if last and not penultimate else stamps[-1] + 1
                logits[k, ts:floor] = inf
        if step == 0:
            logits[:, :ts] = inf
            logits[:, ts + self.max_initial + 1 :] = inf
        logprobs = logits.float().log_softmax(-1)
        stamp_mass = logprobs[:, ts:].logsumexp(-1)
        best_text = logprobs[:, :ts].max(-1).values
        logits[stamp_mass > best_text, :ts] = inf


def rank_score(sum_logprob: float, length: int, length_penalty: float | None = None) -> float:
    penalty = length if length_penalty is None else ((5 + length) / 6) ** length_penalty
    return sum_logprob / max(penalty, 1e-9)


def _no_speech(all_logits: torch.Tensor, no_speech: int | None, every: int) -> list[float]:
    if no_speech is None:
        return [0.0] * (all_logits.shape[0] // every)
    return all_logits[::every, 0].softmax(-1)[:, no_speech].tolist()  # at <|startoftranscript|>


@torch.inference_mode()
def beam_search(
    model: Whisper,
    features: torch.Tensor,
    prompt: list[int],
    rules: LogitRules,
    beam_size: int = 5,
    patience: float = 1.0,
    max_new_tokens: int = 224,
    no_speech: int | None = None,
    length_penalty: float | None = None,
) -> list[Hypothesis]:
    """The best finished hypothesis of each audio in ``features`` ``(B, 1500, C)``."""
    assert features.ndim == 3 and beam_size >= 1 and patience > 0
    B, K, eot = features.shape[0], beam_size, rules.eot
    assert len(prompt) + max_new_tokens <= model.cfg.n_text_ctx
    wanted = round(K * patience)
    cache = model.new_cache(features, repeat=K)
    tokens = torch.tensor([prompt] * (B * K), dtype=torch.long)
    seqs: list[tuple[int, ...]] = [()] * (B * K)
    sums = [0.0] * (B * K)
    finished: list[dict[tuple[int, ...], float]] = [{} for _ in range(B)]
    no_speech_prob = [0.0] * B
    for step in range(max_new_tokens):
        all_logits = model.decoder(tokens, cache).float()
        if step == 0:
            no_speech_prob = _no_speech(all_logits, no_speech, K)
        logits = all_logits[:, -1]
        rules(logits, [list(s) for s in seqs], step)
        top_lp, top_id = logits.log_softmax(-1).topk(2 * K, dim=-1)
        top_lp, top_id = top_lp.tolist(), top_id.tolist()
        new_seqs: list[tuple[int, ...]] = []
        new_sums: list[float] = []
        sources: list[int] = []
        for b in range(B):
            closed = len(finished[b]) >= wanted  # done: its live beams run on (batch shape), unrecorded
            scores: dict[tuple[int, ...], float] = {}
            origin: dict[tuple[int, ...], int] = {}
            for r in range(b * K, (b + 1) * K):
                for lp, t in zip(top_lp[r], top_id[r], strict=True):
                    cand = (*seqs[r], t)
                    scores[cand], origin[cand] = sums[r] + lp, r  # identical beams (step 0) merge
            ranked = sorted(scores, key=scores.__getitem__, reverse=True)[: 2 * K]
            for pos, cand in enumerate(ranked):
                if cand[-1] == eot:
                    if pos < K and not closed:  # an end among the best beam_size extensions is recorded
                        finished[b][cand] = scores[cand]
                elif len(new_seqs) < (b + 1) * K:
                    new_seqs.append(cand)
                    new_sums.append(scores[cand])
                    sources.append(origin[cand])
        if sources != list(range(B * K)):
            cache.reorder(torch.tensor(sources, dtype=torch.long))
        seqs, sums = new_seqs, new_sums
        if all(len(f) >= wanted for f in finished):
            break
        tokens = torch.tensor([[s[-1]] for s in seqs], dtype=torch.long)
    out = []
    for b in range(B):
        done = finished[b]
        live = sorted(range(b * K, (b + 1) * K), key=sums.__getitem__, reverse=True)
        for r in live:  # too few finished (length limit): close the best live ones
            if len(done) >= K:
                break
            done[(*seqs[r], eot)] = sums[r]
        best = max(done, key=lambda s: rank_score(done[s], len(s) - 1, length_penalty))
        out.append(Hypothesis(list(best[:-1]), done[best], no_speech_prob[b]))
    return out


@torch.inference_mode()
def sample(
    model: Whisper,
    features: torch.Tensor,
    prompt: list[int],
    rules: LogitRules,
    temperature: float = 0.0,
    best_of: int = 1,
    max_new_tokens: int = 224,
    no_speech: int | None = None,
    generator: torch.Generator | None = None,
    length_penalty: float | None = None,
) -> list[Hypothesis]:
    """Greedy (temperature 0) or sampled decoding; with ``best_of`` > 1 the best-ranked sample per audio."""
    assert features.ndim == 3 and best_of >= 1 and temperature >= 0
    B, N, eot = features.shape[0], features.shape[0] * best_of, rules.eot
    cache = model.new_cache(features, repeat=best_of)
    tokens = torch.tensor([prompt] * N, dtype=torch.long)
    seqs: list[list[int]] = [[] for _ in range(N)]
    sums = torch.zeros(N, dtype=torch.float64)
    done = torch.zeros(N, dtype=torch.bool)
    no_speech_prob = [0.0] * B
    for step in range(max_new_tokens):
        all_logits = model.decoder(tokens, cache).float()
        if step == 0:
            no_speech_prob = _no_speech(all_logits, no_speech, best_of)
        logits = all_logits[:, -1]
        rules(logits, seqs, step)
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            probs = (logits / temperature).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
        lp = logits.log_softmax(-1).gather(1, nxt[:, None])[:, 0]
        sums += torch.where(done, 0.0, lp.double())
        nxt[done] = eot
        done |= nxt == eot
        for r in range(N):
            if not done[r]:
                seqs[r].append(int(nxt[r]))
        if bool(done.all()):
            break
        tokens = nxt[:, None]
    out = []
    for b in range(B):
        rows = range(b * best_of, (b + 1) * best_of)
        r = max(rows, key=lambda i: rank_score(float(sums[i]), len(seqs[i]), length_penalty))
        out.append(Hypothesis(seqs[r], float(sums[r]), no_speech_prob[b], temperature))
    return out
