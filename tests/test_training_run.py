"""`train_weighted_dpo` as a run uses it: equal step budgets, the schedule, experiment tracking, checkpoints."""

from __future__ import annotations

import json

import pytest
from transformers import TrainerCallback

from mmedpo.training import pairs as pairs_module
from mmedpo.training.dpo import train_weighted_dpo
from mmedpo.training.settings import DPOSettings
from test_training import make_pair
from test_training_features import StopAt


@pytest.fixture
def image_root(tmp_path, tiny_images):
    for name, image in zip(["dark", "bright", "left", "right"], tiny_images):
        image.save(tmp_path / f"{name}.png")
    return tmp_path


class Schedule(TrainerCallback):
    """Records the learning rate of every optimiser step and the optimiser's weight decay."""

    def __init__(self):
        self.rates, self.decay, self.steps = [], None, 0

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.rates.append(optimizer.param_groups[0]["lr"])
        self.decay = optimizer.param_groups[0]["weight_decay"]

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


def test_max_steps_cycles_a_small_pair_set_with_the_schedule_asked(tiny_vlm_dir, image_root, tmp_path, monkeypatch):
    # Equal budgets: 3 pairs, 2 per step, 5 steps -> the pairs are cycled through 2.5 times, each one seen.
    seen = []
    collate = pairs_module.PairRoutingCollator.__call__

    def counting(self, examples):
        seen.extend(example["weight"] for example in examples)
        return collate(self, examples)

    monkeypatch.setattr(pairs_module.PairRoutingCollator, "__call__", counting)
    pairs = [make_pair(i, weight=w, rejected_image="right.png" if i == 1 else None) for i, w in enumerate([1, 2, 3])]
    settings = DPOSettings(
        per_device_train_batch_size=2,
        max_steps=5,
        learning_rate=1e-2,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=2,
        weight_decay=0.1,
        logging_steps=1,
    )
    schedule = Schedule()
    out = train_weighted_dpo(tiny_vlm_dir, pairs, [image_root], tmp_path / "m", settings, [schedule])

    assert schedule.steps == 5
    assert sorted(seen) == [1, 1, 1, 2, 2, 2, 3, 3, 3]  # 2.5 epochs of 3 pairs: 5 batches of 2, the last 1
    log = json.loads((out / "train_log.json").read_text())
    assert (log["optimizer_steps"], log["pairs"], log["epochs"]) == (5, 3, 2.5)
    assert [entry["step"] for entry in log["log_history"] if "loss" in entry] == [1, 2, 3, 4, 5]
    # Linear warmup over 2 steps from 0, then constant; AdamW's decay as set.
    assert schedule.rates == pytest.approx([0.0, 5e-3, 1e-2, 1e-2, 1e-2])
    assert schedule.decay == 0.1


def test_trl_args_pass_through(tiny_vlm_dir, image_root, tmp_path):
    class Args(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.args = args

    grab = Args()
    settings = DPOSettings(
        per_device_train_batch_size=2, max_steps=1, trl_args={"max_grad_norm": 0.25, "adam_beta2": 0.9}
    )
    train_weighted_dpo(tiny_vlm_dir, [make_pair(0), make_pair(1)], [image_root], tmp_path / "m", settings, [grab])
    assert (grab.args.max_grad_norm, grab.args.adam_beta2) == (0.25, 0.9)


def test_tensorboard_writes_event_files(tiny_vlm_dir, image_root, tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    settings = DPOSettings(per_device_train_batch_size=2, max_steps=2, logging_steps=1, report_to="tensorboard")
    out = train_weighted_dpo(tiny_vlm_dir, [make_pair(i) for i in range(4)], [image_root], tmp_path / "m", settings)

    events = list((out / "runs").glob("*/events.out.tfevents.*"))
    assert len(events) == 1
    accumulator = event_accumulator.EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    tags = accumulator.Tags()["scalars"]
    assert {"train/loss", "train/rewards/margins", "train/loss/weighted"} <= set(tags)
    assert [event.step for event in accumulator.Scalars("train/loss")] == [1, 2]


def test_an_incomplete_checkpoint_is_skipped_and_checkpoints_go_after_success(tiny_vlm_dir, image_root, tmp_path):
    pairs = [make_pair(i, weight=0.5 + 0.25 * i) for i in range(8)]
    settings = DPOSettings(per_device_train_batch_size=2, save_steps=2, learning_rate=1e-2, logging_steps=1)
    out = tmp_path / "m"
    train_weighted_dpo(tiny_vlm_dir, pairs, [image_root], out, settings, [StopAt(2)])
    assert (out / "checkpoint-2" / "trainer_state.json").exists()
    # What a kill during the next save leaves: the model written, a 0-byte optimizer.pt, no trainer state.
    broken = out / "checkpoint-4"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes((out / "checkpoint-2" / "model.safetensors").read_bytes())
    (broken / "optimizer.pt").write_bytes(b"")

    train_weighted_dpo(tiny_vlm_dir, pairs, [image_root], out, settings)

    log = json.loads((out / "train_log.json").read_text())
    assert log["optimizer_steps"] == 4
    assert [entry["step"] for entry in log["log_history"] if "loss" in entry] == [1, 2, 3, 4]  # resumed at step 2
    assert not list(out.glob("checkpoint-*"))  # only for resuming: none is kept after success
