"""Clinical-aware weighted multimodal DPO: TRL's DPOTrainer, extended narrowly.

MMedPO's objective (PAPER.md, "Clinical-aware preference optimisation"):

    L = - E[ w * log sigmoid( beta * ( (log pi(y_w|x_w) - log ref(y_w|x_w))
                                     - (log pi(y_l|x_l) - log ref(y_l|x_l)) ) ) ]

Upstream DPOTrainer (TRL 1.16) lacks two things this needs: a per-pair weight w, and
a rejected sequence x_l with its own image (the lesion-noised one of a visual pair).
Both travel the way TRL already routes `ref_chosen_logps`: dataset columns kept by the
signature columns -> a collator that turns them into batch tensors -> the loss. With
weighting off (or every w = 1) and no rejected images the loss, its gradient and the
logged rewards are those of upstream DPOTrainer.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset, Features, Image, List, Value
from trl import DPOTrainer

from mmedpo.data.images import ImageError, open_image
from mmedpo.models.vlm import prompt_messages
from mmedpo.records import PreferencePair
from mmedpo.training.dpo_config import SUPPORTED_LOSS_TYPES, DPOSettings, WeightedDPOConfig

# The columns this module adds to TRL's preference format, and the batch keys they become.
PAIR_COLUMNS = ["rejected_images", "weight", "kind"]
PAIR_BATCH_KEYS = ("weight", "is_visual")
# Batch keys that are not model inputs (TRL's own list, as in DPOTrainer._compute_loss).
_NON_MODEL_KEYS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}

_MESSAGES = List({"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})})
PAIR_FEATURES = Features(
    {
        "id": Value("string"),
        "prompt": _MESSAGES,
        "chosen": _MESSAGES,
        "rejected": _MESSAGES,
        "images": List(Image()),
        "rejected_images": List(Image()),
        "weight": Value("float64"),
        "kind": Value("string"),
    }
)


def pairs_to_dataset(pairs: Sequence[PreferencePair], image_roots: Sequence[Path | str]) -> Dataset:
    """Pairs in TRL's conversational vision preference format, plus MMedPO's columns.

    Columns: `prompt`, `chosen`, `rejected` (messages), `images` (the clean image),
    `rejected_images` (the rejected sequence's own image, or empty to reuse `images`),
    `weight` (the clinical weight; a missing weight counts as 1.0), `kind` and `id`.
    """
    if not pairs:
        raise ValueError("no preference pairs to train on")
    return Dataset.from_list([_pair_row(pair, image_roots) for pair in pairs], features=PAIR_FEATURES)


def _pair_row(pair: PreferencePair, image_roots: Sequence[Path | str]) -> dict[str, Any]:
    try:
        image = open_image(pair.image, image_roots)
        rejected_images = [open_image(pair.rejected_image, image_roots)] if pair.rejected_image else []
    except ImageError as error:
        raise ValueError(f"pair {pair.id}: {error}") from None
    return {
        "id": pair.id,
        "prompt": prompt_messages(pair.question),
        "chosen": prompt_messages(pair.question, pair.chosen)[1:],
        "rejected": prompt_messages(pair.question, pair.rejected)[1:],
        "images": [image],
        "rejected_images": rejected_images,
        "weight": 1.0 if pair.weight is None else pair.weight,
        "kind": pair.kind,
    }


@dataclass
class PairRoutingCollator:
    """Wraps a TRL preference collator so each pair brings its weight and rejected image.

    The wrapped collator builds the batch as upstream does ([chosen..., rejected...],
    the rejected half reusing the chosen images); the rejected half's images are then
    replaced by each pair's own rejected image. The batch gains `weight` (float, one
    per pair) and `is_visual` (bool, one per pair).
    """

    collator: Callable[[list[dict[str, Any]]], dict[str, Any]]

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        examples = [dict(example) for example in examples]  # popping must not touch the caller's rows
        weights = [example.pop("weight", None) for example in examples]
        weights = [1.0 if weight is None else float(weight) for weight in weights]
        is_visual = [example.pop("kind", "text") == "visual" for example in examples]
        own_rejected = [example.pop("rejected_images", None) or [] for example in examples]
        chosen_images = [example["images"] if "images" in example else [example["image"]] for example in examples]
        batch = self.collator(examples)
        if any(own_rejected):
            rejected = [own or chosen for own, chosen in zip(own_rejected, chosen_images)]
            _replace_rejected_images(batch, self.collator.processor, rejected)
        batch["weight"] = torch.tensor(weights, dtype=torch.float32)
        batch["is_visual"] = torch.tensor(is_visual, dtype=torch.bool)
        return batch


def _replace_rejected_images(batch: dict[str, Any], processor, rejected: list[list]) -> None:
    """Put the processed `rejected` images in the second (rejected) half of the batch's image tensors.

    The prompt text already holds one run of image tokens per image, sized for the chosen
    image; a rejected image of another size would need another run, so it is refused.
    """
    processed = processor.image_processor(rejected, return_tensors="pt")
    for key, value in processed.items():
        if key not in batch:
            continue
        half = batch[key].shape[0] // 2
        if batch[key][half:].shape != value.shape:
            raise ValueError(
                f"rejected images must match their chosen images in size: {key} of shape {tuple(value.shape)}, "
                f"expected {tuple(batch[key][half:].shape)}"
            )
        batch[key] = torch.cat([batch[key][:half], value.to(batch[key].dtype)])


class WeightedDPOTrainer(DPOTrainer):
    """DPOTrainer with per-pair clinical weights and per-pair rejected images (MMedPO).

    Needs a `WeightedDPOConfig`. The dataset may carry `weight`, `rejected_images` and
    `kind` columns (see `pairs_to_dataset`); rows without them behave as in DPOTrainer.
    Supported losses: see `SUPPORTED_LOSS_TYPES`, one at a time.
    """

    _tag_names = ["trl", "dpo", "mmedpo"]
    _name = "MMedPO"

    def __init__(self, model, ref_model=None, args: WeightedDPOConfig | None = None, **kwargs):
        _check_supported(args)
        super().__init__(model, ref_model, args, **kwargs)
        self.data_collator = PairRoutingCollator(self.data_collator)

    def _set_signature_columns_if_needed(self):
        # Without this, Trainer drops our columns before the collator sees them.
        if self._signature_columns is None:
            super()._set_signature_columns_if_needed()
            self._signature_columns = [*self._signature_columns, *PAIR_COLUMNS]

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        weights, is_visual = inputs["weight"], inputs["is_visual"]
        batch = {key: value for key, value in inputs.items() if key not in PAIR_BATCH_KEYS}
        model_kwargs = {key: value for key, value in batch.items() if key not in _NON_MODEL_KEYS}
        model_kwargs["use_cache"] = False
        if self.aux_loss_enabled:
            model_kwargs["output_router_logits"] = True

        # Log-probs of the completions, summed over tokens, as upstream: the batch is [chosen..., rejected...]
        # and the rejected half already sees its own image x_l.
        completion_mask = batch["completion_mask"]
        labels = batch["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        seq_len = completion_mask.size(1) - 1
        chosen_logps, rejected_logps = outputs.log_probs[:, -seq_len:].sum(dim=1).chunk(2, dim=0)
        if self.precompute_ref_logps:
            ref_chosen_logps, ref_rejected_logps = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        else:
            reference = self.ref_model if self.ref_model is not None else self.model  # PEFT: adapters disabled
            ref_chosen_logps, ref_rejected_logps = self.compute_ref_log_probs(reference, batch)
        chosen_logratios = chosen_logps - ref_chosen_logps
        rejected_logratios = rejected_logps - ref_rejected_logps

        losses = self._pair_losses(chosen_logratios, rejected_logratios, completion_mask)
        weights = weights.to(losses.dtype) if self.args.pair_weighting else torch.ones_like(losses)
        loss = _reduce(losses, weights, self.args.weight_reduction)
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss

        self._log_pair_metrics(
            mode, chosen_logps, rejected_logps, chosen_logratios, rejected_logratios, losses, weights, is_visual
        )
        if return_outputs:
            # Like upstream: the fused head builds no logits, so prediction_step gets them from a plain forward.
            with torch.no_grad():
                outputs = model(**{k: v for k, v in model_kwargs.items() if k != "output_router_logits"})
            return loss, outputs
        return loss

    def _pair_losses(self, chosen_logratios, rejected_logratios, completion_mask) -> torch.Tensor:
        """Each pair's unweighted preference loss; the same formulas as upstream DPOTrainer."""
        loss_type = self.loss_types[0]
        beta = self.beta
        if loss_type == "sigmoid":
            return -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
        if loss_type == "hinge":
            return torch.relu(1 - beta * (chosen_logratios - rejected_logratios))
        chosen_mask, rejected_mask = completion_mask.chunk(2, dim=0)
        chosen_avg = chosen_logratios / chosen_mask.sum(dim=1).clamp(min=1.0)
        rejected_avg = rejected_logratios / rejected_mask.sum(dim=1).clamp(min=1.0)
        if loss_type == "ipo":
            return (chosen_avg - rejected_avg - 1 / (2 * beta)) ** 2
        if loss_type == "sigmoid_norm":
            return -F.logsigmoid(beta * (chosen_avg - rejected_avg))
        raise ValueError(f"Unknown loss type: {loss_type}. Should be one of {list(SUPPORTED_LOSS_TYPES)}")

    def _log_pair_metrics(
        self, mode, chosen_logps, rejected_logps, chosen_logratios, rejected_logratios, losses, weights, is_visual
    ) -> None:
        """Upstream's reward metrics, plus the weighted/unweighted loss and the same split by pair kind."""
        per_pair = torch.stack(
            [
                chosen_logps.detach(),
                rejected_logps.detach(),
                self.beta * chosen_logratios.detach(),
                self.beta * rejected_logratios.detach(),
                losses.detach(),
                weights.detach(),
                is_visual.to(losses.dtype),
            ],
            dim=1,
        )
        chosen_lp, rejected_lp, chosen_r, rejected_r, loss, weight, visual = self.accelerator.gather(per_pair).T
        metrics = self._metrics[mode]
        metrics["logps/chosen"].append(chosen_lp.mean().item())
        metrics["logps/rejected"].append(rejected_lp.mean().item())
        metrics["rewards/chosen"].append(chosen_r.mean().item())
        metrics["rewards/rejected"].append(rejected_r.mean().item())
        metrics["rewards/accuracies"].append((chosen_r > rejected_r).float().mean().item())
        metrics["rewards/margins"].append((chosen_r - rejected_r).mean().item())
        metrics["loss/unweighted"].append(loss.mean().item())
        metrics["loss/weighted"].append(_reduce(loss, weight, self.args.weight_reduction).item())
        metrics["weight/mean"].append(weight.mean().item())
        for kind, mask in (("text", visual == 0), ("visual", visual == 1)):
            # Only batches that hold this kind add an entry, so the logged value averages those batches.
            if mask.any():
                metrics[f"rewards/accuracies/{kind}"].append((chosen_r[mask] > rejected_r[mask]).float().mean().item())
                metrics[f"rewards/margins/{kind}"].append((chosen_r[mask] - rejected_r[mask]).mean().item())
                metrics[f"loss/unweighted/{kind}"].append(loss[mask].mean().item())


