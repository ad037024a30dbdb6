"""Does the paper's claim hold on this run? "MMedPO > DPO > base", metric by metric.

The claim is a chain of variants, best first, e.g.
`[mmedpo, dpo-text-visual, dpo-text, base]`: each step adds one part of the
method (textual pairs, then visual pairs, then clinical weights). For every
metric the chain holds when each variant scores strictly above the next. For
per-question metrics (closed accuracy, open recall) each step also gets the
paired bootstrap interval of its difference, so a step that "holds" by a
margin inside the noise is visible as such: `significant` says whether the
interval excludes zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mmedpo.evaluation.compare import PAIRED_METRICS, paired_bootstrap, per_sample_scores

HEADLINE = ("closed_accuracy", "open_recall", "bleu_1", "bleu_4", "rouge_l")


def chain_verdict(
    results: Mapping[str, Mapping[str, Any]],
    chain: Sequence[str],
    metrics: Sequence[str] = HEADLINE,
    seed: int = 0,
    n_resamples: int = 1000,
) -> list[dict[str, Any]]:
    """One entry per metric: the values along the chain, whether the order holds, and each step's interval."""
    missing = [name for name in chain if name not in results]
    if missing:
        raise ValueError(f"claim names variant(s) {missing} that were not evaluated: {', '.join(results)}")
    verdicts = []
    for metric in metrics:
        values = [results[name]["metrics"].get(metric) for name in chain]
        if any(value is None for value in values):
            continue
        steps = []
        for better, worse in zip(chain, chain[1:]):
            difference = _value(results, better, metric) - _value(results, worse, metric)
            step: dict[str, Any] = {"better": better, "worse": worse, "difference": difference}
            if metric in PAIRED_METRICS:
                ours, theirs = per_sample_scores(results[better], metric), per_sample_scores(results[worse], metric)
                ids = sorted(theirs)
                if ids and ours.keys() == theirs.keys():
                    _, low, high = paired_bootstrap(
                        [ours[i] for i in ids], [theirs[i] for i in ids], seed=seed, n_resamples=n_resamples
                    )
                    step.update(low=low, high=high, significant=low > 0 or high < 0)
            steps.append(step)
        verdicts.append(
            {
                "metric": metric,
                "values": dict(zip(chain, values)),
                "holds": all(step["difference"] > 0 for step in steps),
                "steps": steps,
            }
        )
    return verdicts


def _value(results: Mapping[str, Mapping[str, Any]], name: str, metric: str) -> float:
    return float(results[name]["metrics"][metric])


def verdict_lines(verdicts: Sequence[Mapping[str, Any]]) -> list[str]:
    """Plain sentences, one per metric, e.g. 'closed_accuracy: mmedpo 0.71 > base 0.55: HOLDS'.

    Each step shows the relation measured (>, = or <), not the one claimed.
    """
    lines = []
    for verdict in verdicts:
        names = list(verdict["values"])
        chain = f"{names[0]} {verdict['values'][names[0]]:.4f}"
        for step, name in zip(verdict["steps"], names[1:]):
            relation = ">" if step["difference"] > 0 else "=" if step["difference"] == 0 else "<"
            chain += f" {relation} {name} {verdict['values'][name]:.4f}"
        notes = []
        for step in verdict["steps"]:
            if "low" in step:
                mark = "" if step["significant"] else ", within noise"
                notes.append(
                    f"{step['better']} - {step['worse']} {step['difference']:+.4f} "
                    f"[95% CI {step['low']:+.4f}, {step['high']:+.4f}{mark}]"
                )
        status = "HOLDS" if verdict["holds"] else "does NOT hold"
        lines.append(f"{verdict['metric']}: {chain}: {status}" + (f" ({'; '.join(notes)})" if notes else ""))
    return lines
