"""Intervals over test items and seeds, per-item statistics of every metric, verdicts and power, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import REPORT_PREDICTIONS, REPORT_REFERENCES
from mmedpo.evaluation.intervals import (
    difference_over_seeds,
    hierarchical_bootstrap,
    paired_bootstrap,
    paired_difference,
    verdict,
)
from mmedpo.evaluation.item_scores import ITEM_METRICS, aggregate, result_statistics
from mmedpo.evaluation.metrics import score_rows
from mmedpo.evaluation.power import closed_items_needed, discordance, minimum_detectable_difference, seeds_needed


def test_verdict_words():
    assert verdict(0.01, 0.2) == "better"
    assert verdict(-0.2, -0.01) == "worse"
    assert verdict(-0.01, 0.2) == verdict(0.0, 0.2) == verdict(0.0, 0.0) == "within noise"


def test_an_exact_effect_on_every_item_excludes_zero():
    difference, low, high = paired_bootstrap([0.6] * 50, [0.5] * 50)
    assert (difference, low, high) == pytest.approx((0.1, 0.1, 0.1))
    assert verdict(low, high) == "better"


def test_a_zero_mean_effect_contains_zero():
    # 20 items gained, 20 lost, 10 alike: mean difference 0.
    variant = [1] * 20 + [0] * 20 + [1] * 10
    baseline = [0] * 20 + [1] * 20 + [1] * 10
    difference, low, high = paired_bootstrap(variant, baseline, n_resamples=2000)
    assert difference == 0.0 and low < 0 < high
    # The spread of a mean of 50 differences with variance 40/50 is sqrt(0.8 / 50) = 0.126: about +-0.25.
    assert high - low == pytest.approx(2 * 1.96 * np.sqrt(0.8 / 50), rel=0.15)


def _seed(gained: int, lost: int, alike: int) -> tuple[np.ndarray, np.ndarray]:
    """One seed's per-item closed scores (variant, baseline) as statistics of shape (1, n)."""
    variant = [1] * gained + [0] * lost + [1] * alike
    baseline = [0] * gained + [1] * lost + [1] * alike
    return np.array([variant], dtype=float), np.array([baseline], dtype=float)


def test_one_seed_is_the_paired_item_bootstrap():
    ours, theirs = _seed(10, 5, 35)
    summary = hierarchical_bootstrap([(ours, theirs)], seed=4, n_resamples=1000)
    assert summary["per_seed"] == [pytest.approx(0.1)] and summary["mean"] == pytest.approx(0.1)
    _, low, high = paired_bootstrap(ours, theirs, seed=4, n_resamples=1000)
    assert (summary["low"], summary["high"]) == (low, high)


def test_more_seeds_narrow_the_interval():
    # Every seed gains 10 and loses 5 of 50 items (+0.1); seeds agree, so only the item noise is left, and it
    # averages over seeds: the width shrinks as 1 / sqrt(seeds).
    widths = {}
    for count in (1, 4):
        summary = hierarchical_bootstrap([_seed(10, 5, 35)] * count, seed=0, n_resamples=4000)
        assert summary["mean"] == pytest.approx(0.1)
        widths[count] = summary["high"] - summary["low"]
    assert widths[4] == pytest.approx(widths[1] / 2, rel=0.2)


def test_seeds_that_disagree_widen_the_interval():
    # Seed A gains 0.3 on each of its 10 items, seed B loses 0.1 on each of its 30: no item noise at all.
    # Resampled seed pairs average to 0.3 (AA, 1/4), 0.1 (AB or BA, 1/2) or -0.1 (BB, 1/4): interval [-0.1, 0.3].
    seed_a = (np.full((1, 10), 0.8), np.full((1, 10), 0.5))
    seed_b = (np.full((1, 30), 0.4), np.full((1, 30), 0.5))  # another number of items
    summary = hierarchical_bootstrap([seed_a, seed_b], seed=0, n_resamples=4000)
    assert summary["per_seed"] == pytest.approx([0.3, -0.1]) and summary["mean"] == pytest.approx(0.1)
    assert (summary["low"], summary["high"]) == pytest.approx((-0.1, 0.3))
    assert summary["verdict"] == "within noise"


def _closed_result(right: list[int], prefix: str = "q") -> dict:
    rows = [
        {"id": f"{prefix}{i:03d}", "task": "vqa", "answer_type": "closed", "question": "Nodule?", "answer": "yes",
         "prediction": "yes" if ok else "no"}
        for i, ok in enumerate(right)
    ]  # fmt: skip
    return {"metrics": score_rows(rows), "predictions": rows}


def test_difference_over_seeds_pairs_items_within_each_seed():
    # Seed 0 and seed 1 drew different test items (ids a.., b..); within a seed both variants answer the same ones.
    variants = [_closed_result([1] * 30 + [0] * 10, "a"), _closed_result([1] * 25 + [0] * 25, "b")]
    baselines = [_closed_result([1] * 20 + [0] * 20, "a"), _closed_result([1] * 20 + [0] * 30, "b")]
    summary = difference_over_seeds(variants, baselines, "closed_accuracy", n_resamples=2000)
    assert summary["n_items"] == [40, 50]
    assert summary["per_seed"] == pytest.approx([0.25, 0.1]) and summary["mean"] == pytest.approx(0.175)
    assert summary["low"] > 0 and summary["verdict"] == "better"
    # Without baselines: the metric itself per seed, with its interval.
    alone = difference_over_seeds(variants, None, "closed_accuracy", n_resamples=2000)
    assert alone["per_seed"] == pytest.approx([0.75, 0.5]) and alone["low"] < 0.625 < alone["high"]
    with pytest.raises(ValueError, match="cover different items"):
        difference_over_seeds(variants, baselines[::-1], "closed_accuracy")
    with pytest.raises(ValueError, match="2 variant results for 1 baseline"):
        difference_over_seeds(variants, baselines[:1], "closed_accuracy")


