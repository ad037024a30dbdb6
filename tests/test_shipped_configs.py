"""Every shipped dataset config runs every stage on a small dataset in its layout, drawn by the test.

The configs are used as shipped; a test only points `data.image_root` at its
folder and shrinks the model and the steps (a tiny LLaVA instead of LLaVA-Med:
built and fine-tuned here where the config starts from a supervised model, built
by the run where the config fine-tunes it). The VQA-RAD config's endpoints (a
chat generator and two chat judges) are a local fake OpenAI server.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dataset_layouts import write_iu_xray, write_llava_generic, write_slake, write_vqa_rad
from fake_openai import FakeOpenAI, prompt_text
from mmedpo.clinical.findings import normalise_text
from mmedpo.config import load_config
from mmedpo.data.readers import read_dataset
from mmedpo.layout import RunLayout
from mmedpo.pipeline import run_pipeline
from mmedpo.records import PreferencePair, Sample, read_jsonl

CONFIGS = Path(__file__).parent.parent / "configs"
TINY = [
    "model.image_size=32",
    "model.text_hidden=32",
    "model.vision_hidden=32",
    "model.layers=1",
    "model.vision_pretrain_epochs=5",
    "curate_text.candidates=2",
    "curate_text.allow_empty_generators=[target]",  # a tiny model may answer nothing usable
    "train.num_train_epochs=1",
    "train.per_device_train_batch_size=4",
    "eval.batch_size=16",
    "eval.max_new_tokens_report=16",
]
# Where a config fine-tunes the model it starts from, the run builds the tiny LLaVA and fine-tunes it on its sft split.
TINY_FROM_SCRATCH = ["model.path=null", "model.sft_epochs=40", "model.sft_learning_rate=3e-3", "model.sft_batch_size=8"]


def supervised_tiny(out: Path, dataset: str, root: Path, **options) -> Path:
    """A tiny LLaVA fine-tuned on the dataset's train split: the stand-in for an already supervised LLaVA-Med."""
    from mmedpo.models.sft import supervised_finetune
    from mmedpo.models.tiny import build_tiny_llava

    samples, _ = read_dataset(dataset, root, **options)
    corpus = [text for sample in samples for text in (sample.question, sample.answer)]
    init = build_tiny_llava(corpus, out / "init", image_size=32, vision_hidden=32, text_hidden=32, layers=1)
    train = [sample for sample in samples if sample.split == "train"]
    return supervised_finetune(init, train, [root], out / "sft", epochs=40, learning_rate=3e-3, batch_size=8)


def run(config: str, root: Path, runs: Path, *overrides: str) -> RunLayout:
    settings = load_config(CONFIGS / config, [f"data.image_root={root}", f"runs_dir={runs}", *TINY, *overrides])
    run_pipeline(settings, show_progress=False)
    return RunLayout.of(settings)


def states(layout: RunLayout) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in layout.stages_dir.glob("*.json")}


def check_every_stage_done(layout: RunLayout) -> dict[str, dict]:
    done = states(layout)
    expected = {"samples", "base", "curate_text", "curate_visual", "score", "regions", "report"}
    expected |= {f"{stage}.{variant}" for stage in ("pairs", "train", "eval") for variant in ("dpo", "mmedpo")}
    assert set(done) == expected | {"eval.base"}
    assert {name: state["status"] for name, state in done.items() if state["status"] != "done"} == {}
    return {name: state.get("summary", {}) for name, state in done.items()}


def wrong_answer(body: dict) -> str:
    """The fake endpoint: a flipped answer for the hallucination prompt, a score of 4 (of 5) for the judge's."""
    prompt = prompt_text(body)
    if "Write a plausible but clinically WRONG answer" not in prompt:
        return '{"score": 4, "reason": "a different finding"}'
    gold = re.search(r"Correct answer: (.*)", prompt)
    flips = {"yes": "no", "no": "yes", "left": "right", "right": "left", "CT": "MRI", "MRI": "CT"}
    return flips.get(gold.group(1).strip(), "kidney")


