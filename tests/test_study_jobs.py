"""A study's seeds side by side (`jobs`): each seed's own process computes what a run in this process does."""

from __future__ import annotations

import json

import pytest

from mmedpo.config import load_config
from mmedpo.layout import RunLayout
from mmedpo.pipeline import run_pipeline
from mmedpo.pipeline.engine import RunLock
from mmedpo.pipeline.study import run_study, seed_config

TINY = [
    "data.n_sft=24",
    "data.n_pref=8",
    "data.n_test=6",
    "data.n_val=0",
    "data.image_size=64",
    "model.image_size=32",
    "model.text_hidden=32",
    "model.vision_hidden=32",
    "model.layers=1",
    "model.vision_pretrain_epochs=2",
    "model.sft_epochs=12",
    "model.sft_learning_rate=3e-3",
    "curate_text.candidates=2",
    "score.judges=[findings, embedding]",  # the embedding judge goes through the judge cache
    "train.max_steps=4",
    "train.per_device_train_batch_size=4",
    "eval.batch_size=16",
    "eval.max_new_tokens_report=16",
    "variants={sft: {loss_type: sft}, mmedpo: {}}",
    "claim=[mmedpo, sft, base]",
    "ablations=[]",
    "threads=1",
]


def _eval(run_dir, variant: str) -> dict:
    result = json.loads(RunLayout.read(run_dir).eval(variant).read_text())
    return {"metrics": result["metrics"], "predictions": result["predictions"]}


@pytest.mark.slow
def test_a_seed_in_its_own_process_matches_a_run_here_and_a_failed_seed_stops_the_study(tmp_path):
    config = load_config(None, TINY + [f"runs_dir={tmp_path}", "name=study"])
    busy = seed_config(config, 1)
    # Seed 1's folder is held by another writer: that seed fails, seed 0 still runs in its process.
    with RunLock(RunLayout.of(busy)), pytest.raises(ValueError, match=r"1 of 2 seeds failed.*seed 1: run folder"):
        run_study(config, [0, 1], show_progress=False, jobs=2)
    study = tmp_path / "study"
    assert not (study / "study.json").exists()
    # The same seed run in this process, in another study folder, gives the same answers and metrics.
    here = seed_config(load_config(None, TINY + [f"runs_dir={tmp_path}", "name=here"]), 0)
    run_pipeline(here, show_progress=False)
    for variant in ("base", "sft", "mmedpo"):
        assert _eval(study / "seed-0", variant) == _eval(here.run_dir, variant)
    # The seed wrote its judge verdicts to its own file of the shared cache, not to the shared file itself.
    assert (study / "judge_cache.seed-0.jsonl").stat().st_size > 0
    assert not (study / "judge_cache.jsonl").exists()
