"""End to end: every stage on a very small SynthMed config, then the skipping rules."""

import json

import pytest
from typer.testing import CliRunner

from mmedpo.cli import app
from mmedpo.config import load_config
from mmedpo.layout import RunLayout
from mmedpo.pipeline import run_pipeline
from mmedpo.pipeline.stages import split
from mmedpo.records import PreferencePair, Reject, read_jsonl, rejects_path

SMALL = [
    "data.n_sft=24",
    "data.n_pref=10",
    "data.n_test=8",
    "data.image_size=64",
    "model.image_size=32",
    "model.text_hidden=32",
    "model.vision_hidden=32",
    "model.layers=1",
    "model.sft_epochs=12",  # enough for answers that are words, so that there are visual pairs
    "model.sft_learning_rate=3e-3",
    "curate_text.candidates=2",
    "train.num_train_epochs=1",
    "train.per_device_train_batch_size=4",
    "eval.batch_size=16",
    "eval.max_new_tokens_report=16",
    # The paper's further ablations and ours (image-conditional pairs, equal kinds), all in one extra
    # variant to keep the test short.
    "curate_visual.regions=[lesion, whole]",
    "curate_visual.rejected=[model-answer, gold]",
    "score.judges=[findings, embedding]",
    "variants={mmedpo: {}, ablated: {visual_region: whole, visual_rejected: gold, judges: [findings], "
    "kind_balance: equal}}",
    "ablations=[[mmedpo, ablated]]",
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    config = load_config(None, SMALL + ["name=small", f"runs_dir={tmp_path_factory.mktemp('runs')}"])
    results = run_pipeline(config, show_progress=False)
    return config, results


@pytest.mark.slow
def test_every_stage_runs_and_writes_the_run_folder(finished_run):
    config, results = finished_run
    run = RunLayout.of(config)
    assert [r.name for r in results] == [
        "samples",
        "base",
        "curate_text",
        "curate_visual",
        "score",
        "regions",
        "eval:base",
        "pairs:mmedpo",
        "pairs:ablated",
        "train:mmedpo",
        "eval:mmedpo",
        "train:ablated",
        "eval:ablated",
        "report",
    ]
    assert all(r.status == "ran" for r in results)
    for path in [
        "config.yaml",
        "samples.jsonl",
        "pairs.text.jsonl",
        "pairs.visual.jsonl",
        "pairs.scored.jsonl",
        "pairs.mmedpo.jsonl",
        "pairs.ablated.jsonl",
        "models/base/config.json",
        "models/mmedpo/config.json",
        "eval/base.json",
        "eval/mmedpo.json",
        "report/index.html",
    ]:
        assert (run.dir / path).exists(), path
    assert any(run.noised_images.rglob("*.png"))


@pytest.mark.slow
def test_curation_counts_add_up(finished_run):
    config, _ = finished_run
    run = RunLayout.of(config)
    pref = {s.id for s in split(run, "pref")}
    files = [(region, rejected) for region in ("lesion", "whole") for rejected in ("model-answer", "gold")]
    for path in [run.text_pairs] + [run.visual_pairs(*key) for key in files]:
        paired = {p.sample_id for p in read_jsonl(path, PreferencePair)}
        rejected = {r.id for r in read_jsonl(rejects_path(path), Reject)}
        assert paired | rejected == pref and not paired & rejected
    visual = read_jsonl(run.visual_pairs("lesion"), PreferencePair)
    whole = read_jsonl(run.visual_pairs("whole"), PreferencePair)
    assert visual and whole  # the untrained tiny model gets some answers wrong on the noised images
    gold = read_jsonl(run.visual_pairs("whole", "gold"), PreferencePair)
    assert len(gold) == len(pref) and all(p.chosen == p.rejected for p in gold)  # every image has a region
    assert all(p.rejected_image and p.rejected_image.startswith("noised/") for p in visual + whole)
    scored = read_jsonl(run.scored_pairs, PreferencePair)
    assert len(scored) == len(read_jsonl(run.text_pairs, PreferencePair)) + sum(
        len(read_jsonl(run.visual_pairs(*key), PreferencePair)) for key in files
    )
    assert all(0 <= p.clinical_score <= 1 and p.weight is None for p in scored)
    assert all(set(p.scores) == {"findings", "embedding"} for p in scored if p.kind == "text")


@pytest.mark.slow
def test_each_variant_trains_on_exactly_its_pairs_file(finished_run):
    config, _ = finished_run
    run = RunLayout.of(config)
    scored = read_jsonl(run.scored_pairs, PreferencePair)
    text = [p.id for p in scored if p.kind == "text"]
    chosen = {"mmedpo": ("lesion", None), "ablated": ("whole", "gold")}
    # Equal budgets: every variant takes the steps of the one with the most pairs (1 epoch, 4 pairs a step).
    most = max(len(read_jsonl(run.variant_pairs(variant), PreferencePair)) for variant in chosen)
    steps = {json.loads(run.stage_state(f"train:{v}").read_text())["summary"]["steps"] for v in chosen}
    assert steps == {-(-most // 4)}
    for variant, (region, rejected) in chosen.items():
        pairs = read_jsonl(run.variant_pairs(variant), PreferencePair)
        visual = [p.id for p in scored if p.kind == "visual" and (p.region, p.rejected_text) == (region, rejected)]
        assert sorted(p.id for p in pairs) == sorted(text + visual)
        weights = {kind: [p.weight for p in pairs if p.kind == kind] for kind in ("text", "visual")}
        if variant == "mmedpo":  # mean-one within each kind
            assert all(sum(w) / len(w) == pytest.approx(1.0) for w in weights.values())
        else:  # each kind half the total weight (kind_balance: equal)
            assert sum(weights["visual"]) == pytest.approx(sum(weights["text"]))
        trained = json.loads(run.stage_state(f"train:{variant}").read_text())["summary"]
        assert trained["pairs"] == len(pairs) and trained["by_kind"]["visual"] == len(visual)
    # The one-judge variant's clinical scores are the findings judge's alone.
    ablated = {p.id: p for p in read_jsonl(run.variant_pairs("ablated"), PreferencePair)}
    assert all(ablated[p.id].clinical_score == p.scores["findings"] for p in scored if p.kind == "text")


@pytest.mark.slow
def test_eval_has_the_metrics_of_every_task(finished_run):
    config, _ = finished_run
    for variant in ("base", "mmedpo"):
        result = json.loads(RunLayout.of(config).eval(variant).read_text())
        metrics = result["metrics"]
        for name in ("closed_accuracy", "open_recall", "bleu_1", "bleu_4", "rouge_l"):
            assert 0.0 <= metrics[name] <= 1.0, name
        assert len(result["predictions"]) == len(split(RunLayout.of(config), "test"))


@pytest.mark.slow
def test_each_trained_model_has_a_card_with_its_data_and_test_metrics(finished_run):
    from huggingface_hub import ModelCard

    config, _ = finished_run
    run = RunLayout.of(config)
    card = ModelCard.load(run.model("mmedpo") / "README.md")
    metrics = json.loads(run.eval("mmedpo").read_text())["metrics"]
    found = {result.metric_name: result.metric_value for result in card.data.eval_results}
    assert found["closed_accuracy"] == round(metrics["closed_accuracy"], 4)
    assert (
        card.data.base_model is None
        and "`../base` (a local folder" in card.text
        and card.data.pipeline_tag == "image-text-to-text"
    )
    by_kind = json.loads(run.train_log("mmedpo").read_text())["pairs_by_kind"]
    assert f"| visual | {by_kind['visual']} |" in card.text and "noised on the lesion region" in card.text
    assert "noised on the whole region" in ModelCard.load(run.model("ablated") / "README.md").text


@pytest.mark.slow
def test_rerun_skips_finished_stages_and_a_change_reruns_only_what_follows(finished_run):
    config, _ = finished_run
    again = run_pipeline(config, show_progress=False)
    assert {r.status for r in again} == {"skipped"}
    changed = config.model_copy(update={"train": config.train.model_copy(update={"beta": 0.3})})
    statuses = {r.name: r.status for r in run_pipeline(changed, show_progress=False)}
    assert statuses == {
        "samples": "skipped",
        "base": "skipped",
        "curate_text": "skipped",
        "curate_visual": "skipped",
        "score": "skipped",
        "regions": "skipped",
        "eval:base": "skipped",
        "pairs:mmedpo": "skipped",
        "train:mmedpo": "ran",
        "eval:mmedpo": "ran",
        "pairs:ablated": "skipped",
        "train:ablated": "ran",
        "eval:ablated": "ran",
        "report": "ran",
    }


def test_help_lists_every_stage_command():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("curate", "score", "train", "regions", "eval", "compare", "convert", "report", "run"):
        assert command in result.output
    curate = CliRunner().invoke(app, ["curate", "--help"])
    assert "text" in curate.output and "visual" in curate.output


def test_bad_config_is_one_clear_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  beta: -1\n")
    result = CliRunner().invoke(app, ["run", "--config", str(bad)])
    assert result.exit_code == 2
    assert "train.beta" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["run", "-o", "nonsense"])
    assert result.exit_code == 2 and "section.key=value" in result.output
