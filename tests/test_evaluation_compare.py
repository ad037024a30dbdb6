"""Comparisons: relative and average improvements, paired statistics, the three formats and the plots."""

from __future__ import annotations

import csv
import io
import json

import pytest
from PIL import Image

from mmedpo.evaluation.compare import compare_results, render, to_markdown, visual_metrics
from mmedpo.evaluation.intervals import approximate_randomization
from mmedpo.evaluation.metrics import score_predictions
from mmedpo.evaluation.plots import metric_panels, plot_comparison
from mmedpo.records import Sample


def _result(closed_predictions, open_prediction, protocol="mmedpo"):
    samples = [
        Sample(id=i, task="vqa", image="a.png", question="q?", answer=a, answer_type=t)
        for i, a, t in [("c1", "yes", "closed"), ("c2", "no", "closed"), ("o1", "left lower lobe", "open")]
    ]
    predictions = [*closed_predictions, open_prediction]
    rows = [
        {"id": s.id, "task": s.task, "answer_type": s.answer_type, "answer": s.answer, "prediction": p}
        for s, p in zip(samples, predictions)
    ]
    return {"metrics": score_predictions(samples, predictions, protocol=protocol), "predictions": rows}


RESULTS = {
    "dpo": _result(["yes", "nodule"], "lower lobe"),  # closed 0.5, open recall 2/3
    "mmedpo": _result(["yes", "no"], "left lower lobe"),  # closed 1.0, open recall 1.0
}


def test_approximate_randomization_by_hand():
    # Three questions all gained: the 8 swap patterns are enumerated; P(mean >= 1) = 1/8, two-sided p = 2/8.
    p_value = approximate_randomization([1, 1, 1], [0, 0, 0], seed=1, n_resamples=20000)
    assert p_value == pytest.approx(0.25)
    assert p_value == approximate_randomization([1, 1, 1], [0, 0, 0], seed=1, n_resamples=20000)
    assert approximate_randomization([0.5, 0.2], [0.5, 0.2]) == 1.0  # identical scores: nothing to explain
    with pytest.raises(ValueError, match="equally long"):
        approximate_randomization([1], [1, 0])


def test_compare_results_relative_average_and_paired():
    comparison = compare_results(RESULTS, baseline="dpo", seed=0, n_resamples=200, n_permutations=500)
    assert comparison["protocol"] == "mmedpo"
    assert comparison["paired_metrics"] == [
        "closed_accuracy",
        "closed_balanced_accuracy",
        "open_recall",
        "open_exact",
        "open_f1",
    ]
    base, ours = comparison["variants"]
    assert base["name"] == "dpo" and base["paired"] == {}
    assert ours["relative"]["closed_accuracy"] == pytest.approx(100.0)
    assert ours["relative"]["open_recall"] == pytest.approx(50.0)
    assert ours["average_improvement"] == {"vqa": pytest.approx(75.0)}  # mean of +100% and +50%
    closed = ours["paired"]["closed_accuracy"]
    # c1 unchanged, c2 gained: mean difference 0.5; the 4 swaps give +-0.5 or 0, so p = 2 * min(1/2, 1) = 1.
    assert (closed["n"], closed["difference"], closed["p_value"]) == (2, pytest.approx(0.5), 1.0)
    # Resampling 2 items gives 0 (c1 twice), 0.5 or 1 (c2 twice): the interval spans 0.
    assert (closed["low"], closed["high"], closed["verdict"]) == (0.0, 1.0, "within noise")
    # One of the two closed answers differs: discordance 1/2, and no difference is detectable with 2 items.
    assert (closed["discordance"], closed["mde"]) == (0.5, None)
    assert comparison["majority"]["answers"] == {"closed": "no", "open": "left lower lobe"}
    assert comparison["majority"]["metrics"]["closed_accuracy"] == 0.5
    assert comparison == compare_results(RESULTS, baseline="dpo", seed=0, n_resamples=200, n_permutations=500)


