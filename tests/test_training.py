"""Weighted multimodal DPO: parity with upstream TRL, weights, rejected images, a short run."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor
from trl import DPOConfig, DPOTrainer

from mmedpo.data.images import open_image
from mmedpo.records import PreferencePair
from mmedpo.training.dpo import WeightedDPOTrainer, _reduce, train_weighted_dpo
from mmedpo.training.dpo_config import WeightedDPOConfig, to_trl_config
from mmedpo.training.pairs import PAIR_BATCH_KEYS, pairs_to_dataset
from mmedpo.training.settings import DPOSettings

QUESTIONS = ["Is there a nodule in the left lung?", "Is the heart enlarged?", "Which side is the effusion on?"]
ANSWERS = [("Yes", "No"), ("No", "Yes"), ("left", "right")]


@pytest.fixture
def image_root(tmp_path, tiny_images):
    for name, image in zip(["dark", "bright", "left", "right"], tiny_images):
        image.save(tmp_path / f"{name}.png")
    return tmp_path


def make_pair(index: int, weight: float | None = None, rejected_image: str | None = None, image: str = "left.png"):
    chosen, rejected = ANSWERS[index % 3]
    return PreferencePair(
        id=f"p{index}",
        sample_id=f"s{index}",
        task="vqa",
        kind="visual" if rejected_image else "text",
        image=image,
        rejected_image=rejected_image,
        question=QUESTIONS[index % 3],
        chosen=chosen,
        rejected=rejected,
        weight=weight,
    )


def make_trainer(model_dir, dataset, out_dir, upstream=False, **overrides):
    common = dict(output_dir=str(out_dir), report_to="none", bf16=False, activation_checkpointing=False, **overrides)
    if upstream:
        return DPOTrainer(model=str(model_dir), args=DPOConfig(**common), train_dataset=dataset)
    return WeightedDPOTrainer(model=str(model_dir), args=WeightedDPOConfig(**common), train_dataset=dataset)


def perturb(model, seed=0, scale=0.2):
    """Move the policy away from the reference (the same way for every model) so log-ratios are not 0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))


def loss_and_grads(trainer, rows):
    """The trainer's loss on `rows` (collated by its own collator) and every parameter's gradient."""
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, trainer.data_collator(rows))
    loss.backward()
    grads = {
        name: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
        for name, p in trainer.model.named_parameters()
    }
    return loss.detach(), grads


def upstream_rows(dataset):
    return [{key: row[key] for key in ("prompt", "chosen", "rejected", "images")} for row in dataset]


def ref_logps(trainer, rows):
    """(chosen, rejected) reference log-probs of `rows` through the trainer's collator."""
    batch = trainer.data_collator(rows)
    batch = {key: value for key, value in batch.items() if key not in PAIR_BATCH_KEYS}
    return trainer.compute_ref_log_probs(trainer.ref_model, batch)


def test_reduce_by_hand():
    losses = torch.tensor([1.0, 2.0, 3.0])
    weights = torch.tensor([0.0, 1.0, 3.0])
    # w*l = [0, 2, 9]: mean = 11/3, normalized = 11/(0+1+3)
    assert _reduce(losses, weights, "mean").item() == pytest.approx(11 / 3)
    assert _reduce(losses, weights, "normalized").item() == pytest.approx(11 / 4)
    assert _reduce(losses, torch.zeros(3), "normalized").item() == 0.0


def test_pairs_to_dataset_columns(image_root):
    pairs = [make_pair(0), make_pair(1, weight=0.25, rejected_image="right.png")]
    dataset = pairs_to_dataset(pairs, [image_root])
    text, visual = dataset[0], dataset[1]
    assert text["weight"] == 1.0 and visual["weight"] == 0.25
    assert text["kind"] == "text" and visual["kind"] == "visual"
    assert text["rejected_images"] == [] and len(visual["rejected_images"]) == 1
    assert visual["rejected_images"][0].getpixel((36, 24)) == (240, 240, 240)  # the right-blob image
    assert visual["images"][0].getpixel((36, 24)) == (20, 20, 20)
    assert text["prompt"][0]["role"] == "user"
    assert text["prompt"][0]["content"][1]["text"] == QUESTIONS[0]
    assert text["chosen"][0]["content"][0]["text"] == "Yes"
    assert text["rejected"][0]["content"][0]["text"] == "No"


