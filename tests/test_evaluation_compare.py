"""Comparisons: relative and average improvements, paired statistics, the three formats and the plots."""

from __future__ import annotations

import csv
import io
import json

import pytest
from PIL import Image

from mmedpo.evaluation.compare import (
    approximate_randomization,
    compare_results,
    render,
    to_markdown,
    visual_metrics,
)
from mmedpo.evaluation.metrics import score_predictions
from mmedpo.evaluation.plots import plot_comparison
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
    # Three questions all gained: of the 8 equally likely sign patterns, 2 reach |mean| = 1 -> p = 1/4.
    p_value = approximate_randomization([1, 1, 1], [0, 0, 0], seed=1, n_resamples=20000)
    assert p_value == pytest.approx(0.25, abs=0.01)
    assert p_value == approximate_randomization([1, 1, 1], [0, 0, 0], seed=1, n_resamples=20000)
    assert approximate_randomization([0.5, 0.2], [0.5, 0.2]) == 1.0  # identical scores: nothing to explain
    with pytest.raises(ValueError, match="equally long"):
        approximate_randomization([1], [1, 0])


def test_compare_results_relative_average_and_paired():
    comparison = compare_results(RESULTS, baseline="dpo", seed=0, n_resamples=200, n_permutations=500)
    assert comparison["protocol"] == "mmedpo" and comparison["paired_metrics"] == ["closed_accuracy", "open_recall"]
    base, ours = comparison["variants"]
    assert base["name"] == "dpo" and base["paired"] == {}
    assert ours["relative"]["closed_accuracy"] == pytest.approx(100.0)
    assert ours["relative"]["open_recall"] == pytest.approx(50.0)
    assert ours["average_improvement"] == {"vqa": pytest.approx(75.0)}  # mean of +100% and +50%
    closed = ours["paired"]["closed_accuracy"]
    # c1 unchanged, c2 gained: mean difference 0.5; every sign flip keeps |mean| = 0.5, so p = 1.
    assert (closed["n"], closed["difference"], closed["p_value"]) == (2, pytest.approx(0.5), 1.0)
    assert comparison == compare_results(RESULTS, baseline="dpo", seed=0, n_resamples=200, n_permutations=500)


def test_markdown_json_and_csv():
    comparison = compare_results(RESULTS, baseline="dpo", seed=0, n_resamples=200, n_permutations=500)
    lines = render(comparison, "md").splitlines()
    assert lines[0].startswith(
        "| variant | closed_accuracy | open_recall | open_exact | open_f1 | avg improvement vqa |"
    )
    assert lines[2].startswith("| dpo (baseline) | 0.5000 | 0.6667 |")
    assert "| 1.0000 (+100.0%) | 1.0000 (+50.0%) |" in lines[3] and "| +75.0% |" in lines[3]
    assert "+0.5000 [" in lines[3] and "p=1" in lines[3]
    assert lines[-1].startswith("Protocol mmedpo.")
    assert json.loads(render(comparison, "json")) == json.loads(json.dumps(comparison))
    rows = list(csv.DictReader(io.StringIO(render(comparison, "csv"))))
    assert len(rows) == 2 * 4 + 2  # 4 metrics per variant + one average-improvement row each
    row = next(r for r in rows if r["variant"] == "mmedpo" and r["metric"] == "closed_accuracy")
    assert (float(row["value"]), float(row["relative_pct"]), float(row["difference"])) == (1.0, 100.0, 0.5)
    assert {r["metric"] for r in rows if r["variant"] == "mmedpo"} >= {"avg_improvement_vqa"}
    with pytest.raises(ValueError, match="unknown format 'xlsx'; valid: md, json, csv"):
        render(comparison, "xlsx")


def test_protocols_are_not_mixed_and_llava_med_is_labelled():
    mixed = {"dpo": RESULTS["dpo"], "x": _result(["yes", "no"], "lobe", protocol="llava-med")}
    with pytest.raises(ValueError, match="different protocols"):
        compare_results(mixed, baseline="dpo")
    quirky = {name: _result(["yes", "nodule"], "lobe", protocol="llava-med") for name in ("a", "b")}
    comparison = compare_results(quirky, baseline="a")
    assert comparison["paired_metrics"] == []
    assert "LLaVA-Med's own VQA scorer" in to_markdown(comparison)


def test_visual_metrics_join_the_table():
    dependence = {"overall": {"n": 2, "clean": 1.0, "changed_noised": 0.5, "drop_noised": 0.25, "drop_blank": 0.5}}
    assert visual_metrics(dependence) == {
        "visual_changed_noised": 0.5,
        "visual_drop_noised": 0.25,
        "visual_drop_blank": 0.5,
    }


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
    """The variants of a CSV comparison (a row per variant and metric), in order."""
    return list(dict.fromkeys(row["variant"] for row in csv.DictReader(io.StringIO(table_csv))))