def _reduce(losses: torch.Tensor, weights: torch.Tensor, reduction: str) -> torch.Tensor:
    """One number from per-pair losses and weights: 'mean' = mean(w*l), 'normalized' = sum(w*l)/sum(w)."""
    if reduction == "mean":
        return (weights * losses).mean()
    if reduction == "normalized":
        # A batch whose weights are all 0 gives 0 (and no gradient) rather than 0/0.
        return (weights * losses).sum() / weights.sum().clamp(min=torch.finfo(weights.dtype).tiny)
    raise ValueError(f"Unknown weight reduction: {reduction}. Should be one of ['mean', 'normalized']")


def _check_supported(args: WeightedDPOConfig | None) -> None:
    """Refuse, before any model is loaded, the DPOConfig options this trainer does not implement."""
    if not isinstance(args, WeightedDPOConfig):
        raise TypeError(f"WeightedDPOTrainer needs a WeightedDPOConfig, got {type(args).__name__}")
    if len(args.loss_type) != 1 or args.loss_type[0] not in SUPPORTED_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {list(SUPPORTED_LOSS_TYPES)}, got {args.loss_type}")
    unsupported = {
        "ld_alpha": args.ld_alpha is not None,
        "f_divergence_type": args.f_divergence_type != "reverse_kl",
        "use_weighting": args.use_weighting,
    }
    if any(unsupported.values()):
        names = ", ".join(name for name, used in unsupported.items() if used)
        raise ValueError(f"WeightedDPOTrainer does not implement {names}; leave them at their defaults")


def train_weighted_dpo(
    model_dir: Path,
    pairs: list[PreferencePair],
    image_roots: list[Path],
    out_dir: Path,
    settings: DPOSettings,
) -> Path:
    """Train the model in `model_dir` on `pairs` with weighted DPO; save it and its processor to `out_dir`.

    The reference is a frozen copy of the starting model. `out_dir/train_log.json` holds
    the logged entries (weighted and unweighted loss, rewards, split by pair kind).
    """
    out_dir = Path(out_dir)
    dataset = pairs_to_dataset(pairs, image_roots)
    trainer = WeightedDPOTrainer(model=str(model_dir), args=settings.to_config(out_dir), train_dataset=dataset)
    trainer.train()
    trainer.save_model(str(out_dir))  # the model and the processor
    if trainer.is_world_process_zero():
        (out_dir / "train_log.json").write_text(json.dumps(trainer.state.log_history, indent=2), encoding="utf-8")
    return out_dir
