"""A study over seeds: its table, chain verdicts from intervals, controls and the README block, on made-up answers."""

from __future__ import annotations

import json

import pytest
import yaml

from mmedpo.config import load_config
from mmedpo.evaluation.evaluate import Prediction, score_result
from mmedpo.pipeline.study import parse_seeds, seed_config
from mmedpo.records import dump_json
from mmedpo.report.study import (
    README_BEGIN,
    README_END,
    power_lines,
    study_markdown,
    summarize_study,
    write_readme_block,
    write_study,
)

N_ITEMS = 40


def _result(name: str, right: list[bool], finding: str = "nodule") -> dict:
    """An evaluation of closed questions whose gold answer alternates yes/no; `right[i]`: item i answered right.

    The items are named q00, q01... whatever the seed, as SynthMed names them; seeds that draw their own
    test split (as SynthMed's do) ask about their own `finding`.
    """
    predictions = []
    for index, correct in enumerate(right):
        gold = "yes" if index % 2 else "no"
        wrong = "no" if gold == "yes" else "yes"
        predictions.append(
            Prediction(
                id=f"q{index:02d}",
                task="vqa",
                question=f"Is there a {finding}?",
                answer=gold,
                prediction=gold if correct else wrong,
                answer_type="closed",
                meta={"question_kind": "presence"},
            )
        )
    return score_result(name, predictions)