def test_pairs_to_dataset_names_the_bad_pair(image_root):
    with pytest.raises(ValueError, match="pair p1: image 'missing.png' not found"):
        pairs_to_dataset([make_pair(0), make_pair(1, rejected_image="missing.png")], [image_root])
    with pytest.raises(ValueError, match="no preference pairs"):
        pairs_to_dataset([], [image_root])


def test_settings_map_to_trl_config(tmp_path):
    settings = DPOSettings(
        beta=0.2, weight_reduction="normalized", pair_weighting=False, per_device_train_batch_size=2, max_length=99
    )
    config = to_trl_config(settings, tmp_path)
    assert (config.beta, config.loss_type, config.weight_reduction, config.pair_weighting) == (
        0.2,
        ["sigmoid"],
        "normalized",
        False,
    )
    assert (config.per_device_train_batch_size, config.max_length, config.learning_rate) == (2, 99, 5e-4)
    assert all(field.description for field in DPOSettings.model_fields.values())
    with pytest.raises(ValueError):
        DPOSettings(weight_reduction="sum")


def test_unsupported_options_are_refused_before_loading(tmp_path):
    def config(cls=WeightedDPOConfig, **overrides):
        return cls(str(tmp_path), bf16=False, report_to="none", **overrides)

    with pytest.raises(ValueError, match="loss_type must be one of"):
        WeightedDPOTrainer(model="not-loaded", args=config(loss_type="aot"))
    with pytest.raises(ValueError, match="use_weighting"):
        WeightedDPOTrainer(model="not-loaded", args=config(use_weighting=True))
    with pytest.raises(TypeError, match="WeightedDPOConfig"):
        WeightedDPOTrainer(model="not-loaded", args=config(DPOConfig))
    with pytest.raises(ValueError, match="weight_reduction"):
        config(weight_reduction="sum")


@pytest.mark.parametrize(
    "loss_type, weights, pair_weighting",
    [("sigmoid", (1.0, None, 1.0), True), ("ipo", (1.0, None, 1.0), True), ("sigmoid", (0.3, None, 2.0), False)],
    ids=["sigmoid-unit-weights", "ipo-unit-weights", "sigmoid-weighting-off"],
)
def test_unit_weights_equal_upstream_trl(tiny_vlm_dir, image_root, tmp_path, loss_type, weights, pair_weighting):
    # Weights 1 and None, or any weights with pair_weighting off, no rejected images: the same batch must give
    # upstream's loss and gradients (plain DPO).
    dataset = pairs_to_dataset([make_pair(i, weight=w) for i, w in enumerate(weights)], [image_root])
    ours = make_trainer(tiny_vlm_dir, dataset, tmp_path / "ours", loss_type=loss_type, pair_weighting=pair_weighting)
    theirs = make_trainer(tiny_vlm_dir, dataset, tmp_path / "theirs", upstream=True, loss_type=loss_type)
    perturb(ours.model)
    perturb(theirs.model)

    our_loss, our_grads = loss_and_grads(ours, list(dataset))
    their_loss, their_grads = loss_and_grads(theirs, upstream_rows(dataset))

    assert abs(our_loss.item() - math.log(2)) > 1e-3  # the policy really differs from the reference
    torch.testing.assert_close(our_loss, their_loss, atol=1e-6, rtol=0)
    assert any(grad.abs().max() > 1e-4 for grad in their_grads.values())
    for name, grad in their_grads.items():
        torch.testing.assert_close(our_grads[name], grad, atol=1e-6, rtol=0, msg=name)
    mode = "train" if ours.model.training else "eval"
    for key in ("rewards/chosen", "rewards/margins", "rewards/accuracies", "logps/rejected"):
        # What `log` reports: the mean of what was added (ours adds each pair when evaluating, upstream a batch mean).
        logged = [sum(values) / len(values) for values in (ours._metrics[mode][key], theirs._metrics[mode][key])]
        assert logged[0] == pytest.approx(logged[1], rel=1e-6, abs=1e-6), key  # float32 sums in another order


