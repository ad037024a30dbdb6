"""Compare evaluated variants with a baseline: relative improvements, paired differences with verdicts, tables.

`compare_results` builds one JSON-able comparison; `to_markdown`, `to_csv` and
`to_json` render it, `compare_table` is markdown in one call.

Relative improvements alone hide whether a difference is noise on a small test
set, so every metric with per-item statistics (`item_scores`: closed and open
VQA metrics, BLEU, ROUGE-L, CIDEr, clinical P/R/F1) also gets the paired
difference with a bootstrap interval, a sign-flip p-value and a verdict:
"better" when the interval lies above 0, "worse" when below, "within noise"
otherwise (`intervals.paired_difference`). Closed accuracy also gets the
smallest difference this test split can detect (`power`), from the observed
discordance of the two variants' answers.

Beside the variants, the table shows the majority-answer baseline of the test
split (`baselines`), so a closed accuracy can be read against always answering
the commonest answer.

The paper's "average improvement" is the mean of the relative improvements over
a task's headline metrics: closed accuracy and open recall for Med-VQA; BLEU-1..4,
ROUGE-L and METEOR (those present) for reports.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mmedpo.evaluation.intervals import paired_difference
from mmedpo.evaluation.item_scores import ITEM_METRICS
from mmedpo.evaluation.power import discordance, minimum_detectable_difference

COMPARED_METRICS = (
    "closed_accuracy",
    "closed_balanced_accuracy",
    "closed_accuracy_yes",
    "closed_accuracy_no",
    "open_recall",
    "open_exact",
    "open_f1",
    "open_precision",
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
MAJORITY = "majority answer"


def visual_metrics(dependence: Mapping[str, Any]) -> dict[str, float]:
    """The overall figures of a `visual_dependence` result under the names the comparison shows."""
    overall = dependence["overall"]
    names = ("changed_noised", "drop_noised", "drop_blank")
    counts = {"visual_measured": dependence["n_measured"], "visual_skipped": dependence["n_skipped"]}
    return {**{f"visual_{name}": overall[name] for name in names if name in overall}, **counts}


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
    predictions). All must be scored under the same protocol and report
    tokenization, and the paired metrics on the same test items.
    """
    if baseline not in results:
        raise ValueError(f"baseline {baseline!r} is not among the results: {', '.join(results)}")
    scorings = {name: _scoring(result) for name, result in results.items()}
    if len(set(scorings.values())) > 1:
        raise ValueError(f"results were scored under different protocols, not comparable: {scorings}")
    base = results[baseline]
    metrics = [name for name in COMPARED_METRICS if name in base["metrics"]]
    paired = [name for name in metrics if name in ITEM_METRICS]
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
        entry["paired"] = {}
        if name != baseline:
            for metric in paired:
                stats = paired_difference(results[name], base, metric, seed, n_resamples, n_permutations, confidence)
                if metric == "closed_accuracy":
                    stats.update(_power(results[name], base, stats["n"], 1 - confidence))
                entry["paired"][metric] = stats
        variants.append(entry)
    majority = base["metrics"].get("majority") or {}
    return {
        "baseline": baseline,
        "protocol": scorings[baseline][0],
        "report_tokenization": scorings[baseline][1],
        "seed": seed,
        "n_resamples": n_resamples,
        "n_permutations": n_permutations,
        "confidence": confidence,
        "metrics": metrics,
        "paired_metrics": paired,
        "variants": variants,
        "majority": {"answers": majority.get("answers", {}), "metrics": {m: majority.get(m) for m in metrics}},
    }


def _scoring(result: Mapping[str, Any]) -> tuple[str, str | None]:
    metrics = result["metrics"]
    return metrics.get("protocol", "mmedpo"), metrics.get("report_tokenization")


def _power(variant: Mapping[str, Any], base: Mapping[str, Any], n: int, alpha: float) -> dict[str, float | None]:
    """The observed discordance and the smallest closed-accuracy difference detectable at `alpha` with 80% power."""
    observed = discordance(variant, base)
    mde = minimum_detectable_difference(n, observed, alpha=alpha) if observed > 0 else None
    return {"discordance": observed, "mde": mde}


def _relative(value: float | None, base_value: float) -> float | None:
    # Against a base of (almost) 0 a relative change means nothing (BLEU-4 of 1e-18 gave "+3e17 %").
    if value is None or abs(base_value) < 1e-6:
        return None
    return (value - base_value) / base_value * 100