def _write_study(tmp_path, right_by_seed: dict[int, dict[str, list[bool]]], shared_items: bool = False) -> None:
    config = {
        "seed": 0,
        "variants": {"sft": {"loss_type": "sft"}, "dpo": {}},
        "claim": ["dpo", "sft", "base"],
        "ablations": [["dpo", "base"]],
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    for seed, by_variant in right_by_seed.items():
        run = tmp_path / f"seed-{seed}"
        (run / "config.yaml").parent.mkdir(parents=True)
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        for name, right in by_variant.items():
            finding = "nodule" if shared_items else f"finding {seed}"
            dump_json(_result(name, right, finding), run / "eval" / f"{name}.json")
        dump_json({"status": "done", "summary": {"pairs": 30 + seed, "steps": 12}}, run / "stages" / "train.dpo.json")


def _right(count: int) -> list[bool]:
    return [index < count for index in range(N_ITEMS)]


def test_a_study_reports_seeds_means_intervals_and_interval_verdicts(tmp_path):
    # base 20/40 right, sft 21/40 (one more: inside the noise), dpo 36/40 (far above both), in both seeds.
    _write_study(tmp_path, {s: {"base": _right(20), "sft": _right(21), "dpo": _right(36)} for s in (0, 1)})
    summary = summarize_study(tmp_path, [0, 1])
    accuracy = summary["table"]["closed_accuracy"]
    assert accuracy["dpo"]["per_seed"] == [0.9, 0.9] and accuracy["dpo"]["mean"] == pytest.approx(0.9)
    assert accuracy["dpo"]["low"] < 0.9 < accuracy["dpo"]["high"]
    claim = summary["chains"][0]
    assert claim["chain"] == ["dpo", "sft", "base"] and claim["is_claim"]
    closed = next(v for v in claim["verdicts"] if v["metric"] == "closed_accuracy")
    dpo_over_sft, sft_over_base = closed["steps"]
    assert dpo_over_sft["verdict"] == "better" and dpo_over_sft["per_seed"] == pytest.approx([0.375, 0.375])
    # One item of forty in each seed: the interval spans 0, so the chain is within noise, not "holds".
    assert sft_over_base["verdict"] == "within noise" and closed["status"] == "within noise"
    assert summary["chains"][1]["verdicts"][0]["status"] == "holds"
    # Answers changed: dpo differs from base on 16 of 40 items, from the SFT control on 15.
    assert summary["changed"]["dpo"] == {"vs_base": pytest.approx(0.4), "vs_sft": pytest.approx(0.375)}
    assert summary["training"]["dpo"] == {"pairs": [30, 31], "steps": [12, 12]}
    assert summary["majority"]["closed_accuracy"] == pytest.approx(0.5)  # yes and no tie: one of them, half right
    assert summary["power"]["sft - base"]["n_items"] == N_ITEMS
    # dpo - sft: discordance 15/40, no seed variance. By hand, one seed needs
    # (1.95996 sqrt(0.375) + 0.84162 sqrt(0.3725))^2 / 0.05^2 = 1175.1 -> 1176 items to detect 0.05:
    # 588 per seed with these two seeds, or 30 seeds of 40 items.
    power = summary["power"]["dpo - sft"]
    assert (power["items_needed"], power["seeds_needed"]) == (588, 30)
    assert "Detecting 0.05 would take 588 closed items per seed with these seeds, or 30 seeds of 40 items." in (
        " ".join(power_lines(summary))
    )


def test_the_seed_variance_of_power_leaves_out_what_the_items_explain(tmp_path):
    # sft is right on 1 more item than base (of 40) in seed 0 and on 5 more in seed 1: differences 0.025 and
    # 0.125, whose variance (ddof 1) is 0.005. Each seed's own items explain psi/n of it on average:
    # (0.025/40 + 0.125/40) / 2 = 0.001875, so the seeds' variance is 0.005 - 0.001875 = 0.003125.
    _write_study(tmp_path, {0: {"base": _right(20), "sft": _right(21), "dpo": _right(36)},
                            1: {"base": _right(20), "sft": _right(25), "dpo": _right(36)}})  # fmt: skip
    power = summarize_study(tmp_path, [0, 1])["power"]["sft - base"]
    assert power["seed_variance"] == pytest.approx(0.003125)
    assert power["discordance"] == pytest.approx(0.075)


def test_seeds_that_share_one_test_split_keep_its_item_noise(tmp_path):
    # The same two seeds as above, on one shared test split (a real dataset's): the items' noise is common to
    # both seeds, so all of the spread, 0.005, is the seeds' own; and since more seeds cannot shrink the
    # items' term, sqrt(0.075 / 40) = 0.0433 times (1.96 + 0.84) = 0.121 > 0.05: no number of seeds detects 0.05.
    seeds = {0: {"base": _right(20), "sft": _right(21), "dpo": _right(36)},
             1: {"base": _right(20), "sft": _right(25), "dpo": _right(36)}}  # fmt: skip
    _write_study(tmp_path, seeds, shared_items=True)
    summary = summarize_study(tmp_path, [0, 1])
    power = summary["power"]["sft - base"]
    assert power["shared_items"] and power["seed_variance"] == pytest.approx(0.005)
    assert power["seeds_needed"] is None and power["items_needed"] is None
    assert "or no number of seeds of these 40 items (the seeds share them)." in " ".join(power_lines(summary))


def test_more_seeds_of_the_same_effect_narrow_the_interval(tmp_path):
    def width(seeds: int) -> float:
        folder = tmp_path / str(seeds)
        folder.mkdir()
        _write_study(folder, {s: {"base": _right(20), "sft": _right(24), "dpo": _right(28)} for s in range(seeds)})
        entry = summarize_study(folder, list(range(seeds)))["chains"][0]["verdicts"][0]["steps"][1]
        return entry["high"] - entry["low"]

    assert width(4) < width(1)


def test_study_files_and_the_readme_block(tmp_path):
    _write_study(tmp_path, {s: {"base": _right(20), "sft": _right(22), "dpo": _right(30)} for s in (0, 1, 2)})
    page = write_study(tmp_path, [0, 1, 2])
    assert json.loads((tmp_path / "study.json").read_text())["seeds"] == [0, 1, 2]
    markdown = (tmp_path / "results.md").read_text()
    assert markdown == study_markdown(summarize_study(tmp_path, [0, 1, 2]))
    lines = markdown.splitlines()
    # 20, 30 and 22 of 40 right in every seed; the intervals are the bootstrap's, the rest is by hand.
    row = next(line for line in lines if line.startswith("| closed_accuracy |"))
    assert [cell.split(" [")[0] for cell in row.split(" | ")[1:]] == ["0.500", "0.750", "0.550", "0.500 |"]
    assert any(line.startswith("- closed_accuracy: dpo 0.7500 > sft 0.5500 > base 0.5000: HOLDS (dpo - sft "
                               "+0.2000 [95% CI ") for line in lines)  # fmt: skip
    # dpo differs from base on 10 of 40 items and from sft on 8.
    assert "| dpo | 30, 31, 32 | 12, 12, 12 | - | 25.0% | 20.0% |" in lines
    # Discordance 8/40 = 0.2: (1.95996 sqrt(0.2) + 0.84162 sqrt(0.1975))^2 / 0.05^2 = 625.5 -> 626 items in all,
    # 209 in each of 3 seeds, or 16 seeds of 40.
    assert any("dpo - sft" in line and "discordance 0.200" in line and "Detecting 0.05 would take 209 closed "
               "items per seed with these seeds, or 16 seeds of 40 items." in line for line in lines)  # fmt: skip
    assert "class='better'" in page.read_text()
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_BEGIN}\nold table\n{README_END}\noutro\n")
    write_readme_block(readme, tmp_path, "mmedpo study --seeds 0,1,2")
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{README_END}\noutro\n")
    assert "old table" not in text and "Made by `mmedpo study --seeds 0,1,2`." in text and markdown in text
    readme.write_text("no block")
    with pytest.raises(ValueError, match="no study block"):
        write_readme_block(readme, tmp_path, "x")


