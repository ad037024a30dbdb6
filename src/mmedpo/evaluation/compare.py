"""Compare evaluated variants with a baseline: a markdown table with paired bootstrap intervals.

Relative improvements alone hide whether a difference is noise on a small test
set, so closed accuracy and open recall also get a paired bootstrap confidence
interval of the difference: the same test questions are resampled for both
models, which is far tighter than comparing two independent intervals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from mmedpo.evaluation.metrics import closed_correct, open_recall

COMPARED_METRICS = (
    "closed_accuracy",
    "open_recall",
    "open_exact",
    "open_f1",
    "bleu_1",
    "bleu_2",
    "bleu_3",
    "bleu_4",
    "rouge_l",
    "meteor",
    "cider",
)

# Metric with a per-sample score -> (answer type of the questions it covers, the per-sample score).
PAIRED_METRICS: dict[str, tuple[str, Callable[[str, str], float]]] = {
    "closed_accuracy": ("closed", lambda prediction, gold: float(closed_correct(prediction, gold))),
    "open_recall": ("open", open_recall),
}


def paired_bootstrap(
    variant: Sequence[float],
    baseline: Sequence[float],
    seed: int = 0,
    n_resamples: int = 1000,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Mean per-sample difference (variant - baseline) and its percentile bootstrap interval.

    Both sequences score the same samples in the same order; each resample
    draws sample indices with replacement and applies them to both.
    The result depends only on the inputs and `seed`.
    """
    variant_scores, baseline_scores = np.asarray(variant, dtype=float), np.asarray(baseline, dtype=float)
    if variant_scores.shape != baseline_scores.shape or variant_scores.ndim != 1 or variant_scores.size == 0:
        raise ValueError(
            "paired bootstrap needs two equally long non-empty score lists, "
            f"got {variant_scores.shape} and {baseline_scores.shape}"
        )
    differences = variant_scores - baseline_scores
    indices = np.random.default_rng(seed).integers(0, differences.size, size=(n_resamples, differences.size))
    means = differences[indices].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(differences.mean()), float(low), float(high)


def per_sample_scores(result: Mapping[str, Any], metric: str) -> dict[str, float]:
    """Per-sample score of `metric` (closed_accuracy or open_recall) by sample id, from a result's predictions."""
    answer_type, score = PAIRED_METRICS[metric]
    return {
        str(row["id"]): score(row["prediction"], row["answer"])
        for row in result["predictions"]
        if row["task"] == "vqa" and row["answer_type"] == answer_type
    }


def compare_table(
    results: Mapping[str, Mapping[str, Any]],
    baseline: str,
    seed: int = 0,
    n_resamples: int = 1000,
) -> str:
    """Markdown table of variants x metrics, relative improvement over `baseline` in %, and
    95% paired bootstrap intervals of the closed-accuracy and open-recall differences.

    `results` maps a variant name to what `evaluate_model` returned (metrics and predictions).
    """
    if baseline not in results:
        raise ValueError(f"baseline {baseline!r} is not among the results: {', '.join(results)}")
    base = results[baseline]
    metrics = [name for name in COMPARED_METRICS if name in base["metrics"]]
    paired = [name for name in PAIRED_METRICS if name in base["metrics"]]
    header = ["variant", *metrics, *(f"Δ {name} [95% CI]" for name in paired)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    names = [baseline, *(name for name in results if name != baseline)]
    for name in names:
        cells = [f"{name} (baseline)" if name == baseline else name]
        cells += [
            _metric_cell(results[name]["metrics"].get(metric), base["metrics"][metric], name == baseline)
            for metric in metrics
        ]
        for metric in paired:
            cells.append(
                "–" if name == baseline else _interval_cell(results[name], base, name, metric, seed, n_resamples)
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _metric_cell(value: float | None, base_value: float, is_baseline: bool) -> str:
    if value is None:
        return "–"
    if is_baseline or base_value == 0:
        return f"{value:.4f}"
    return f"{value:.4f} ({(value - base_value) / base_value * 100:+.1f}%)"


def _interval_cell(
    result: Mapping[str, Any], base: Mapping[str, Any], name: str, metric: str, seed: int, n_resamples: int
) -> str:
    variant_scores, base_scores = per_sample_scores(result, metric), per_sample_scores(base, metric)
    if variant_scores.keys() != base_scores.keys():
        raise ValueError(f"variant {name!r} was not evaluated on the same {metric} questions as the baseline")
    ids = sorted(base_scores)
    mean, low, high = paired_bootstrap(
        [variant_scores[i] for i in ids], [base_scores[i] for i in ids], seed=seed, n_resamples=n_resamples
    )
    return f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]"
