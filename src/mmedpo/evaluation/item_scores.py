"""Every metric as per-item statistics and an aggregate, so that test items can be resampled.

Intervals come from resampling test items (`evaluation.intervals`). That works
for any metric whose value is a function of sums over items:

- means of a per-item score: closed_accuracy, open_recall, open_exact, open_f1
  (and open_precision under llava-med-v1.0.0), rouge_l and cider (pycocoevalcap's
  per-report scores; CIDEr's document frequencies stay those of the whole test
  split, they are not recomputed per resample);
- closed_balanced_accuracy: per item its gold answer and whether it is right;
  the mean over the gold answers present of the accuracy on each;
- bleu_1..bleu_4: corpus BLEU from per-report n-gram counts (clipped matches
  and candidate n-grams per order, candidate and reference length), pycocoevalcap's
  formula with its smoothing constants, so the full sums give its corpus score;
- clinical_precision / recall / f1: per report the findings positive in both,
  in the generated and in the reference report; micro-averaged.

Statistics are arrays of shape (k, n): k statistics for n items; an aggregate
reduces the last axis, so it also takes (k, resamples, n) at once. METEOR and
RadEval scores have no per-item form here and get no interval.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from mmedpo.evaluation.baselines import gold_class
from mmedpo.evaluation.clinical import positive_findings
from mmedpo.evaluation.metrics import closed_scores, open_scores
from mmedpo.evaluation.text import normalize_report
from mmedpo.registry import PROTOCOLS

Aggregate = Callable[[np.ndarray], np.ndarray]

BLEU_METRICS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4")
CLINICAL_METRICS = ("clinical_precision", "clinical_recall", "clinical_f1")
OPEN_METRICS = ("open_recall", "open_exact", "open_f1", "open_precision")
ITEM_METRICS = (
    "closed_accuracy",
    "closed_balanced_accuracy",
    *OPEN_METRICS,
    *BLEU_METRICS,
    "rouge_l",
    "cider",
    *CLINICAL_METRICS,
)
# pycocoevalcap's BLEU smoothing: a zero count of matches gives (0 + tiny) / (guesses + small), not log(0).
_TINY, _SMALL = 1e-15, 1e-9


def paired_statistics(
    variant: Mapping[str, Any], baseline: Mapping[str, Any], metric: str
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The items `metric` covers in two evaluation results and their statistics, aligned by item id.

    Both results must have scored the same items (same ids and gold answers)
    under the same protocol. Returns (ids, variant statistics, baseline statistics).
    """
    ours, theirs = _items(variant, metric), _items(baseline, metric)
    if ours.keys() != theirs.keys():
        missing = sorted(ours.keys() ^ theirs.keys())
        raise ValueError(f"{metric}: the two results cover different items (e.g. {', '.join(missing[:3])})")
    ids = sorted(theirs)
    changed = [i for i in ids if ours[i]["answer"] != theirs[i]["answer"]]
    if changed:
        raise ValueError(f"{metric}: item {changed[0]} has different gold answers in the two results")
    classes = sorted({gold_class(theirs[i]["answer"]) for i in ids})
    return (
        ids,
        item_statistics(variant, metric, [ours[i] for i in ids], classes),
        item_statistics(baseline, metric, [theirs[i] for i in ids], classes),
    )


def result_statistics(result: Mapping[str, Any], metric: str) -> tuple[list[str], np.ndarray]:
    """The items `metric` covers in one evaluation result (sorted by id) and their statistics."""
    items = _items(result, metric)
    ids = sorted(items)
    rows = [items[i] for i in ids]
    return ids, item_statistics(result, metric, rows, sorted({gold_class(row["answer"]) for row in rows}))


def _items(result: Mapping[str, Any], metric: str) -> dict[str, dict[str, Any]]:
    if metric not in ITEM_METRICS:
        raise ValueError(f"metric {metric!r} has no per-item statistics; valid: {', '.join(ITEM_METRICS)}")
    kind = "closed" if metric.startswith("closed") else "open" if metric.startswith("open") else "report"
    rows = [
        row
        for row in result["predictions"]
        if (row["task"] == "report" if kind == "report" else row["task"] == "vqa" and row["answer_type"] == kind)
    ]
    if not rows:
        raise ValueError(f"{metric}: the result has no {kind} items")
    return {str(row["id"]): row for row in rows}


