"""Compare evaluated variants with a baseline: relative improvements, paired statistics, tables.

`compare_results` builds one JSON-able comparison; `to_markdown`, `to_csv` and
`to_json` render it, `compare_table` is markdown in one call.

Relative improvements alone hide whether a difference is noise on a small test
set, so the per-question metrics (closed accuracy, open recall) also get the
mean paired difference with a percentile bootstrap confidence interval (the
same questions are resampled for both models, far tighter than two independent
intervals) and a two-sided approximate-randomisation p-value (each question's
pair of scores is swapped at random). Both depend only on the inputs and the seed.

The paper's "average improvement" is the mean of the relative improvements over
a task's headline metrics: closed accuracy and open recall for Med-VQA; BLEU-1..4,
ROUGE-L and METEOR (those present) for reports.
"""

from __future__ import annotations

import csv
import io
import json
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
    "clinical_precision",
    "clinical_recall",
    "clinical_f1",
    "visual_changed_noised",
    "visual_drop_noised",
    "visual_drop_blank",
)
HEADLINE_METRICS = {
    "vqa": ("closed_accuracy", "open_recall"),
    "report": ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "meteor"),
}

# Metric with a per-sample score -> (answer type of the questions it covers, the per-sample score).
PAIRED_METRICS: dict[str, tuple[str, Callable[[str, str], float]]] = {
    "closed_accuracy": ("closed", lambda prediction, gold: float(closed_correct(prediction, gold))),
    "open_recall": ("open", open_recall),
}
# Resamples drawn per numpy call, so memory stays bounded on large test sets.
_BLOCK = 1000


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
    differences = _differences(variant, baseline)
    rng = np.random.default_rng(seed)
    means = np.concatenate(
        [
            differences[rng.integers(0, differences.size, size=(size, differences.size))].mean(axis=1)
            for size in _blocks(n_resamples)
        ]
    )
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(differences.mean()), float(low), float(high)


def approximate_randomization(
    variant: Sequence[float], baseline: Sequence[float], seed: int = 0, n_resamples: int = 10000
) -> float:
    """Two-sided p-value that variant and baseline score alike, by approximate randomisation.

    Each shuffle swaps the two scores of every sample with probability 1/2 (flips
    the sign of its difference); p = (1 + shuffles whose |mean difference| reaches
    the observed one) / (1 + shuffles). Deterministic for a seed.
    """
    differences = _differences(variant, baseline)
    observed = abs(differences.mean())
    rng = np.random.default_rng(seed)
    reached = 0
    for size in _blocks(n_resamples):
        signs = rng.integers(0, 2, size=(size, differences.size)) * 2 - 1
        # A tolerance, so that a shuffle equal to the observed mean counts despite rounding.
        reached += int(np.count_nonzero(np.abs((signs * differences).mean(axis=1)) >= observed - 1e-12))
    return (1 + reached) / (1 + n_resamples)


def _differences(variant: Sequence[float], baseline: Sequence[float]) -> np.ndarray:
    variant_scores, baseline_scores = np.asarray(variant, dtype=float), np.asarray(baseline, dtype=float)
    if variant_scores.shape != baseline_scores.shape or variant_scores.ndim != 1 or variant_scores.size == 0:
        raise ValueError(
            "paired statistics need two equally long non-empty score lists, "
            f"got {variant_scores.shape} and {baseline_scores.shape}"
        )
    return variant_scores - baseline_scores


def _blocks(total: int) -> list[int]:
    if total < 1:
        raise ValueError(f"n_resamples must be >= 1, got {total}")
    return [min(_BLOCK, total - start) for start in range(0, total, _BLOCK)]


def per_sample_scores(result: Mapping[str, Any], metric: str) -> dict[str, float]:
    """Per-sample score of `metric` (closed_accuracy or open_recall) by sample id, from a result's predictions."""
    answer_type, score = PAIRED_METRICS[metric]
    return {
        str(row["id"]): score(row["prediction"], row["answer"])
        for row in result["predictions"]
        if row["task"] == "vqa" and row["answer_type"] == answer_type
    }