def _average(values: Sequence[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return sum(known) / len(known) if known else None


def to_markdown(comparison: Mapping[str, Any]) -> str:
    """Two markdown tables: metrics with relative improvements (and the majority baseline), then paired differences."""
    metrics = comparison["metrics"]
    averages = [
        task for task in HEADLINE_METRICS if any(task in v["average_improvement"] for v in comparison["variants"])
    ]
    header = ["variant", *metrics, *(f"avg improvement {task}" for task in averages)]
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
        lines.append("| " + " | ".join(cells) + " |")
    majority = comparison["majority"]["metrics"]
    if any(value is not None for value in majority.values()):
        cells = [f"{MAJORITY} (test split)", *(_cell(majority[metric]) for metric in metrics), *("–" for _ in averages)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *_paired_table(comparison), "", _note(comparison)]
    return "\n".join(lines) + "\n"


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _paired_table(comparison: Mapping[str, Any]) -> list[str]:
    """One row per variant and paired metric: difference, interval, p-value, verdict (and MDE for closed accuracy)."""
    level = f"{comparison['confidence']:.0%}"
    lines = [f"| variant - {comparison['baseline']} | metric | Δ | {level} CI | p | verdict | MDE |", "|---" * 7 + "|"]
    for variant in comparison["variants"]:
        for metric, stats in variant["paired"].items():
            lines.append(
                f"| {variant['name']} | {metric} | {stats['difference']:+.4f} | "
                f"[{stats['low']:+.4f}, {stats['high']:+.4f}] | {stats['p_value']:.3g} | {stats['verdict']} | "
                f"{_mde(stats)} |"
            )
    return lines if len(lines) > 2 else []


def _mde(stats: Mapping[str, Any]) -> str:
    if "mde" not in stats:
        return "–"
    return "undetectable" if stats["mde"] is None else f"{stats['mde']:.4f}"


def _note(comparison: Mapping[str, Any]) -> str:
    protocol = comparison["protocol"]
    scored = (
        "LLaVA-Med v1.0.0's own VQA scorer with its quirks ('no' inside 'nodule' counts as no; see "
        "docs/evaluation.md), for comparison with published tables only"
        if protocol.startswith("llava-med")
        else "strict VQA scoring"
    )
    return (
        f"Protocol {protocol}: {scored}. Δ: paired difference with a {comparison['confidence']:.0%} bootstrap "
        f"interval over test items ({comparison['n_resamples']} resamples) and a sign-flip p-value "
        f"({comparison['n_permutations']} shuffles), seed {comparison['seed']}; better / worse: the interval lies "
        "above / below 0, else within noise. MDE: the smallest closed-accuracy difference these items detect "
        f"(two-sided, {1 - comparison['confidence']:.2g} level, 80% power, at the observed discordance; "
        "undetectable: not even one as large as the discordance). "
        f"{MAJORITY.capitalize()}: the commonest gold answer of each question type, given to every question."
    )


def to_json(comparison: Mapping[str, Any]) -> str:
    return json.dumps(comparison, indent=2, ensure_ascii=False) + "\n"


CSV_COLUMNS = (
    "variant",
    "metric",
    "value",
    "relative_pct",
    "difference",
    "ci_low",
    "ci_high",
    "p_value",
    "verdict",
    "mde",
    "n",
)


def to_csv(comparison: Mapping[str, Any]) -> str:
    """One row per variant and metric (long format); average improvements are rows named avg_improvement_TASK.

    The majority-answer baseline's metrics are rows of the variant "majority answer".
    """
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
                    "verdict": stats.get("verdict"),
                    "mde": stats.get("mde"),
                    "n": stats.get("n"),
                }
            )
        for task, average in variant["average_improvement"].items():
            writer.writerow({"variant": variant["name"], "metric": f"avg_improvement_{task}", "relative_pct": average})
    for metric, value in comparison["majority"]["metrics"].items():
        if value is not None:
            writer.writerow({"variant": MAJORITY, "metric": metric, "value": value})
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


def changed_answers(results: Mapping[str, Sequence[Mapping]], control: str | None) -> dict[str, dict[str, float]]:
    """Per variant (its results, one per seed): the share of test answers unlike the base's ("vs_base") and unlike
    the SFT control's ("vs_CONTROL"), each the mean over seeds of `share_changed` against the same seed's."""
    changed = {}
    for name, runs in results.items():
        changed[name] = {
            f"vs_{other}": float(np.mean([share_changed(a, b) for a, b in zip(runs, results[other])]))
            for other in ("base", control)
            if other in results and other != name
        }
    return changed


def share_changed(result: Mapping[str, Any], other: Mapping[str, Any]) -> float:
    """Share of the test items two evaluation results answer differently (after report normalisation)."""
    from mmedpo.evaluation.text import normalize_report

    theirs = {row["id"]: normalize_report(row["prediction"]) for row in other["predictions"]}
    rows = [row for row in result["predictions"] if row["id"] in theirs]
    if not rows:  # e.g. two seeds' results: nothing to compare is not "nothing changed"
        raise ValueError("the two results share no test item")
    return sum(normalize_report(row["prediction"]) != theirs[row["id"]] for row in rows) / len(rows)
