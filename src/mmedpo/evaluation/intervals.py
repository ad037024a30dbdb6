"""Paired differences between evaluations, their intervals, p-values and verdicts.

One run (`paired_difference`): the difference of a metric between two variants
on the same test items, with a percentile bootstrap interval (items resampled
with replacement, the same draw applied to both variants; scipy.stats.bootstrap)
and a two-sided sign-flip p-value (each item's two results swapped at random;
scipy.stats.permutation_test). The paired design is far tighter than two
independent intervals, because most items are answered alike by both.

Several seeds (`difference_over_seeds`): the per-seed differences, their mean,
and an interval from a paired hierarchical bootstrap that resamples seeds, then
items within each drawn seed (`hierarchical_bootstrap`), so it accounts for the
variation between training runs as well as the finite test split. Items are
paired within a seed; seeds may have different test items.

A difference is "better" when its whole interval lies above 0, "worse" when it
lies below 0, and "within noise" otherwise (`verdict`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from mmedpo.evaluation.item_scores import Aggregate, aggregate, mean_score, paired_statistics, result_statistics

# Resamples per vectorised call, so memory stays bounded on large test sets.
_BATCH = 500


def verdict(low: float, high: float) -> str:
    """ "better" when the interval lies above 0, "worse" when below, else "within noise" (0 inside or on an end)."""
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "within noise"


def _as_statistics(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    """Per-item scores (n,) as statistics (1, n); statistics (k, n) unchanged."""
    array = np.asarray(scores, dtype=float)
    return array[np.newaxis] if array.ndim == 1 else array


def _pair(
    variant: Sequence[float] | np.ndarray, baseline: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    ours, theirs = _as_statistics(variant), _as_statistics(baseline)
    if ours.shape != theirs.shape or ours.ndim != 2 or ours.shape[1] == 0:
        raise ValueError(
            f"paired statistics need two equally long non-empty score lists, got {ours.shape} and {theirs.shape}"
        )
    return ours, theirs


def paired_bootstrap(
    variant: Sequence[float] | np.ndarray,
    baseline: Sequence[float] | np.ndarray,
    seed: int = 0,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    statistic: Aggregate = mean_score,
) -> tuple[float, float, float]:
    """The difference statistic(variant) - statistic(baseline) and its percentile bootstrap interval.

    `variant` and `baseline` are per-item scores of the same items in the same
    order (or statistics of shape (k, n), with `statistic` their aggregate, see
    `item_scores`). Each resample draws item indices with replacement and applies
    them to both. Deterministic for the seed. With a single item the interval
    is (-inf, inf): one item says nothing about how much the difference varies.
    """
    return _item_bootstrap(*_pair(variant, baseline), seed, n_resamples, confidence, statistic)


def _item_bootstrap(
    ours: np.ndarray, theirs: np.ndarray | None, seed: int, n_resamples: int, confidence: float, statistic: Aggregate
) -> tuple[float, float, float]:
    """`paired_bootstrap`, or with no baseline (None) the bootstrap of statistic(ours) itself."""

    def difference(index: np.ndarray, axis: int = -1) -> np.ndarray:
        # scipy resamples the item indices; both variants are read at the same ones.
        return _difference(ours, theirs, statistic, index)

    observed = float(difference(np.arange(ours.shape[1])))
    if ours.shape[1] < 2:
        return observed, -math.inf, math.inf  # one item says nothing about the spread: the interval is unbounded
    result = scipy_stats.bootstrap(
        (np.arange(ours.shape[1]),),
        difference,
        vectorized=True,
        n_resamples=n_resamples,
        batch=_BATCH,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return observed, float(result.confidence_interval.low), float(result.confidence_interval.high)


def _difference(ours: np.ndarray, theirs: np.ndarray | None, statistic: Aggregate, items: np.ndarray) -> np.ndarray:
    """statistic(ours) - statistic(theirs) on the items indexed by `items` (any shape; its last axis is one draw)."""
    value = statistic(ours[:, items])
    return value if theirs is None else value - statistic(theirs[:, items])


def approximate_randomization(
    variant: Sequence[float] | np.ndarray,
    baseline: Sequence[float] | np.ndarray,
    seed: int = 0,
    n_resamples: int = 10000,
    statistic: Aggregate = mean_score,
) -> float:
    """Two-sided p-value that variant and baseline score alike, by swapping each item's two results at random.

    scipy.stats.permutation_test with paired samples: exact (all 2**n swaps) when
    2**n <= n_resamples, else n_resamples random swaps, p = (1 + extreme) / (1 + n_resamples);
    two-sided as twice the smaller one-sided p-value. Deterministic for the seed.
    """
    ours, theirs = _pair(variant, baseline)
    if np.array_equal(ours, theirs) or ours.shape[1] < 2:
        # Every swap gives the observed difference, 0; or one item, whose swap only mirrors it: p = 1 exactly.
        return 1.0
    both, n = np.concatenate([ours, theirs], axis=1), ours.shape[1]

    def difference(first: np.ndarray, second: np.ndarray, axis: int = -1) -> np.ndarray:
        # Indices into `both`: item i of the variant is i, of the baseline n + i; swapping exchanges them.
        return statistic(both[:, first]) - statistic(both[:, second])

    result = scipy_stats.permutation_test(
        (np.arange(n), np.arange(n) + n),
        difference,
        permutation_type="samples",
        vectorized=True,
        n_resamples=n_resamples,
        batch=_BATCH,
        rng=np.random.default_rng(seed),
    )
    return float(result.pvalue)


def hierarchical_bootstrap(
    seeds: Sequence[tuple[np.ndarray, np.ndarray | None]],
    statistic: Aggregate = mean_score,
    seed: int = 0,
    n_resamples: int = 2000,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Per-seed differences, their mean and a paired hierarchical bootstrap interval of the mean.

    `seeds` holds, per seed, the variant's statistics and the baseline's on the
    same items ((k, n_s) each; n_s may differ between seeds), or None as the
    baseline for the metric itself. Each resample draws as many seeds as there
    are with replacement, then for each drawn seed its items with replacement
    (independently for a seed drawn twice), and averages the drawn seeds'
    differences. With one seed this is `paired_bootstrap`, and that is what runs.

    scipy.stats.bootstrap resamples one level of independent observations; here
    the items are nested in seeds (one trained model answers all items of a
    seed), so seeds must be resampled as units and items within them, which it
    cannot do. Resampling items alone would ignore the variation between
    training runs; averaging seeds alone, the finite test split.
    """
    if not seeds:
        raise ValueError("hierarchical_bootstrap needs at least one seed")
    pairs = [(_as_statistics(ours), None) if theirs is None else _pair(ours, theirs) for ours, theirs in seeds]
    per_seed = [float(_difference(ours, theirs, statistic, np.arange(ours.shape[1]))) for ours, theirs in pairs]
    if len(pairs) == 1:
        _, low, high = _item_bootstrap(*pairs[0], seed, n_resamples, confidence, statistic)
    else:
        means = _hierarchical_means(pairs, statistic, np.random.default_rng(seed), n_resamples)
        tail = (1.0 - confidence) / 2.0
        low, high = (float(value) for value in np.quantile(means, [tail, 1.0 - tail]))
    return {
        "per_seed": per_seed,
        "mean": float(np.mean(per_seed)),
        "low": low,
        "high": high,
        "verdict": verdict(low, high),
    }