def visual_metrics(dependence: Mapping[str, Any]) -> dict[str, float]:
    """The overall figures of a `visual_dependence` result under the names the comparison shows."""
    overall = dependence["overall"]
    names = ("changed_noised", "drop_noised", "drop_blank")
    return {f"visual_{name}": overall[name] for name in names if name in overall}


def compare_results(
    results: Mapping[str, Mapping[str, Any]],
    baseline: str,
    seed: int = 0,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    n_permutations: int = 10000,
) -> dict[str, Any]:
    """The comparison of every variant with `baseline`, JSON-able.

    `results` maps a variant name to what `evaluate_model` returned (metrics and
    predictions). All must be scored under the same protocol. Paired statistics
    are computed under the `mmedpo` protocol only: under `llava-med` a wrong
    closed answer may have no score at all.
    """
    if baseline not in results:
        raise ValueError(f"baseline {baseline!r} is not among the results: {', '.join(results)}")
    protocols = {name: result["metrics"].get("protocol", "mmedpo") for name, result in results.items()}
    if len(set(protocols.values())) > 1:
        raise ValueError(f"results were scored under different protocols, not comparable: {protocols}")
    protocol = protocols[baseline]
    base = results[baseline]
    metrics = [name for name in COMPARED_METRICS if name in base["metrics"]]
    paired = [name for name in PAIRED_METRICS if name in base["metrics"]] if protocol == "mmedpo" else []
    variants = []
    for name in [baseline, *(name for name in results if name != baseline)]:
        values = {metric: results[name]["metrics"].get(metric) for metric in metrics}
        relative = {metric: _relative(values[metric], base["metrics"][metric]) for metric in metrics}
        entry: dict[str, Any] = {"name": name, "metrics": values, "relative": relative}
        entry["average_improvement"] = {
            task: _average([relative[m] for m in headline if m in relative])
            for task, headline in HEADLINE_METRICS.items()
            if any(m in relative for m in headline)
        }
        entry["paired"] = {
            metric: _paired(results[name], base, name, metric, seed, n_resamples, confidence, n_permutations)
            for metric in paired
            if name != baseline
        }
        variants.append(entry)
    return {
        "baseline": baseline,
        "protocol": protocol,
        "seed": seed,
        "n_resamples": n_resamples,
        "n_permutations": n_permutations,
        "confidence": confidence,
        "metrics": metrics,
        "paired_metrics": paired,
        "variants": variants,
    }


def _relative(value: float | None, base_value: float) -> float | None:
    if value is None or base_value == 0:
        return None
    return (value - base_value) / base_value * 100


