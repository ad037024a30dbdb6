"""How small a closed-accuracy difference a study can detect, and how many closed test items it needs.

Two variants answer the same n closed items. Per item the difference of their
scores is +1, -1 or 0, so the difference in accuracy d = p10 - p01 (right for
the variant only, minus right for the baseline only), and only discordant items
carry information: psi = p10 + p01. The paired (McNemar) z-test of d = 0 then
needs, for a two-sided level alpha and a power 1 - beta (Connor, 1987,
"Sample size for testing differences in proportions for the paired-sample
design", Biometrics 43(1): 207-211, p. 209):

    n = (z_{1-alpha/2} sqrt(psi) + z_{1-beta} sqrt(psi - d^2))^2 / d^2

With k seeds (each a trained model, answering its own draw of n items) the
study averages k per-seed differences; between seeds the true difference
itself varies, with variance tau^2 (`seed_variance`). The variances of the
mean difference under d = 0 and under d are

    V0 = (psi / n + tau^2) / k        V1 = ((psi - d^2) / n + tau^2) / k

and the smallest detectable difference (MDE) solves d = z_{1-alpha/2} sqrt(V0)
+ z_{1-beta} sqrt(V1), which for k = 1 and tau = 0 is Connor's formula solved
for d. When the seeds share one test split (a real dataset's fixed test set,
`shared_items=True`), the item term does not shrink with k:
V0 = psi / n + tau^2 / k, and more seeds cannot take the MDE below what the
items alone allow. psi comes from the observed
answers of two evaluations (`discordance`) or is an assumption stated by the
caller.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import optimize
from scipy.stats import norm

from mmedpo.evaluation.item_scores import paired_statistics


def discordance(variant: Mapping[str, Any], baseline: Mapping[str, Any]) -> float:
    """Share of the closed items that exactly one of two evaluation results answers right."""
    _, ours, theirs = paired_statistics(variant, baseline, "closed_accuracy")
    return float(np.mean(ours[0] != theirs[0]))


def minimum_detectable_difference(
    n_items: int,
    discordance: float,
    n_seeds: int = 1,
    seed_variance: float = 0.0,
    alpha: float = 0.05,
    power: float = 0.8,
    shared_items: bool = False,
) -> float | None:
    """The smallest closed-accuracy difference a two-sided paired test at `alpha` detects with `power`.

    None when no difference is detectable: a difference cannot exceed the
    discordance, and with too few items or too much seed variance even that one
    is not detected.

    >>> round(minimum_detectable_difference(626, 0.2), 4)
    0.05
    """
    _check(n_items, discordance, n_seeds, seed_variance, alpha, power)
    z_alpha, z_power = norm.ppf(1 - alpha / 2), norm.ppf(power)

    def shortfall(difference: float) -> float:
        items = n_seeds if not shared_items else 1  # seeds that share one test split share its item noise
        null = discordance / n_items / items + seed_variance / n_seeds
        alternative = (discordance - difference**2) / n_items / items + seed_variance / n_seeds
        return z_alpha * math.sqrt(null) + z_power * math.sqrt(alternative) - difference

    # The shortfall falls as the difference grows; no root up to the discordance means nothing is detectable.
    if shortfall(discordance) > 0:
        return None
    return float(optimize.brentq(shortfall, 0.0, discordance, xtol=1e-12))


def closed_items_needed(
    target: float = 0.05,
    discordance: float = 0.2,
    n_seeds: int = 1,
    seed_variance: float = 0.0,
    alpha: float = 0.05,
    power: float = 0.8,
    shared_items: bool = False,
) -> int:
    """The fewest closed test items (per seed) for which `minimum_detectable_difference` is at most `target`.

    >>> closed_items_needed(0.4, discordance=0.5)  # Connor's worked example: p10 = 0.05, p01 = 0.45
    23
    """
    if not 0 < target <= discordance:
        raise ValueError(f"target difference {target} must be above 0 and at most the discordance {discordance}")
    z_alpha, z_power = norm.ppf(1 - alpha / 2), norm.ppf(power)
    floor = (z_alpha + z_power) * math.sqrt(seed_variance / n_seeds)
    if floor >= target:
        raise ValueError(
            f"with seed variance {seed_variance} and {n_seeds} seeds no number of items detects {target}: "
            f"the seeds alone leave {floor:.4f}; add seeds"
        )

    def detected(n_items: int) -> bool:
        return _detects(target, n_items, discordance, n_seeds, seed_variance, alpha, power, shared_items)

    high = 1
    while not detected(high):
        high *= 2
    return _fewest(detected, high // 2, high)


def seeds_needed(
    target: float,
    n_items: int,
    discordance: float,
    seed_variance: float,
    alpha: float = 0.05,
    power: float = 0.8,
    most: int = 1000,
    shared_items: bool = False,
) -> int | None:
    """The fewest seeds for which `minimum_detectable_difference` at `n_items` per seed is at most `target`.

    Where the seeds vary more than the items, more items stop helping
    (`closed_items_needed` says so) and only more seeds narrow the study. None
    when even `most` seeds do not reach `target`, as when the seeds share one test
    split (`shared_items`) too small for it.

    >>> seeds_needed(0.05, 626, 0.2, 0.0)  # Connor's 626 items detect 0.05 on their own
    1
    """
    if not 0 < target <= discordance:
        raise ValueError(f"target difference {target} must be above 0 and at most the discordance {discordance}")

    def detected(n_seeds: int) -> bool:
        return _detects(target, n_items, discordance, n_seeds, seed_variance, alpha, power, shared_items)

    return _fewest(detected, 0, most) if detected(most) else None


def _detects(target: float, *design) -> bool:
    """Whether a study of `design` (`minimum_detectable_difference`'s arguments) detects `target`."""
    found = minimum_detectable_difference(*design)
    return found is not None and found <= target


def _fewest(detected, low: int, high: int) -> int:
    """The smallest count in (low, high] that `detected` accepts, given that it accepts `high` and not `low`
    (the MDE only falls as items or seeds are added)."""
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if detected(middle) else (middle, high)
    return high


def _check(n_items: int, discordance: float, n_seeds: int, seed_variance: float, alpha: float, power: float) -> None:
    if n_items < 1 or n_seeds < 1:
        raise ValueError(f"need at least one item and one seed, got {n_items} items and {n_seeds} seeds")
    if not 0 < discordance <= 1:
        raise ValueError(f"discordance must be in (0, 1], got {discordance}: identical answers detect nothing")
    if seed_variance < 0 or not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"need seed_variance >= 0 and alpha, power in (0, 1), got {seed_variance}, {alpha}, {power}")
