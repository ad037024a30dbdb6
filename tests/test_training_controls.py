"""The controls a preference variant is measured against: the supervised loss, and held-out reward accuracy."""

from __future__ import annotations

import json

import pytest
import torch

from mmedpo.training.dpo import WeightedDPOTrainer, train_weighted_dpo
from mmedpo.training.pairs import pairs_to_dataset
from mmedpo.training.settings import DPOSettings
from test_training import loss_and_grads, make_pair, make_trainer, perturb


@pytest.fixture
def image_root(tmp_path, tiny_images):
    for name, image in zip(["dark", "bright", "left", "right"], tiny_images):
        image.save(tmp_path / f"{name}.png")
    return tmp_path


def _loss(tiny_vlm_dir, dataset, rows, out_dir, **args):
    """The loss and gradients on `rows` of a trainer built on `dataset`, its policy moved off the reference."""
    trainer = make_trainer(tiny_vlm_dir, dataset, out_dir, per_device_train_batch_size=len(rows), **args)
    perturb(trainer.model)
    return loss_and_grads(trainer, rows)


def test_sft_is_the_nll_term_of_dpo_plus_nll_alone(tiny_vlm_dir, image_root, tmp_path):
    dataset = pairs_to_dataset([make_pair(i) for i in range(3)], [image_root])
    rows = list(dataset)
    sft, sft_grads = _loss(tiny_vlm_dir, dataset, rows, tmp_path / "a", loss_type=["sft"])
    with_nll, _ = _loss(tiny_vlm_dir, dataset, rows, tmp_path / "b", nll_weight=1.0)
    dpo, _ = _loss(tiny_vlm_dir, dataset, rows, tmp_path / "c")
    assert sft.item() == pytest.approx(with_nll.item() - dpo.item(), rel=1e-5)
    assert sft.item() > 0 and any(g.abs().sum() > 0 for g in sft_grads.values())
    # No preference: what the rejected answer says, or which image it is shown, changes nothing.
    other = [
        dict(row, rejected=[{"role": "assistant", "content": [{"type": "text", "text": "maybe"}]}]) for row in rows
    ]
    again, _ = _loss(tiny_vlm_dir, dataset, other, tmp_path / "d", loss_type=["sft"])
    assert torch.allclose(again, sft)


def test_sft_refuses_an_extra_nll_term():
    with pytest.raises(ValueError, match="loss_type 'sft' is the chosen answer's NLL already"):
        DPOSettings(loss_type="sft", nll_weight=1.0)


def test_heldout_pairs_give_reward_accuracy_by_kind_without_being_trained_on(tiny_vlm_dir, image_root, tmp_path):
    train = [make_pair(i) for i in range(4)]
    heldout = [make_pair(10), make_pair(11, rejected_image="right.png")]
    settings = DPOSettings(per_device_train_batch_size=2, max_steps=2, learning_rate=1e-2, logging_steps=1)
    out = train_weighted_dpo(tiny_vlm_dir, train, [image_root], tmp_path / "m", settings, heldout_pairs=heldout)
    log = json.loads((out / "train_log.json").read_text())
    assert (log["optimizer_steps"], log["pairs"]) == (2, 4)  # held-out pairs are not trained on
    found = log["heldout"]
    assert found["pairs"] == 2 and 0.0 <= found["reward_accuracy"] <= 1.0
    assert {"reward_margin", "reward_accuracy_text", "reward_accuracy_visual", "loss"} <= set(found)


class _Logged:
    """What `_log_pair_metrics` reads of a trainer, on one process (gather returns what it is given)."""

    beta = 1.0
    same = staticmethod(lambda tensor: tensor)
    accelerator = type("Accelerator", (), {"gather": same, "gather_for_metrics": same})()
    args = type("Args", (), {"weight_reduction": "mean"})()

    def __init__(self):
        from collections import defaultdict

        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}

    def logged(self, mode: str) -> dict:
        """What TRL's `log` reports: the mean of what was added."""
        return {name: sum(values) / len(values) for name, values in self._metrics[mode].items()}


def _add_batch(logged: _Logged, mode: str, right: list[bool], visual: list[bool]) -> None:
    """One batch of pairs; pair i's chosen reward beats its rejected one when right[i]."""
    chosen = torch.tensor([1.0 if is_right else -1.0 for is_right in right])
    zeros = torch.zeros(len(right))
    WeightedDPOTrainer._log_pair_metrics(
        logged, mode, zeros, zeros, chosen, zeros, zeros, torch.ones(len(right)), torch.tensor(visual)
    )


@pytest.mark.parametrize("mode, overall, text", [("eval", 2 / 3, 1 / 2), ("train", 1 / 2, 1 / 2)])
def test_heldout_reward_accuracy_is_a_share_of_pairs_not_a_mean_of_batch_means(mode, overall, text):
    # Two right pairs in a full batch, one wrong pair in a short last batch. Held out (eval) that is 2 of 3
    # pairs; training logs keep upstream's mean of batch means, (1 + 0) / 2.
    logged = _Logged()
    _add_batch(logged, mode, right=[True, True], visual=[False, True])
    _add_batch(logged, mode, right=[False], visual=[False])
    found = logged.logged(mode)
    assert found["rewards/accuracies"] == pytest.approx(overall)
    assert found["rewards/accuracies/text"] == pytest.approx(text)  # text pairs: one right, one wrong
    assert found["rewards/accuracies/visual"] == pytest.approx(1.0)
    assert found["rewards/margins"] == pytest.approx(1 / 3 if mode == "eval" else 0.0)
