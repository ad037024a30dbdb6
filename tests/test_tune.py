"""Choosing settings on the validation split: the grid becomes variants of one run that reads `val`."""

from __future__ import annotations

import pytest
import yaml

from mmedpo.layout import RunLayout
from mmedpo.pipeline import tune
from mmedpo.records import dump_json


def _plan(tmp_path, **changes):
    run = {"data": {"n_val": 2}, "variants": {"dpo-text": {"pair_kinds": ["text"]}, "mmedpo": {}}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    plan = {
        "config": "run.yaml",
        "variants": ["dpo-text", "mmedpo"],
        "metric": "closed_accuracy",
        "tie_break": "open_recall",
        "grid": {"train.beta": [0.1, 0.5], "train.learning_rate": [1e-4]},
        **changes,
    }
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(plan))
    return tune.read_plan(tmp_path / "tune.yaml", [f"runs_dir={tmp_path / 'runs'}"])


def test_every_grid_point_is_a_variant_of_one_run_evaluated_on_validation(tmp_path):
    config = tune.tuning_config(_plan(tmp_path))
    assert config.eval.split == "val" and config.claim == [] and config.name == "tune"
    assert list(config.variants) == ["dpo-text--g0", "mmedpo--g0", "dpo-text--g1", "mmedpo--g1"]
    # A point changes only the grid's settings; each variant keeps what makes it that variant.
    assert config.variant("dpo-text--g1").beta == 0.5 and config.variant("dpo-text--g1").pair_kinds == ["text"]
    assert config.variant("mmedpo--g0").beta == 0.1 and config.variant("mmedpo--g0").pair_kinds == ["text", "visual"]


def test_the_best_point_on_validation_is_chosen_and_every_point_recorded(tmp_path, monkeypatch):
    plan = _plan(tmp_path)
    # g0: mean closed accuracy (0.6 + 0.7) / 2 = 0.65; g1: (0.7 + 0.6) / 2 = 0.65, but a higher open recall.
    scores = {
        "dpo-text--g0": (0.6, 0.3),
        "mmedpo--g0": (0.7, 0.3),
        "dpo-text--g1": (0.7, 0.5),
        "mmedpo--g1": (0.6, 0.4),
    }

    def fake_run(config, show_progress=True, on_stage=None):
        for name, (closed, recall) in scores.items():
            metrics = {"closed_accuracy": closed, "open_recall": recall}
            dump_json({"metrics": metrics}, RunLayout.of(config).eval(name))

    monkeypatch.setattr(tune, "run_pipeline", fake_run)
    result = tune.run_tuning(plan, show_progress=False)
    assert [row["score"] for row in result["rows"]] == pytest.approx([0.65, 0.65])
    assert result["best"]["point"] == 1 and result["best"]["settings"] == {
        "train.beta": 0.5,
        "train.learning_rate": 1e-4,
    }
    table = tune.tuning_markdown(plan, result, "mmedpo tune tune.yaml")
    assert "| g1 (chosen) | 0.5 | 0.0001 | 0.6500 | 0.7000 | 0.6000 | 0.4500 |" in table
    assert "the test split was not looked at" in table and "Chosen: g1: train.beta = 0.5" in table
    assert "(2 SynthMed images drawn from its test distribution, images of their own)" in table


def test_the_record_says_which_split_of_a_real_dataset_was_tuned_on():
    from mmedpo.config import DataConfig

    slake = DataConfig(source="dataset", dataset="slake", image_root="x", split_map={"validation": "val"})
    assert tune.validation_split(slake) == "the 'validation' split of the data read by reader slake (data.split_map)"
    carved = DataConfig(source="samples", samples="s.jsonl", split_map={"train": {"pref": 0.875, "val": 0.125}})
    cut = "a 12.5% cut by image of the 'train' split of the data read from s.jsonl (data.split_map)"
    assert tune.validation_split(carved) == cut


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"grid": {"eval.batch_size": [1]}}, r"grid keys must be train settings"),
        ({"variants": ["nowhere"]}, r"tuning variants \['nowhere'\] are not variants"),
        ({"colour": 1}, r"unknown key\(s\) \['colour'\]"),
        ({"grid": {"train.beta": []}}, r"grid must map section.key to a non-empty list"),
    ],
)
def test_bad_tuning_files_are_named(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        tune.tuning_config(_plan(tmp_path, **changes))