def item_statistics(
    result: Mapping[str, Any], metric: str, rows: Sequence[Mapping[str, Any]], classes: Sequence[str]
) -> np.ndarray:
    """Statistics of `metric` for `rows` of `result`, shape (k, len(rows)); `classes` are the gold answers counted."""
    protocol = result["metrics"].get("protocol", "mmedpo")
    if protocol not in PROTOCOLS:  # e.g. "llava-med" before it was named for its version
        raise ValueError(f"a result scored under the protocol {protocol!r}, now unknown: rescore it (`rescore_file`)")
    if metric == "closed_accuracy":
        return np.array([closed_scores(rows, protocol)])
    if metric == "closed_balanced_accuracy":
        right = np.array(closed_scores(rows, protocol))
        member = np.array([[gold_class(row["answer"]) == answer for row in rows] for answer in classes], dtype=float)
        return np.concatenate([member * right, member])
    if metric in OPEN_METRICS:
        scores = open_scores(rows, protocol)
        if metric not in scores:
            raise ValueError(f"{metric} is not a metric of the {protocol} protocol")
        return np.array([scores[metric]])
    tokenization = result["metrics"].get("report_tokenization", "mmedpo")
    predictions = [normalize_report(row["prediction"], tokenization) for row in rows]
    references = [normalize_report(row["answer"], tokenization) for row in rows]
    if metric in BLEU_METRICS:
        return np.array([_bleu_counts(p, r) for p, r in zip(predictions, references)], dtype=float).T
    if metric in ("rouge_l", "cider"):
        scorer = Rouge() if metric == "rouge_l" else Cider()
        gts, res = dict(enumerate([r] for r in references)), dict(enumerate([p] for p in predictions))
        return np.array([scorer.compute_score(gts, res)[1]], dtype=float)
    return np.array([_finding_counts(row["prediction"], row["answer"]) for row in rows], dtype=float).T


def _bleu_counts(prediction: str, reference: str) -> list[int]:
    """Matches of order 1..4 (clipped by the reference), candidate n-grams of order 1..4, both lengths."""
    test, ref = prediction.split(), reference.split()
    matches = [sum((_ngrams(test, order) & _ngrams(ref, order)).values()) for order in range(1, 5)]
    guesses = [max(0, len(test) - order + 1) for order in range(1, 5)]
    return [*matches, *guesses, len(test), len(ref)]


def _ngrams(words: list[str], order: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(words[start : start + order]) for start in range(len(words) - order + 1))


def _finding_counts(prediction: str, reference: str) -> list[int]:
    said, truth = positive_findings(prediction), positive_findings(reference)
    return [len(said & truth), len(said), len(truth)]


def aggregate(metric: str) -> Aggregate:
    """The function that turns statistics (k, ..., n) into the metric's value (...)."""
    if metric == "closed_balanced_accuracy":
        return _balanced_accuracy
    if metric in BLEU_METRICS:
        return lambda stats: _bleu(stats, int(metric[-1]))
    if metric in CLINICAL_METRICS:
        return lambda stats: _clinical(stats)[CLINICAL_METRICS.index(metric)]
    if metric in ITEM_METRICS:
        return mean_score
    raise ValueError(f"metric {metric!r} has no per-item statistics; valid: {', '.join(ITEM_METRICS)}")


def mean_score(stats: np.ndarray) -> np.ndarray:
    """The mean of a per-item score (statistics of shape (1, ..., n))."""
    return stats[0].mean(axis=-1)


def _balanced_accuracy(stats: np.ndarray) -> np.ndarray:
    hits, counts = np.split(stats.sum(axis=-1), 2)
    # A gold answer that a resample happens to leave out is left out of the mean, as it is in the full data's.
    present = counts > 0
    accuracy = np.where(present, hits / np.maximum(counts, 1), 0.0)
    return accuracy.sum(axis=0) / present.sum(axis=0)


def _bleu(stats: np.ndarray, order: int) -> np.ndarray:
    sums = stats.sum(axis=-1)
    matches, guesses, test_length, ref_length = sums[:4], sums[4:8], sums[8], sums[9]
    precision = np.prod((matches[:order] + _TINY) / (guesses[:order] + _SMALL), axis=0)
    ratio = (test_length + _TINY) / (ref_length + _SMALL)
    brevity = np.where(ratio < 1, np.exp(1 - 1 / ratio), 1.0)
    return precision ** (1 / order) * brevity


def _clinical(stats: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    both, said, truth = stats.sum(axis=-1)
    # A zero denominator gives 0.0, as `clinical.clinical_metrics` does.
    precision = np.where(said > 0, both / np.maximum(said, 1), 0.0)
    recall = np.where(truth > 0, both / np.maximum(truth, 1), 0.0)
    f1 = np.where(both > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0.0)
    return precision, recall, f1