def test_weights_scale_the_gradient(tiny_vlm_dir, image_root, tmp_path):
    dataset = pairs_to_dataset([make_pair(0)], [image_root])
    trainer = make_trainer(tiny_vlm_dir, dataset, tmp_path)
    perturb(trainer.model)
    row = dict(dataset[0])

    loss_1, grads_1 = loss_and_grads(trainer, [{**row, "weight": 1.0}])
    loss_0, grads_0 = loss_and_grads(trainer, [{**row, "weight": 0.0}])
    loss_2, grads_2 = loss_and_grads(trainer, [{**row, "weight": 2.0}])

    assert loss_0.item() == 0.0
    assert all(torch.count_nonzero(grad) == 0 for grad in grads_0.values())
    torch.testing.assert_close(loss_2, 2 * loss_1)
    assert any(grad.abs().max() > 1e-4 for grad in grads_1.values())
    for name, grad in grads_1.items():
        torch.testing.assert_close(grads_2[name], 2 * grad, atol=1e-7, rtol=1e-5, msg=name)


def test_each_weight_goes_to_its_own_pair(tiny_vlm_dir, image_root, tmp_path):
    dataset = pairs_to_dataset([make_pair(0, weight=1.0), make_pair(1, weight=0.0)], [image_root])
    trainer = make_trainer(tiny_vlm_dir, dataset, tmp_path)
    perturb(trainer.model)
    first = dict(dataset[0])

    loss_both, grads_both = loss_and_grads(trainer, list(dataset))  # mean over 2 pairs, the second weighted 0
    loss_first, grads_first = loss_and_grads(trainer, [first])

    torch.testing.assert_close(loss_both, loss_first / 2, atol=1e-6, rtol=1e-5)
    for name, grad in grads_first.items():
        torch.testing.assert_close(grads_both[name], grad / 2, atol=1e-6, rtol=1e-4, msg=name)

    # "normalized" divides by the weight sum (1), so the zero-weighted pair leaves pair 0's loss whole.
    trainer.args.weight_reduction = "normalized"
    loss_normalized, _ = loss_and_grads(trainer, list(dataset))
    torch.testing.assert_close(loss_normalized, loss_first, atol=1e-6, rtol=1e-5)


def test_rejected_image_changes_only_rejected_logps(tiny_vlm_dir, image_root, tmp_path):
    # Same prompt, answers and chosen image (left.png); only the rejected image differs.
    pairs = [make_pair(0, rejected_image="dark.png"), make_pair(0, rejected_image="bright.png"), make_pair(0)]
    dataset = pairs_to_dataset(pairs, [image_root])
    trainer = make_trainer(tiny_vlm_dir, dataset, tmp_path)

    chosen_dark, rejected_dark = ref_logps(trainer, [dataset[0]])
    chosen_bright, rejected_bright = ref_logps(trainer, [dataset[1]])
    chosen_same, rejected_same = ref_logps(trainer, [dataset[2]])

    torch.testing.assert_close(chosen_dark, chosen_bright, atol=1e-6, rtol=0)
    torch.testing.assert_close(chosen_dark, chosen_same, atol=1e-6, rtol=0)
    assert abs(rejected_dark.item() - rejected_bright.item()) > 1e-2
    assert abs(rejected_bright.item() - rejected_same.item()) > 1e-2


def test_batch_routes_rejected_images(tiny_vlm_dir, image_root, tmp_path):
    # A visual pair next to a text pair: only the visual pair's rejected row gets another image.
    pairs = [make_pair(0, rejected_image="right.png", weight=0.5), make_pair(1)]
    dataset = pairs_to_dataset(pairs, [image_root])
    trainer = make_trainer(tiny_vlm_dir, dataset, tmp_path)
    processor = trainer.processing_class
    batch = trainer.data_collator(list(dataset))

    def pixels(name):
        return processor.image_processor([[open_image(name, [image_root])]], return_tensors="pt")["pixel_values"][0]

    rows = batch["pixel_values"]  # [chosen 0, chosen 1, rejected 0, rejected 1]
    assert torch.equal(rows[0], pixels("left.png")) and torch.equal(rows[1], pixels("left.png"))
    assert torch.equal(rows[2], pixels("right.png")) and torch.equal(rows[3], pixels("left.png"))
    assert batch["weight"].tolist() == [0.5, 1.0]
    assert batch["is_visual"].tolist() == [True, False]

    # Without rejected images the batch is exactly upstream's.
    text_only = pairs_to_dataset([make_pair(0), make_pair(1)], [image_root])
    ours = trainer.data_collator(list(text_only))
    theirs = trainer.data_collator.collator(upstream_rows(text_only))
    assert set(ours) - set(theirs) == set(PAIR_BATCH_KEYS)
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs)