def _report_result(predictions: list[str], references: list[str]) -> dict:
    rows = [
        {"id": f"r{i}", "task": "report", "answer_type": None, "question": "Describe.", "answer": ref, "prediction": p}
        for i, (p, ref) in enumerate(zip(predictions, references))
    ]
    return {"metrics": score_rows(rows), "predictions": rows}


REPORTS = [*REPORT_PREDICTIONS, "", "Heart.", "No pneumothorax. Possible consolidation. Large right effusion."]
REFERENCES = [*REPORT_REFERENCES, "Normal chest.", "The heart is normal.", "Right pleural effusion and pneumothorax."]


@pytest.mark.parametrize("metric", [m for m in ITEM_METRICS if m.startswith(("bleu", "rouge", "cider", "clinical"))])
def test_per_item_statistics_add_up_to_the_corpus_metric(metric):
    # The statistics of all items give back exactly what pycocoevalcap / clinical_metrics give for the corpus.
    result = _report_result(REPORTS, REFERENCES)
    _, statistics = result_statistics(result, metric)
    assert float(aggregate(metric)(statistics)) == pytest.approx(result["metrics"][metric], abs=1e-12)


def test_balanced_accuracy_statistics_match_the_metric():
    rows = [
        {"id": f"q{i}", "task": "vqa", "answer_type": "closed", "question": "?", "answer": gold, "prediction": said}
        for i, (gold, said) in enumerate([("yes", "yes"), ("yes", "no"), ("no", "no"), ("left", "left"), ("no", "no")])
    ]
    result = {"metrics": score_rows(rows), "predictions": rows}
    _, statistics = result_statistics(result, "closed_balanced_accuracy")
    expected = (0.5 + 1 + 1) / 3  # yes 1/2, no 2/2, left 1/1
    assert (
        float(aggregate("closed_balanced_accuracy")(statistics))
        == result["metrics"]["closed_balanced_accuracy"]
        == pytest.approx(expected)
    )


def test_report_differences_get_intervals_and_verdicts():
    good = _report_result(REFERENCES * 5, REFERENCES * 5)
    bad = _report_result(["Normal."] * 30, REFERENCES * 5)
    for metric in ("bleu_4", "rouge_l", "clinical_f1"):
        paired = paired_difference(good, bad, metric, n_resamples=500, n_permutations=500)
        assert paired["difference"] == pytest.approx(good["metrics"][metric] - bad["metrics"][metric])
        assert paired["verdict"] == "better" and paired["p_value"] < 0.01
    with pytest.raises(ValueError, match="metric 'meteor' has no per-item statistics"):
        paired_difference(good, bad, "meteor")


def test_minimum_detectable_difference_follows_connors_formula():
    # Connor (1987) as worked on powerandsamplesize.com: p10 = 0.05, p01 = 0.45 -> 23 pairs detect 0.4.
    assert closed_items_needed(0.4, discordance=0.5) == 23
    assert minimum_detectable_difference(23, 0.5) <= 0.4 < minimum_detectable_difference(22, 0.5)
    # By hand: (1.95996 * sqrt(0.2) + 0.84162 * sqrt(0.2 - 0.05^2))^2 / 0.05^2 = 625.5 -> 626 items for 0.05.
    assert closed_items_needed(0.05, discordance=0.2) == 626
    # k seeds with no seed variance average k * n independent items.
    assert minimum_detectable_difference(200, 0.2, n_seeds=3) == pytest.approx(minimum_detectable_difference(600, 0.2))
    # Seed variance widens it and sets a floor that no number of items passes.
    assert minimum_detectable_difference(200, 0.2, n_seeds=3, seed_variance=1e-4) > minimum_detectable_difference(
        600, 0.2
    )
    with pytest.raises(ValueError, match="the seeds alone leave 0.0583; add seeds"):
        closed_items_needed(0.05, 0.2, n_seeds=3, seed_variance=0.0013)
    assert minimum_detectable_difference(5, 0.1) is None  # 5 items cannot detect even the largest difference


def test_seeds_needed_where_the_seeds_vary_more_than_the_items():
    # The demo study's mmedpo - dpo-text-visual step: 160 items, discordance 0.108, seed variance 0.00173.
    # By hand, per seed: sqrt(0.108/160 + 0.00173) = 0.04904 under 0 and sqrt(0.1055/160 + 0.00173) = 0.04888
    # under 0.05, so 0.05 needs sqrt(k) >= (1.95996 * 0.04904 + 0.84162 * 0.04888) / 0.05 = 2.745: k = 8.
    assert seeds_needed(0.05, 160, 0.108, 0.00173) == 8
    assert (
        minimum_detectable_difference(160, 0.108, 7, 0.00173)
        > 0.05
        >= minimum_detectable_difference(160, 0.108, 8, 0.00173)
    )
    with pytest.raises(ValueError, match="add seeds"):  # with 3 seeds no number of items is enough
        closed_items_needed(0.05, 0.108, n_seeds=3, seed_variance=0.00173)
    assert seeds_needed(0.05, 626, 0.2, 0.0) == 1 and seeds_needed(0.05, 313, 0.2, 0.0) == 2
    assert seeds_needed(0.05, 10, 0.2, 0.05, most=50) is None


def test_discordance_of_two_results():
    variant = _closed_result([1] * 30 + [0] * 10)
    baseline = _closed_result([1] * 20 + [0] * 20)
    assert discordance(variant, baseline) == 0.25  # 10 of 40 answered differently
