"""Does the paper's claim hold on this run? "MMedPO > DPO > base", metric by metric, judged by intervals.

The claim is a chain of variants, best first, e.g.
`[mmedpo, dpo-text-visual, dpo-text, base]`: each step adds one part of the
method (textual pairs, then visual pairs, then clinical weights). Each step
gets the paired difference of the metric between its two variants on the same
test items with its bootstrap interval (`evaluation.intervals`), and a verdict:
"better" when the interval lies above 0, "worse" when below, "within noise"
otherwise. A chain HOLDS for a metric only when every step is "better"; it
FAILS when a step is "worse"; otherwise it is "within noise". A point
estimate alone never decides: a step of +0.02 whose interval spans 0 is
"within noise". Metrics without per-item statistics (METEOR) get no interval,
so their chains are never said to hold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mmedpo.evaluation.intervals import difference_over_seeds
from mmedpo.evaluation.item_scores import ITEM_METRICS

HEADLINE = ("closed_accuracy", "closed_balanced_accuracy", "open_recall", "bleu_1", "bleu_4", "rouge_l")


def chain_verdict(
    results: Mapping[str, Mapping[str, Any]],
    chain: Sequence[str],
    metrics: Sequence[str] = HEADLINE,
    seed: int = 0,
    n_resamples: int = 1000,
    confidence: float = 0.95,
) -> list[dict[str, Any]]:
    """One entry per metric: the values along the chain, each step's interval and verdict, and the chain's status.

    An entry has metric, values (variant -> value), steps (upper, lower,
    difference, and low, high, verdict where the metric has an interval),
    status ("holds", "within noise" or "fails") and holds (status == "holds").
    Metrics missing for a variant of the chain are left out.
    """
    over_seeds = {name: [result] for name, result in results.items()}
    return chain_verdict_over_seeds(over_seeds, chain, metrics, seed, n_resamples, confidence)


def chain_verdict_over_seeds(
    results: Mapping[str, Sequence[Mapping[str, Any]]],
    chain: Sequence[str],
    metrics: Sequence[str] = HEADLINE,
    seed: int = 0,
    n_resamples: int = 1000,
    confidence: float = 0.95,
) -> list[dict[str, Any]]:
    """`chain_verdict` over seeds: `results[variant]` holds one evaluation result per seed, in seed order.

    Values are means over the seeds; each step's difference is the mean of the
    per-seed differences (`per_seed`) with a paired hierarchical bootstrap
    interval over seeds and test items (`evaluation.intervals.difference_over_seeds`).
    With one seed this is the paired item bootstrap.
    """
    missing = [name for name in chain if name not in results]
    if missing:
        raise ValueError(f"claim names variant(s) {missing} that were not evaluated: {', '.join(results)}")
    verdicts = []
    for metric in metrics:
        per_seed = {name: [result["metrics"].get(metric) for result in results[name]] for name in chain}
        if any(value is None for values in per_seed.values() for value in values):
            continue
        steps = [
            _step(results, upper, lower, metric, seed, n_resamples, confidence)
            for upper, lower in zip(chain, chain[1:])
        ]
        status = _chain_status([step.get("verdict") for step in steps])
        verdicts.append(
            {
                "metric": metric,
                "values": {name: float(np.mean(values)) for name, values in per_seed.items()},
                "status": status,
                "holds": status == "holds",
                "steps": steps,
            }
        )
    return verdicts


def _step(
    results: Mapping[str, Sequence[Mapping[str, Any]]],
    upper: str,
    lower: str,
    metric: str,
    seed: int,
    n_resamples: int,
    confidence: float,
) -> dict[str, Any]:
    per_seed = [
        float(ours["metrics"][metric]) - float(theirs["metrics"][metric])
        for ours, theirs in zip(results[upper], results[lower], strict=True)
    ]
    step: dict[str, Any] = {"upper": upper, "lower": lower, "difference": float(np.mean(per_seed))}
    if metric in ITEM_METRICS:
        found = difference_over_seeds(results[upper], results[lower], metric, seed, n_resamples, confidence)
        step.update(low=found["low"], high=found["high"], verdict=found["verdict"])
    if len(per_seed) > 1:
        step["per_seed"] = per_seed
    return step


def _chain_status(step_verdicts: Sequence[str | None]) -> str:
    if "worse" in step_verdicts:
        return "fails"
    if all(step == "better" for step in step_verdicts):
        return "holds"
    return "within noise"  # some step within noise, or without an interval


def verdict_lines(verdicts: Sequence[Mapping[str, Any]], confidence: float = 0.95) -> list[str]:
    """Plain sentences, one per metric, e.g.

    'closed_accuracy: mmedpo 0.71 > base 0.55: HOLDS (mmedpo - base +0.16 [95% CI +0.08, +0.24] better)'.

    Each step shows the relation of the point estimates (>, = or <) and its
    verdict; the chain's word is HOLDS, WITHIN NOISE or FAILS.
    """
    lines = []
    for entry in verdicts:
        names = list(entry["values"])
        chain = f"{names[0]} {entry['values'][names[0]]:.4f}"
        for step, name in zip(entry["steps"], names[1:]):
            relation = ">" if step["difference"] > 0 else "=" if step["difference"] == 0 else "<"
            chain += f" {relation} {name} {entry['values'][name]:.4f}"
        notes = [_step_note(step, confidence) for step in entry["steps"]]
        lines.append(f"{entry['metric']}: {chain}: {entry['status'].upper()} ({'; '.join(notes)})")
    return lines


def _step_note(step: Mapping[str, Any], confidence: float) -> str:
    text = f"{step['upper']} - {step['lower']} {step['difference']:+.4f}"
    if "verdict" not in step:
        return text + " no interval"
    return text + f" [{confidence:.0%} CI {step['low']:+.4f}, {step['high']:+.4f}] {step['verdict']}"


def control_of(config: Mapping[str, Any]) -> str | None:
    """The run's supervised control: its first variant trained with `loss_type: sft` (its own, or the train
    section's that it keeps), whatever its name."""
    variants = config.get("variants") or {}
    shared = (config.get("train") or {}).get("loss_type")
    return next((name for name, train in variants.items() if (train or {}).get("loss_type", shared) == "sft"), None)