def _average(values: Sequence[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return sum(known) / len(known) if known else None


def _paired(
    result: Mapping[str, Any],
    base: Mapping[str, Any],
    name: str,
    metric: str,
    seed: int,
    n_resamples: int,
    confidence: float,
    n_permutations: int,
) -> dict[str, float]:
    variant_scores, base_scores = per_sample_scores(result, metric), per_sample_scores(base, metric)
    if variant_scores.keys() != base_scores.keys():
        raise ValueError(f"variant {name!r} was not evaluated on the same {metric} questions as the baseline")
    ids = sorted(base_scores)
    ours, theirs = [variant_scores[i] for i in ids], [base_scores[i] for i in ids]
    mean, low, high = paired_bootstrap(ours, theirs, seed=seed, n_resamples=n_resamples, confidence=confidence)
    p_value = approximate_randomization(ours, theirs, seed=seed, n_resamples=n_permutations)
    return {"n": len(ids), "difference": mean, "low": low, "high": high, "p_value": p_value}


def to_markdown(comparison: Mapping[str, Any]) -> str:
    """A markdown table: metrics with relative improvement, average improvement per task, paired statistics."""
    metrics, paired = comparison["metrics"], comparison["paired_metrics"]
    averages = [
        task for task in HEADLINE_METRICS if any(task in v["average_improvement"] for v in comparison["variants"])
    ]
    level = f"{comparison['confidence']:.0%}"
    header = [
        "variant",
        *metrics,
        *(f"avg improvement {task}" for task in averages),
        *(f"Δ {name} [{level} CI] p" for name in paired),
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant in comparison["variants"]:
        is_baseline = variant["name"] == comparison["baseline"]
        cells = [f"{variant['name']} (baseline)" if is_baseline else variant["name"]]
        for metric in metrics:
            value, relative = variant["metrics"][metric], variant["relative"][metric]
            if value is None:
                cells.append("–")
            elif is_baseline or relative is None:
                cells.append(f"{value:.4f}")
            else:
                cells.append(f"{value:.4f} ({relative:+.1f}%)")
        for task in averages:
            average = variant["average_improvement"].get(task)
            cells.append("–" if is_baseline or average is None else f"{average:+.1f}%")
        for metric in paired:
            stats = variant["paired"].get(metric)
            cells.append(
                "–"
                if stats is None
                else f"{stats['difference']:+.4f} [{stats['low']:+.4f}, {stats['high']:+.4f}] p={stats['p_value']:.3g}"
            )
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", _note(comparison)]
    return "\n".join(lines) + "\n"


def _note(comparison: Mapping[str, Any]) -> str:
    if comparison["protocol"] == "llava-med":
        return (
            "Protocol llava-med: LLaVA-Med's own VQA scorer with its quirks (wrong closed answers that contain "
            "'yes' or 'no' as a substring are dropped from the denominator; see docs/evaluation.md). For comparison "
            "with published tables only; no paired statistics."
        )
    return (
        f"Protocol mmedpo. Δ: mean paired difference with a {comparison['confidence']:.0%} bootstrap interval "
        f"({comparison['n_resamples']} resamples) and an approximate-randomisation p-value "
        f"({comparison['n_permutations']} shuffles), seed {comparison['seed']}."
    )


def to_json(comparison: Mapping[str, Any]) -> str:
    return json.dumps(comparison, indent=2, ensure_ascii=False) + "\n"


CSV_COLUMNS = ("variant", "metric", "value", "relative_pct", "difference", "ci_low", "ci_high", "p_value", "n")


def to_csv(comparison: Mapping[str, Any]) -> str:
    """One row per variant and metric (long format); average improvements are rows named avg_improvement_TASK."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for variant in comparison["variants"]:
        for metric in comparison["metrics"]:
            stats = variant["paired"].get(metric, {})
            writer.writerow(
                {
                    "variant": variant["name"],
                    "metric": metric,
                    "value": variant["metrics"][metric],
                    "relative_pct": variant["relative"][metric],
                    "difference": stats.get("difference"),
                    "ci_low": stats.get("low"),
                    "ci_high": stats.get("high"),
                    "p_value": stats.get("p_value"),
                    "n": stats.get("n"),
                }
            )
        for task, average in variant["average_improvement"].items():
            writer.writerow({"variant": variant["name"], "metric": f"avg_improvement_{task}", "relative_pct": average})
    return buffer.getvalue()


FORMATS = {"md": to_markdown, "json": to_json, "csv": to_csv}


def render(comparison: Mapping[str, Any], fmt: str) -> str:
    """The comparison as `md`, `json` or `csv` text."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    return FORMATS[fmt](comparison)


def compare_table(
    results: Mapping[str, Mapping[str, Any]],
    baseline: str,
    seed: int = 0,
    n_resamples: int = 1000,
) -> str:
    """The markdown table of `compare_results` in one call."""
    return to_markdown(compare_results(results, baseline, seed=seed, n_resamples=n_resamples))