def _hierarchical_means(
    pairs: Sequence[tuple[np.ndarray, np.ndarray | None]],
    statistic: Aggregate,
    rng: np.random.Generator,
    n_resamples: int,
) -> np.ndarray:
    """The mean difference of each hierarchical resample: seeds drawn with replacement, then each one's items."""
    drawn = rng.integers(0, len(pairs), size=(n_resamples, len(pairs)))
    totals = np.zeros(n_resamples)
    for index, (ours, theirs) in enumerate(pairs):
        # Every (resample, slot) that drew this seed gets its own draw of the seed's items.
        resample_of_slot = np.nonzero(drawn == index)[0]
        for start in range(0, resample_of_slot.size, _BATCH):
            slots = resample_of_slot[start : start + _BATCH]
            items = rng.integers(0, ours.shape[1], size=(slots.size, ours.shape[1]))
            np.add.at(totals, slots, _difference(ours, theirs, statistic, items))
    return totals / len(pairs)


def paired_difference(
    variant: Mapping[str, Any],
    baseline: Mapping[str, Any],
    metric: str,
    seed: int = 0,
    n_resamples: int = 1000,
    n_permutations: int = 10000,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """variant - baseline on `metric` over the items both evaluation results scored, with interval, p and verdict."""
    ids, ours, theirs = paired_statistics(variant, baseline, metric)
    statistic = aggregate(metric)
    difference, low, high = paired_bootstrap(ours, theirs, seed, n_resamples, confidence, statistic)
    p_value = approximate_randomization(ours, theirs, seed, n_permutations, statistic)
    return {
        "n": len(ids),
        "difference": difference,
        "low": low,
        "high": high,
        "p_value": p_value,
        "verdict": verdict(low, high),
    }


def difference_over_seeds(
    variants: Sequence[Mapping[str, Any]],
    baselines: Sequence[Mapping[str, Any]] | None,
    metric: str,
    seed: int = 0,
    n_resamples: int = 2000,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """A variant against a baseline over seeds: variants[s] and baselines[s] are the evaluation results of seed s.

    Returns per_seed (the differences), n_items (per seed), mean, low, high (the
    hierarchical bootstrap interval of the mean, `hierarchical_bootstrap`) and
    verdict. Without baselines (None) the same is given for the metric itself:
    per-seed values, their mean and its interval.
    """
    if baselines is not None and len(baselines) != len(variants):
        raise ValueError(f"{len(variants)} variant results for {len(baselines)} baseline results; one each per seed")
    seeds: list[tuple[np.ndarray, np.ndarray | None]] = []
    for index, result in enumerate(variants):
        if baselines is None:
            seeds.append((result_statistics(result, metric)[1], None))
        else:
            _, ours, theirs = paired_statistics(result, baselines[index], metric)
            seeds.append((ours, theirs))
    summary = hierarchical_bootstrap(seeds, aggregate(metric), seed, n_resamples, confidence)
    return {"metric": metric, "n_items": [ours.shape[1] for ours, _ in seeds], **summary}
