"""How far the judges of a panel agree: Spearman rank correlation and Krippendorff's alpha.

A panel whose judges do not agree (alpha <= 0: no better than chance) is not a
panel: the mean of its scores mixes what each judge measures, and weights the
pairs by the disagreement. `panel_agreement` says so (`disagree`, and a warning
line the score stage logs).

Both take `scores`: judge name -> one score per pair (the same pairs, in the same
order; None where a judge gave no score). A value that cannot be computed (fewer
than two judges or pairs, a judge that gives every pair the same score) is None,
so the stage summary stays valid JSON.

    >>> spearman_matrix({"a": [0.1, 0.5, 0.9], "b": [0.2, 0.3, 0.4]})
    {'a vs b': 1.0}
    >>> round(krippendorff_alpha({"a": [1, 2, 3], "b": [1, 2, 4]}), 4)  # 1 - (1/3) / (82/30)
    0.878
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import combinations

import krippendorff
import numpy as np
from scipy.stats import spearmanr


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def spearman(a: Sequence[float | None], b: Sequence[float | None]) -> float | None:
    """Spearman's rho over the pairs both judges scored."""
    both = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    if len(both) < 2:
        return None
    xs, ys = zip(*both)
    if len(set(xs)) == 1 or len(set(ys)) == 1:
        return None  # a constant judge has no ranking to correlate
    return _finite_or_none(spearmanr(xs, ys).statistic)


def spearman_matrix(scores: Mapping[str, Sequence[float | None]]) -> dict[str, float | None]:
    """Spearman's rho for every pair of judges, keyed "a vs b"."""
    return {f"{a} vs {b}": spearman(scores[a], scores[b]) for a, b in combinations(scores, 2)}


def krippendorff_alpha(scores: Mapping[str, Sequence[float | None]]) -> float | None:
    """Krippendorff's alpha, interval level: 1 for perfect agreement, 0 for chance."""
    if len(scores) < 2:
        return None
    data = np.array([[np.nan if s is None else s for s in row] for row in scores.values()], dtype=float)
    # alpha needs at least two pairable values that are not all the same.
    values = data[:, (~np.isnan(data)).sum(axis=0) >= 2]
    values = values[~np.isnan(values)]
    if values.size < 2 or np.all(values == values[0]):
        return None
    return _finite_or_none(krippendorff.alpha(reliability_data=data, level_of_measurement="interval"))


def panel_agreement(scores: Mapping[str, Sequence[float | None]]) -> dict:
    """Krippendorff's alpha of the whole panel and of every pair of judges, Spearman's rho of every pair, and
    whether the panel disagrees (alpha <= 0) with a warning saying so (None when it does not).

    Two judges on four pairs: within pairs the squared differences are 0.64, 0, 0.64, 0.09 (x2 orders:
    2.74); over all 8 scores 16 * 0.68875 = 11.02; alpha = 1 - 7 * 2.74 / 11.02 = -0.7405.

    >>> report = panel_agreement({"a": [0.1, 0.5, 0.9, 0.3], "b": [0.9, 0.5, 0.1, 0.6]})
    >>> report["disagree"], round(report["krippendorff_alpha"], 4)
    (True, -0.7405)
    """
    alpha = krippendorff_alpha(scores)
    by_pair = {f"{a} vs {b}": krippendorff_alpha({a: scores[a], b: scores[b]}) for a, b in combinations(scores, 2)}
    disagree = alpha is not None and alpha <= 0
    warning = None
    if disagree:
        pairs = len(next(iter(scores.values())))
        warning = (
            f"the judges {', '.join(scores)} disagree: Krippendorff's alpha {alpha:.2f} <= 0 over {pairs} pairs, "
            "no better than chance; their mean weights pairs by their disagreement. Use judges that agree, or one"
        )
    return {
        "judges": list(scores),
        "krippendorff_alpha": alpha,
        "krippendorff_alpha_by_pair": by_pair,
        "spearman": spearman_matrix(scores),
        "disagree": disagree,
        "warning": warning,
    }