def _closed_result(right: list[int]) -> dict:
    """A result with one closed question per entry of `right` (gold "yes"; 1 = answered right)."""
    samples = [
        Sample(id=f"q{i:02d}", task="vqa", image="a.png", question="Nodule?", answer="yes", answer_type="closed")
        for i in range(len(right))
    ]
    predictions = ["yes" if ok else "no" for ok in right]
    rows = [{**s.model_dump(), "prediction": p} for s, p in zip(samples, predictions)]
    return {"metrics": score_predictions(samples, predictions), "predictions": rows}


def test_verdicts_come_from_the_interval():
    # 40 questions. "gain": 12 gained, none lost -> interval above 0. "noise": 3 gained, 2 lost.
    # "loss": 12 lost, none gained -> below 0.
    base = [1] * 20 + [0] * 20
    results = {
        "base": _closed_result(base),
        "gain": _closed_result([1] * 32 + [0] * 8),
        "noise": _closed_result([1] * 18 + [0] * 2 + [1] * 3 + [0] * 17),
        "loss": _closed_result([1] * 8 + [0] * 32),
    }
    comparison = compare_results(results, baseline="base", n_resamples=2000, n_permutations=2000)
    verdicts = {v["name"]: v["paired"].get("closed_accuracy", {}).get("verdict") for v in comparison["variants"]}
    assert verdicts == {"base": None, "gain": "better", "noise": "within noise", "loss": "worse"}
    noise = comparison["variants"][2]["paired"]["closed_accuracy"]
    assert noise["difference"] == pytest.approx(1 / 40) and noise["low"] < 0 < noise["high"]
    table = to_markdown(comparison)
    assert "| gain | closed_accuracy | +0.3000 |" in table and "| better |" in table
    assert "| loss | closed_accuracy | -0.3000 |" in table and "| worse |" in table


def test_markdown_json_and_csv():
    comparison = compare_results(RESULTS, baseline="dpo", seed=0, n_resamples=200, n_permutations=500)
    lines = render(comparison, "md").splitlines()
    assert lines[0].startswith("| variant | closed_accuracy | closed_balanced_accuracy |")
    assert lines[2].startswith("| dpo (baseline) | 0.5000 | 0.5000 | 1.0000 | 0.0000 | 0.6667 |")
    assert lines[3].startswith("| mmedpo | 1.0000 (+100.0%) |") and "| +75.0% |" in lines[3]
    assert lines[4].startswith("| majority answer (test split) | 0.5000 |")
    assert lines[8] == "| mmedpo | closed_accuracy | +0.5000 | [+0.0000, +1.0000] | 1 | within noise | undetectable |"
    assert lines[-1].startswith("Protocol mmedpo: strict VQA scoring.")
    assert json.loads(render(comparison, "json")) == json.loads(json.dumps(comparison))
    rows = list(csv.DictReader(io.StringIO(render(comparison, "csv"))))
    # 7 metrics per variant + one average-improvement row each + the majority baseline's 7 metrics.
    assert len(rows) == 2 * 7 + 2 + 7
    row = next(r for r in rows if r["variant"] == "mmedpo" and r["metric"] == "closed_accuracy")
    assert (float(row["value"]), float(row["relative_pct"]), float(row["difference"])) == (1.0, 100.0, 0.5)
    assert row["verdict"] == "within noise"
    assert {r["metric"] for r in rows if r["variant"] == "mmedpo"} >= {"avg_improvement_vqa"}
    majority = next(r for r in rows if r["variant"] == "majority answer" and r["metric"] == "closed_accuracy_no")
    assert float(majority["value"]) == 1.0
    with pytest.raises(ValueError, match="unknown format 'xlsx'; valid: md, json, csv"):
        render(comparison, "xlsx")