@pytest.mark.slow
def test_vqa_rad_config_without_annotations(tmp_path, monkeypatch):
    root = tmp_path / "vqa-rad"
    write_vqa_rad(root)
    model = supervised_tiny(tmp_path / "model", "vqa-rad", root)
    with FakeOpenAI(reply=wrong_answer) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        layout = run(
            "vqa-rad-llava-med.yaml",
            root,
            tmp_path / "runs",
            f"model.path={model}",
            f"score.judge_options.biomistral.base_url={server.url}",
        )
    summary = check_every_stage_done(layout)
    assert summary["samples"]["by_split"] == {"pref": 32, "test": 16}
    assert (
        summary["curate_visual"]["notes"][0]
        == "localizer: attribution (auto: no sample carries a lesion mask or boxes)"
    )
    assert (
        summary["curate_visual"]["localizer_iou"] == "not measured: no curated sample has a lesion_mask to compare with"
    )
    page = (layout.report_dir / "index.html").read_text()
    assert "<p id='iou'>not measured: no curated sample has a lesion_mask to compare with</p>" in page
    assert "localizer: attribution (the evaluated split has no lesion masks)<br>visual dependence measured" in page
    assert summary["curate_text"]["pairs_by_generator"]["chat"] > 0
    visual = read_jsonl(layout.visual_pairs(), PreferencePair)
    assert visual and {pair.provenance["localizer"] for pair in visual} == {"attribution"}
    assert len({pair.provenance["confidence"] for pair in visual}) > 1  # concentration varies
    # Organ and modality questions are outside the chest lexicon: the findings judge does not apply there, and
    # those pairs are scored by the two chat judges alone, each 4 of 5 = 0.75.
    scored = read_jsonl(layout.scored_pairs, PreferencePair)
    outside = [pair for pair in scored if "findings" in pair.provenance.get("not_applicable", [])]
    assert outside and summary["score"]["not_applicable"] == {"findings": len(outside)}
    assert {pair.clinical_score for pair in outside} == {0.75}
    dependence = json.loads(layout.eval("base").read_text())["visual_dependence"]
    assert dependence["localizer"] == "attribution" and dependence["n_samples"] == 16
    assert summary["eval.base"]["visual_measured"] + summary["eval.base"]["visual_skipped"] == 16
    notes = summary["eval.base"]["notes"]
    assert notes[0] == "localizer: attribution (the evaluated split has no lesion masks)"
    assert notes[1].startswith(f"visual dependence measured {dependence['n_measured']} of 16 samples")


@pytest.mark.slow
def test_slake_config_with_masks(tmp_path):
    root = tmp_path / "slake"
    write_slake(root)
    model = supervised_tiny(tmp_path / "model", "slake", root)
    layout = run("slake.yaml", root, tmp_path / "runs", f"model.path={model}")
    summary = check_every_stage_done(layout)
    assert summary["samples"]["rejected"] == 1  # the Chinese question, skipped with its reason
    assert summary["samples"]["by_split"] == {"pref": 24, "val": 6, "test": 6}
    assert (
        summary["curate_visual"]["notes"][0] == "localizer: annotation (auto: 30 of 30 samples carry lesion masks)"
    )  # pref and val
    assert summary["curate_visual"]["localizer_iou"] == "not measured: the localizer is the annotation itself"
    assert summary["eval.base"]["notes"][0] == "localizer: annotation (the evaluated split's lesion masks)"
    assert summary["eval.base"]["visual_measured"] == 6  # a mask for every test image
    assert summary["score"]["no_applicable_judge"] == 0  # the embedding judge applies to every pair


@pytest.mark.slow
def test_iu_xray_config_with_reports(tmp_path):
    root = tmp_path / "iu_xray"
    write_iu_xray(root)
    layout = run("iu-xray.yaml", root, tmp_path / "runs", *TINY_FROM_SCRATCH)
    summary = check_every_stage_done(layout)
    assert summary["samples"]["by_split"] == {"sft": 6, "pref": 6, "val": 2, "test": 4}
    samples = read_jsonl(layout.samples, Sample)
    sft, pref = ({s.image for s in samples if s.split == name} for name in ("sft", "pref"))
    assert len(sft) == len(pref) == 6 and not sft & pref
    # The reports name these findings as present, so the tiny vision tower is pretrained on them.
    assert summary["base"]["vision_pretrain"]["findings"] == ["cardiomegaly", "pleural effusion"]
    assert summary["curate_visual"]["notes"][0].startswith("localizer: attribution")
    assert summary["eval.base"]["protocol"] and "bleu_1" in json.loads(layout.eval("base").read_text())["metrics"]


@pytest.mark.slow
def test_generic_llava_config_with_separate_train_and_test_files(tmp_path):
    root = tmp_path / "shapes"
    write_llava_generic(root)
    layout = run("llava-generic.yaml", root, tmp_path / "runs", *TINY_FROM_SCRATCH)
    summary = check_every_stage_done(layout)
    assert summary["samples"]["by_split"] == {"sft": 24, "pref": 24, "test": 18}
    assert summary["base"]["notes"][0].startswith("vision pretraining skipped: its labels are the findings")
    assert (
        summary["curate_visual"]["notes"][0]
        == "localizer: attribution (auto: no sample carries a lesion mask or boxes)"
    )
    text = read_jsonl(layout.text_pairs, PreferencePair)
    assert "vocabulary_swap" in {pair.provenance.get("operation") for pair in text}
    for pair in text:  # every rejected answer is of its question's type
        rejected = normalise_text(pair.rejected)
        if "color" in pair.question:
            assert rejected in {"red", "blue"}, pair
        elif pair.answer_type == "open":
            assert rejected in {"circle", "square"}, pair
        else:
            assert rejected in {"yes", "no"}, pair
    # Nothing here is in the chest lexicon: the findings judge applies to no pair, the embedding judge to all.
    assert summary["score"]["not_applicable"] == {"findings": summary["score"]["by_kind"]["text"]}
