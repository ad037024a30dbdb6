"""The normalisation Z that turns raw clinical-relevance scores into DPO loss weights.

    none       the raw scores as they are
    minmax     (s - min) / (max - min): the least relevant pair gets 0, the most 1
    rank       rank / n (ties share their mean rank): uniform in (0, 1], robust to outliers
    mean-one   s / mean(s): the weights keep their ratios and average 1
    clip       min(max(s, low), high), default [0, 1]

The default is "mean-one". A weighted DPO loss is the mean of weight x loss, so
weights that average 0.5 halve every gradient: the weighting would then also
change the effective learning rate and a comparison with plain DPO would mix the
two effects. Scaling to mean 1 keeps the learning rate of plain DPO and moves
only how it is shared between pairs. "minmax" has the same flaw and also zeroes
the lowest pair, dropping it from training.

When the scores carry no information (all equal, or all 0), "minmax" and
"mean-one" give every pair weight 1: plain DPO. The names are in
`mmedpo.registry.NORMALISERS`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from mmedpo.registry import NORMALISERS


def keep(scores: list[float]) -> list[float]:
    return list(scores)


def minmax(scores: list[float]) -> list[float]:
    low, high = min(scores), max(scores)
    if high == low:
        return [1.0] * len(scores)
    return [(s - low) / (high - low) for s in scores]


def rank(scores: list[float]) -> list[float]:
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and scores[order[end + 1]] == scores[order[start]]:
            end += 1
        mean_rank = (start + end) / 2 + 1  # 1-based mean rank of the tied run
        for index in order[start : end + 1]:
            ranks[index] = mean_rank / len(scores)
        start = end + 1
    return ranks


def mean_one(scores: list[float]) -> list[float]:
    if any(s < 0 for s in scores):
        raise ValueError("mean-one needs scores >= 0 (a negative weight would reverse a preference)")
    mean = sum(scores) / len(scores)
    if mean == 0:
        return [1.0] * len(scores)
    return [s / mean for s in scores]


def clip(scores: list[float], low: float = 0.0, high: float = 1.0) -> list[float]:
    if low > high:
        raise ValueError(f"clip needs low <= high, got low={low}, high={high}")
    return [min(max(s, low), high) for s in scores]


def normalise(scores: Sequence[float], method: str = "mean-one", **kw) -> list[float]:
    """Normalise raw scores over the dataset with the named method (see the module docstring)."""
    normaliser = NORMALISERS.load(method)
    values = [float(s) for s in scores]
    bad = [i for i, s in enumerate(values) if not math.isfinite(s)]
    if bad:
        raise ValueError(f"scores must be finite numbers; score {bad[0]} is {values[bad[0]]}")
    if not values:
        return []
    return normaliser(values, **kw)
