"""DPO+NLL, length normalisation, the cached reference, LoRA, resuming, MMedPO JSON input."""

from __future__ import annotations

import json

import pytest
import torch
import trl.trainer.dpo_trainer as trl_dpo
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, TrainerCallback

from mmedpo.training.dpo import WeightedDPOTrainer, objective, train_from_mmedpo_json, train_weighted_dpo
from mmedpo.training.dpo_config import WeightedDPOConfig
from mmedpo.training.lora import lora_config, merge_adapter
from mmedpo.training.pairs import PAIR_BATCH_KEYS, pairs_to_dataset
from mmedpo.training.ref_cache import data_hash
from mmedpo.training.settings import DPOSettings
from test_training import loss_and_grads, make_pair, perturb


@pytest.fixture
def image_root(tmp_path, tiny_images):
    for name, image in zip(["dark", "bright", "left", "right"], tiny_images):
        image.save(tmp_path / f"{name}.png")
    return tmp_path


def trainer_for(model, dataset, out_dir, **overrides):
    args = dict(output_dir=str(out_dir), report_to="none", bf16=False, activation_checkpointing=False)
    peft_config = overrides.pop("peft_config", None)
    return WeightedDPOTrainer(
        model=model, args=WeightedDPOConfig(**args, **overrides), train_dataset=dataset, peft_config=peft_config
    )


def count_forwards(model):
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_objective_by_hand():
    """Per-pair DPO losses l = [1, 2], NLLs n = [0.5, 1.5], clinical weights w = [0, 2], nll_weight c = 0.5.

    No NLL term (the paper's loss): mean(w*l) = (0 + 4) / 2 = 2.
    NLL not scaled by the weight (the default): mean(w*l) + c*mean(n) = 2 + 0.5 * 1 = 2.5.
    NLL scaled by the weight: mean(w*(l + c*n)) = (0 * 1.25 + 2 * 2.75) / 2 = 2.75.
    'normalized': sum(w*l)/sum(w) = 4/2 = 2, + c*mean(n) = 2.5; scaled: 5.5/2 = 2.75.
    """
    losses, nll, weights = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 1.5]), torch.tensor([0.0, 2.0])
    assert objective(losses, nll, weights, 0.0, False, "mean").item() == pytest.approx(2.0)
    assert objective(losses, nll, weights, 0.0, True, "mean").item() == pytest.approx(2.0)
    assert objective(losses, nll, weights, 0.5, False, "mean").item() == pytest.approx(2.5)
    assert objective(losses, nll, weights, 0.5, True, "mean").item() == pytest.approx(2.75)
    assert objective(losses, nll, torch.tensor([1.0, 3.0]), 0.5, False, "normalized").item() == pytest.approx(
        (1 + 6) / 4 + 0.25 * 2
    )
    assert objective(losses, nll, weights, 0.5, True, "normalized").item() == pytest.approx(2.75)


@pytest.mark.parametrize("scaled", [False, True], ids=["nll-unweighted", "nll-scaled-by-weight"])
def test_dpo_plus_nll_adds_the_chosen_mean_token_nll(tiny_vlm_dir, image_root, tmp_path, scaled):
    dataset = pairs_to_dataset([make_pair(0), make_pair(2, weight=0.5)], [image_root])
    plain = trainer_for(str(tiny_vlm_dir), dataset, tmp_path / "plain")
    nll = trainer_for(str(tiny_vlm_dir), dataset, tmp_path / "nll", nll_weight=0.5, nll_scaled_by_weight=scaled)
    perturb(plain.model)
    perturb(nll.model)
    rows = list(dataset)

    loss_plain, _ = loss_and_grads(plain, rows)
    loss_nll, _ = loss_and_grads(nll, rows)

    # By hand: the policy's summed log-prob of each chosen answer over its answer tokens.
    batch = {k: v for k, v in plain.data_collator(rows).items() if k not in PAIR_BATCH_KEYS}
    with torch.no_grad():
        chosen_logps, _ = plain.compute_ref_log_probs(plain.model, batch)
    tokens = batch["completion_mask"][:2, 1:].sum(dim=1)
    per_pair_nll = -chosen_logps / tokens
    weights = torch.tensor([1.0, 0.5]) if scaled else torch.ones(2)  # mean reduction
    expected = loss_plain + 0.5 * (weights * per_pair_nll).mean()
    assert per_pair_nll.min() > 0.1
    torch.testing.assert_close(loss_nll, expected, atol=1e-6, rtol=0)