def test_train_weighted_dpo_updates_and_saves(tiny_vlm_dir, image_root, tmp_path):
    pairs = [make_pair(i, weight=0.25 * (i % 4), rejected_image="right.png" if i % 2 else None) for i in range(8)]
    out = train_weighted_dpo(
        tiny_vlm_dir,
        pairs,
        [image_root],
        tmp_path / "model",
        DPOSettings(per_device_train_batch_size=4, logging_steps=1),
    )

    assert out == tmp_path / "model"
    before = load_file(tiny_vlm_dir / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[key], after[key]) for key in before)
    model = AutoModelForImageTextToText.from_pretrained(out, local_files_only=True)
    processor = AutoProcessor.from_pretrained(out, local_files_only=True)
    assert model.config.model_type == "llava" and processor.tokenizer.pad_token == "<pad>"

    log = json.loads((out / "train_log.json").read_text())["log_history"]
    steps = [entry for entry in log if "loss/weighted" in entry]
    assert len(steps) == 2  # 8 pairs / batch 4, one entry per step
    # Weights 0, .25, .5, .75 per batch of 4: mean w = 0.375, and at step 1 policy = reference, every loss = log 2.
    assert steps[0]["weight/mean"] == pytest.approx(0.375)
    assert steps[0]["loss/unweighted"] == pytest.approx(math.log(2), abs=1e-6)
    assert steps[0]["loss/weighted"] == pytest.approx(0.375 * math.log(2), abs=1e-6)
    assert "rewards/accuracies/visual" in steps[0] and "rewards/margins/text" in steps[0]


def test_a_labelled_training_logs_short_lines_that_name_it(tiny_vlm_dir, image_root, tmp_path, capsys):
    pairs = [make_pair(i) for i in range(8)]
    settings = DPOSettings(per_device_train_batch_size=4, logging_steps=1)
    train_weighted_dpo(tiny_vlm_dir, pairs, [image_root], tmp_path / "model", settings, log_label="seed-3 mmedpo")
    lines = capsys.readouterr().out.splitlines()
    log = json.loads((tmp_path / "model" / "train_log.json").read_text())["log_history"]
    first = next(entry for entry in log if "loss" in entry)
    assert lines[0] == (
        f"seed-3 mmedpo step 1/2: loss {first['loss']:.4g}, rewards/accuracies {first['rewards/accuracies']:.4g}, "
        f"rewards/margins {first['rewards/margins']:.4g}"
    )
    assert lines[1].startswith("seed-3 mmedpo step 2/2: loss ")
    assert lines[2].startswith("seed-3 mmedpo step 2/2: train_loss")
    assert len(lines) == 3 and not any("{" in line for line in lines)  # no unlabelled dict


def test_each_image_is_encoded_once_and_every_row_gets_its_own(tmp_path, monkeypatch):
    from PIL import Image

    from helpers import make_pair
    from mmedpo.training import pairs as pairs_module

    for name, shade in (("a.png", 40), ("b.png", 200), ("noised_a.png", 120)):
        Image.new("RGB", (16, 16), (shade, shade, shade)).save(tmp_path / name)
    opened = []
    real_open = pairs_module.open_image

    def counting_open(name, roots):
        opened.append(name)
        return real_open(name, roots)

    monkeypatch.setattr(pairs_module, "open_image", counting_open)
    pairs = [make_pair(i, image="a.png" if i % 2 else "b.png") for i in range(6)]
    pairs.append(make_pair(6, image="a.png", kind="visual", rejected_image="noised_a.png"))
    dataset = pairs_to_dataset(pairs, [tmp_path])
    assert sorted(opened) == ["a.png", "b.png", "noised_a.png"]  # 7 pairs, 8 images, 3 distinct
    shades = [row["images"][0].getpixel((0, 0))[0] for row in dataset]
    assert shades == [200, 40, 200, 40, 200, 40, 40]
    assert [row["rejected_images"][0].getpixel((0, 0))[0] for row in dataset if row["rejected_images"]] == [120]