def test_protocols_are_not_mixed_and_llava_med_is_labelled():
    mixed = {"dpo": RESULTS["dpo"], "x": _result(["yes", "no"], "lobe", protocol="llava-med-v1.0.0")}
    with pytest.raises(ValueError, match="different protocols"):
        compare_results(mixed, baseline="dpo")
    quirky = {
        "a": _result(["yes", "nodule"], "lobe", protocol="llava-med-v1.0.0"),
        "b": _result(["yes", "no"], "lobe", protocol="llava-med-v1.0.0"),
    }
    comparison = compare_results(quirky, baseline="a", n_resamples=200, n_permutations=200)
    # v1.0.0 scores every closed answer, so paired differences exist: "nodule" is a hit for gold "no" as "no" is.
    assert comparison["variants"][1]["paired"]["closed_accuracy"]["difference"] == 0.0
    assert "open_precision" in comparison["paired_metrics"]
    assert "LLaVA-Med v1.0.0's own VQA scorer" in to_markdown(comparison)
    # Files scored under the old, unversioned name are not silently read as another protocol.
    old = {
        name: {**result, "metrics": {**result["metrics"], "protocol": "llava-med"}} for name, result in quirky.items()
    }
    with pytest.raises(ValueError, match="protocol 'llava-med', now unknown: rescore it"):
        compare_results(old, baseline="a")


def test_visual_metrics_join_the_table():
    overall = {"n": 2, "clean": 1.0, "changed_noised": 0.5, "drop_noised": 0.25, "drop_blank": 0.5}
    dependence = {"overall": overall, "n_measured": 2, "n_skipped": 3}
    assert visual_metrics(dependence) == {
        "visual_changed_noised": 0.5,
        "visual_drop_noised": 0.25,
        "visual_drop_blank": 0.5,
        "visual_measured": 2,
        "visual_skipped": 3,
    }


def test_cider_gets_its_own_panel_beside_the_metrics_in_0_1():
    # CIDEr runs to 10: on BLEU's axis, BLEU's bars would be too short to read.
    assert metric_panels(["closed_accuracy", "bleu_1", "bleu_4", "rouge_l", "cider", "clinical_f1"]) == {
        "vqa": [["closed_accuracy"]],
        "report": [["bleu_1", "bleu_4", "rouge_l"], ["cider"]],
        "clinical": [["clinical_f1"]],
    }
    assert metric_panels(["bleu_1"]) == {"report": [["bleu_1"]]}


def test_plots_are_written_as_png(tmp_path):
    comparison = compare_results(RESULTS, baseline="dpo", n_resamples=50, n_permutations=50)
    paths = plot_comparison(comparison, tmp_path / "plots")
    assert [p.name for p in paths] == ["metrics_vqa.png"]  # no report metrics, no report chart
    with Image.open(paths[0]) as image:
        assert image.format == "PNG" and image.size[0] > 300


def test_cli_compare_lists_a_runs_variants_in_config_order_and_prefixes_several_runs(tmp_path):
    from typer.testing import CliRunner

    from mmedpo.cli import app

    for run in ("one", "two"):
        (tmp_path / run / "eval").mkdir(parents=True)
        (tmp_path / run / "config.yaml").write_text("variants: {zeta: {}, alpha: {}}\n")
        for name, closed in (("base", ["no", "no"]), ("alpha", ["yes", "no"]), ("zeta", ["yes", "yes"])):
            (tmp_path / run / "eval" / f"{name}.json").write_text(json.dumps(_result(closed, "effusion")))
    single = CliRunner().invoke(app, ["compare", str(tmp_path / "one"), "--format", "csv"])
    assert single.exit_code == 0, single.output
    assert _variants(single.output) == ["base", "zeta", "alpha"]
    both = CliRunner().invoke(
        app, ["compare", str(tmp_path / "one"), str(tmp_path / "two"), "--baseline", "one/base", "--format", "csv"]
    )
    assert both.exit_code == 0, both.output
    assert _variants(both.output) == ["one/base", "one/zeta", "one/alpha", "two/base", "two/zeta", "two/alpha"]


def _variants(table_csv: str) -> list[str]:
    """The variants of a CSV comparison (a row per variant and metric), in order, without the majority baseline."""
    rows = csv.DictReader(io.StringIO(table_csv))
    return list(dict.fromkeys(row["variant"] for row in rows if row["variant"] != "majority answer"))