def test_length_normalize_gives_sigmoid_norm(tiny_vlm_dir, image_root, tmp_path):
    dataset = pairs_to_dataset([make_pair(0), make_pair(2, rejected_image="right.png")], [image_root])
    normalized = trainer_for(str(tiny_vlm_dir), dataset, tmp_path / "a", length_normalize=True)
    sigmoid_norm = trainer_for(str(tiny_vlm_dir), dataset, tmp_path / "b", loss_type="sigmoid_norm")
    plain = trainer_for(str(tiny_vlm_dir), dataset, tmp_path / "c")
    losses = []
    for trainer in (normalized, sigmoid_norm, plain):
        perturb(trainer.model)
        losses.append(loss_and_grads(trainer, list(dataset))[0])
    torch.testing.assert_close(losses[0], losses[1], atol=1e-6, rtol=0)
    assert abs(losses[0].item() - losses[2].item()) > 1e-3
    with pytest.raises(ValueError, match="already length-normalised"):
        WeightedDPOConfig(str(tmp_path), loss_type="ipo", length_normalize=True, bf16=False)
    with pytest.raises(ValueError, match="already length-normalised"):
        DPOSettings(loss_type="sigmoid_norm", length_normalize=True)


def test_precomputed_reference_equals_live_and_is_reused(tiny_vlm_dir, image_root, tmp_path, monkeypatch):
    loads = []
    original = trl_dpo.create_model_from_path
    monkeypatch.setattr(trl_dpo, "create_model_from_path", lambda *a, **k: loads.append(1) or original(*a, **k))
    pairs = [make_pair(0, rejected_image="dark.png"), make_pair(1, weight=0.5), make_pair(2)]
    dataset = pairs_to_dataset(pairs, [image_root])
    cache = tmp_path / "cache"

    live = trainer_for(str(tiny_vlm_dir), dataset, tmp_path / "live")
    assert len(loads) == 2 and live.ref_model is not None  # policy + TRL's frozen copy: the counter sees both
    loads.clear()
    cached = trainer_for(
        str(tiny_vlm_dir), dataset, tmp_path / "cached", precompute_ref_log_probs=True, ref_cache_dir=str(cache)
    )
    assert len(loads) == 1 and cached.ref_model is None  # no second model
    assert len(list(cache.glob("*.safetensors"))) == 1
    assert "ref_chosen_logps" in cached.train_dataset.column_names

    perturb(live.model)
    perturb(cached.model)
    forwards = count_forwards(cached.model)
    live_loss, live_grads = loss_and_grads(live, list(dataset))
    cached_loss, cached_grads = loss_and_grads(cached, list(cached.train_dataset))
    assert len(forwards) == 1  # the policy only: the reference is not run
    assert abs(live_loss.item() - 0.6931) > 1e-3
    torch.testing.assert_close(cached_loss, live_loss, atol=1e-6, rtol=0)
    for name, grad in live_grads.items():
        torch.testing.assert_close(cached_grads[name], grad, atol=1e-6, rtol=0, msg=name)

    # Same model and data: the file is read, the model not run. Another rejected image: a new file.
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir, local_files_only=True)
    forwards = count_forwards(model)
    trainer_for(model, dataset, tmp_path / "again", precompute_ref_log_probs=True, ref_cache_dir=str(cache))
    assert forwards == []
    other = pairs_to_dataset([make_pair(0, rejected_image="bright.png"), *pairs[1:]], [image_root])
    trainer_for(str(tiny_vlm_dir), other, tmp_path / "other", precompute_ref_log_probs=True, ref_cache_dir=str(cache))
    assert len(list(cache.glob("*.safetensors"))) == 2


def test_data_hash_follows_content_not_weights(image_root):
    base = pairs_to_dataset([make_pair(0, rejected_image="dark.png")], [image_root])
    reweighted = pairs_to_dataset([make_pair(0, weight=0.1, rejected_image="dark.png")], [image_root])
    other_image = pairs_to_dataset([make_pair(0, rejected_image="bright.png")], [image_root])
    other_answer = pairs_to_dataset([make_pair(1, rejected_image="dark.png")], [image_root])
    assert data_hash(base) == data_hash(reweighted)
    assert len({data_hash(base), data_hash(other_image), data_hash(other_answer)}) == 3


def test_lora_reference_is_the_policy_without_adapter(tiny_vlm_dir, image_root, tmp_path, monkeypatch):
    loads = []
    original = trl_dpo.create_model_from_path
    monkeypatch.setattr(trl_dpo, "create_model_from_path", lambda *a, **k: loads.append(1) or original(*a, **k))
    dataset = pairs_to_dataset([make_pair(0), make_pair(1, rejected_image="right.png")], [image_root])
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir, local_files_only=True)
    settings = DPOSettings(use_peft=True, lora_r=4, train_projector=True)
    trainer = trainer_for(model, dataset, tmp_path, peft_config=lora_config(model, settings))

    assert loads == [] and trainer.ref_model is None
    trainable = [name for name, p in trainer.model.named_parameters() if p.requires_grad]
    assert not any("vision_tower" in name for name in trainable)
    assert any("lora_A" in name and "language_model" in name for name in trainable)
    assert any("multi_modal_projector.modules_to_save" in name for name in trainable)
    forwards = count_forwards(trainer.model.get_base_model())
    loss_and_grads(trainer, list(dataset))
    assert len(forwards) == 2  # the policy, then the same weights with the adapter disabled