def test_runs_sharing_a_judge_cache_each_append_to_a_file_of_their_own(tmp_path):
    from mmedpo.layout import RunLayout
    from mmedpo.pipeline.stages import _judge_cache

    def writer(runs_dir, name, cache):
        config = load_config(None, [f"runs_dir={runs_dir}", f"name={name}", f"score.cache_path={cache}"])
        return _judge_cache(RunLayout.of(config), config)[1]

    shared = tmp_path / "cache" / "judge_cache.jsonl"
    assert writer(tmp_path / "cache", "seed-0", shared) == "seed-0"  # a study's seed
    assert writer(tmp_path / "cache" / "a", "seed-0", shared) == "a.seed-0"  # two studies under the cache's folder
    elsewhere = {writer(tmp_path / "x", "seed-0", shared), writer(tmp_path / "y", "seed-0", shared)}
    assert len(elsewhere) == 2 and all(name.startswith("seed-0-") for name in elsewhere)
    assert writer(tmp_path, "run", tmp_path / "run" / "judge_cache.jsonl") is None  # the run's own cache


def test_seed_runs_live_in_the_study_folder_and_share_the_judge_cache():
    config = load_config(None, ["name=s", "runs_dir=/tmp/r"])
    one = seed_config(config, 1)
    assert (str(one.run_dir), one.seed) == ("/tmp/r/s/seed-1", 1)
    assert one.score.cache_path == seed_config(config, 2).score.cache_path == "/tmp/r/s/judge_cache.jsonl"
    assert parse_seeds("0,2-4") == [0, 2, 3, 4]
    with pytest.raises(ValueError, match="seeds must look like"):
        parse_seeds("a,b")


def test_run_study_runs_each_seed_in_its_folder_then_writes_the_study(tmp_path, monkeypatch):
    from mmedpo.layout import RunLayout
    from mmedpo.pipeline import study

    ran = []

    def fake_run(config, show_progress=True, on_stage=None):
        ran.append((str(config.run_dir), config.seed, config.score.cache_path))
        # An evaluation per variant, as a finished seed run leaves it: dpo right on 30 of 40, sft 25, base 20.
        for name, right in (("base", 20), ("sft", 25), ("dpo", 30)):
            dump_json(_result(name, _right(right)), RunLayout.of(config).eval(name))
        from mmedpo.config import dump_config

        dump_config(config, RunLayout.of(config).config)

    monkeypatch.setattr(study, "run_pipeline", fake_run)
    config = load_config(
        None, [f"runs_dir={tmp_path}", "name=s", "variants={sft: {loss_type: sft}, dpo: {}}", "claim=[dpo, sft, base]"]
    )
    folder = study.run_study(config, [3, 5], show_progress=False)
    cache = str(tmp_path / "s" / "judge_cache.jsonl")
    assert ran == [(str(tmp_path / "s" / "seed-3"), 3, cache), (str(tmp_path / "s" / "seed-5"), 5, cache)]
    summary = json.loads((folder / "study.json").read_text())
    assert summary["seeds"] == [3, 5] and summary["variants"] == ["base", "sft", "dpo"]
    assert summary["chains"][0]["verdicts"][0]["steps"][0]["per_seed"] == pytest.approx([0.125, 0.125])
    with pytest.raises(ValueError, match="distinct seeds"):
        study.run_study(config, [1, 1])


def test_a_training_cell_of_many_seeds_gives_their_range_and_mean():
    from mmedpo.report.study import training_rows

    summary = {
        "variants": ["few", "many"],
        "control": None,
        "changed": {},
        "training": {
            "few": {"pairs": [30, 31], "steps": [12, 12], "heldout_reward_accuracy": [0.5, 0.75]},
            "many": {"pairs": [30, 31, 35, 30, 33, 32], "steps": [12] * 6,
                     "heldout_reward_accuracy": [0.5, 0.75, 0.625, 0.5, 0.5, 0.875]},
        },
    }  # fmt: skip
    few, many = training_rows(summary)
    assert few[1:4] == ["30, 31", "12, 12", "0.500, 0.750"]
    # (30 + 31 + 35 + 30 + 33 + 32) / 6 = 31.83 pairs; held-out (0.5 + .75 + .625 + .5 + .5 + .875) / 6 = 0.625
    assert many[1:4] == ["30 to 35 (mean 32)", "12 in every seed", "0.500 to 0.875 (mean 0.625)"]
