"""Maximal marginal relevance: pick ``k`` of a candidate pool that are relevant *and* unlike each other.

Greedy MMR (Carbonell & Goldstein, 1998): each step takes the candidate maximising
``λ·sim(q, d) − (1 − λ)·max(sim(d, s) for s already selected)`` (the second term is 0 for the first
pick). ``λ`` follows LangChain's ``lambda_mult``: 1 ranks by relevance alone, 0 by diversity alone.
Ties go to the lower index, so a pool in search order keeps search order where MMR cannot tell.
Pure float64 arithmetic, no randomness: the same pool always gives the same selection.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from aios_memory.errors import InvalidInputError


def check_lambda(lambda_mult: Any) -> float:
    """``lambda_mult`` as a float in [0, 1]; ``InvalidInputError`` otherwise."""
    if (
        isinstance(lambda_mult, bool)
        or not isinstance(lambda_mult, (int, float))
        or not math.isfinite(lambda_mult)
        or not 0.0 <= lambda_mult <= 1.0
    ):
        raise InvalidInputError(f"the MMR lambda must be a number from 0 to 1, got {lambda_mult!r}")
    return float(lambda_mult)


def mmr_select(
    query: Any,
    vectors: Any,
    scores: Any,
    lambda_mult: float,
    k: int,
) -> list[int]:
    """Indices into the pool chosen by greedy MMR, in selection order (at most ``k``, at most the pool).

    ``query`` is the query vector (used only for its dimension check: relevance is ``scores``, the
    candidates' exact cosines to it, or whatever relevance the caller ranks by); ``vectors`` the pool's
    ``(n, dim)`` unit vectors, whose pairwise dot products are the candidates' cosines to each other.
    """
    lam = check_lambda(lambda_mult)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidInputError(f"k must be a positive integer, got {k!r}")
    v = np.asarray(vectors, np.float64)
    rel = np.asarray(scores, np.float64).reshape(-1)
    q = np.asarray(query, np.float64).reshape(-1)
    n = len(rel)
    if n == 0:
        return []
    if v.ndim != 2 or v.shape[0] != n or v.shape[1] != q.size:
        raise InvalidInputError(
            f"the pool's vectors have shape {v.shape}, expected ({n}, {q.size}) for {n} scores"
        )
    sim = v @ v.T  # candidates' cosines to each other (unit rows)
    redundancy = np.full(n, -np.inf)  # max cosine to anything selected so far (none yet)
    taken = np.zeros(n, dtype=bool)
    out: list[int] = []
    for _ in range(min(k, n)):
        penalty = np.where(np.isneginf(redundancy), 0.0, redundancy)
        value = lam * rel - (1.0 - lam) * penalty
        value[taken] = -np.inf
        best = int(np.argmax(value))  # argmax returns the first of equal maxima: the lower index
        out.append(best)
        taken[best] = True
        redundancy = np.maximum(redundancy, sim[best])
    return out