@pytest.mark.slow
def test_lora_adapter_reloads_on_a_fresh_base_and_merges(tiny_vlm_dir, image_root, tmp_path):
    pairs = [make_pair(i, rejected_image="right.png" if i % 2 else None) for i in range(4)]
    dataset = pairs_to_dataset(pairs, [image_root])
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir, local_files_only=True)
    settings = DPOSettings(use_peft=True, lora_r=4, train_projector=True)
    trainer = trainer_for(
        model,
        dataset,
        tmp_path / "run",
        peft_config=lora_config(model, settings),
        learning_rate=1e-2,
        max_steps=2,
        per_device_train_batch_size=2,
        save_strategy="no",
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "adapter"))

    batch = {k: v for k, v in trainer.data_collator(list(dataset)).items() if k not in PAIR_BATCH_KEYS}
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    trainer.model.eval()
    with torch.no_grad():
        trained = trainer.model(**inputs).logits
        fresh = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir, local_files_only=True)
        base = fresh(**inputs).logits
        reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()(**inputs).logits
        merged_dir = merge_adapter(tiny_vlm_dir, tmp_path / "adapter", tmp_path / "merged")
        merged = AutoModelForImageTextToText.from_pretrained(merged_dir, local_files_only=True)(**inputs).logits

    assert (trained - base).abs().max() > 1e-3  # the adapter learned something
    torch.testing.assert_close(reloaded, trained, atol=1e-6, rtol=0)
    torch.testing.assert_close(merged, trained, atol=1e-4, rtol=0)
    assert not (merged_dir / "adapter_config.json").exists()


def test_full_fine_tuning_freezes_the_vision_tower(tiny_vlm_dir, image_root, tmp_path):
    pairs = [make_pair(i) for i in range(2)]
    out = train_weighted_dpo(
        tiny_vlm_dir,
        pairs,
        [image_root],
        tmp_path / "m",
        DPOSettings(per_device_train_batch_size=2, learning_rate=1e-2),
    )
    before, after = load_file(tiny_vlm_dir / "model.safetensors"), load_file(out / "model.safetensors")
    vision = [key for key in before if "vision_tower" in key]
    assert vision and all(torch.equal(before[key], after[key]) for key in vision)
    assert any(not torch.equal(before[key], after[key]) for key in before if "language_model" in key)


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
        return control


@pytest.mark.slow
def test_resuming_ends_where_an_uninterrupted_run_ends(tiny_vlm_dir, image_root, tmp_path):
    pairs = [make_pair(i, weight=0.25 * (1 + i % 4), rejected_image="right.png" if i % 2 else None) for i in range(8)]
    settings = DPOSettings(per_device_train_batch_size=2, save_steps=2, learning_rate=1e-2, logging_steps=1)
    whole = train_weighted_dpo(tiny_vlm_dir, pairs, [image_root], tmp_path / "whole", settings)
    interrupted = train_weighted_dpo(tiny_vlm_dir, pairs, [image_root], tmp_path / "b", settings, [StopAt(2)])
    halfway = load_file(interrupted / "model.safetensors")
    resumed = train_weighted_dpo(tiny_vlm_dir, pairs, [image_root], tmp_path / "b", settings)

    expected, got = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert any(not torch.equal(halfway[key], expected[key]) for key in expected)  # stopped early indeed
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=0, msg=key)
    log = json.loads((resumed / "train_log.json").read_text())["log_history"]
    assert [entry["step"] for entry in log if "loss" in entry] == [1, 2, 3, 4]  # the checkpoint keeps the first half


def test_train_from_mmedpo_json(tiny_vlm_dir, image_root, tmp_path):
    def record(i, image="left.png", **extra):
        turn = [{"from": "human", "value": "<image>\nIs the heart enlarged?"}, {"from": "gpt", "value": " Yes"}]
        rejected = [turn[0], {"from": "gpt", "value": " No"}]
        return {
            "id": i,
            "image": image,
            "conversations": turn,
            "rejected_conversations": rejected,
            "weighted_score": 0.5,
            **extra,
        }

    records = [record(1), record(2, rejected_image="right.png"), record(3, image="missing.png"), {"id": 4}]
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(records))

    summary = train_from_mmedpo_json(
        path, image_root, tiny_vlm_dir, tmp_path / "out", DPOSettings(per_device_train_batch_size=2)
    )

    assert (summary["read"], summary["trained"], summary["rejected"]) == (4, 2, 2)
    rejects = [json.loads(line) for line in (tmp_path / "out" / "pairs.rejects.jsonl").read_text().splitlines()]
    assert {r["id"] for r in rejects} == {"3", "4"}
    assert any("missing.png" in r["reason"] for r in rejects)
    assert (tmp_path / "out" / "model.safetensors").exists()
