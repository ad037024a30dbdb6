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

Beyond upstream: DPO+NLL (`nll_weight`), length-normalised log-probs, and reference
log-probs precomputed for image data and cached on disk (`precompute_ref_log_probs`, which
upstream refuses for images), so that no reference model is held or run while training.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate.utils import broadcast_object_list, is_peft_model
from datasets import Dataset
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from transformers import TrainerCallback
from transformers.core_model_loading import revert_weight_conversion
from transformers.trainer_utils import get_last_checkpoint
from trl import DPOTrainer
from trl.models import prepare_deepspeed

from mmedpo.data.hf_formats import TRL_PAIR_FEATURES
from mmedpo.data.images import ImageError, open_image, resolve_image
from mmedpo.data.llava_json import read_mmedpo_json
from mmedpo.data.messages import prompt_messages
from mmedpo.records import PreferencePair, Reject, write_jsonl
from mmedpo.training import ref_cache
from mmedpo.training.dpo_config import WeightedDPOConfig, to_trl_config
from mmedpo.training.lora import load_policy, lora_config, merge_adapter
from mmedpo.training.settings import SUPPORTED_LOSS_TYPES, DPOSettings

# The columns this module adds to TRL's preference format, and the batch keys they become.
PAIR_COLUMNS = ["rejected_images", "weight", "kind"]
PAIR_BATCH_KEYS = ("weight", "is_visual")
REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
# Batch keys that are not model inputs (TRL's own list, as in DPOTrainer._compute_loss).
_NON_MODEL_KEYS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}


def pairs_to_dataset(pairs: Sequence[PreferencePair], image_roots: Sequence[Path | str]) -> Dataset:
    """Pairs in TRL's conversational vision preference format, plus MMedPO's columns.

    Columns: `prompt`, `chosen`, `rejected` (messages), `images` (the clean image),
    `rejected_images` (the rejected sequence's own image, or empty to reuse `images`),
    `weight` (the clinical weight; a missing weight counts as 1.0), `kind` and `id`.
    """
    if not pairs:
        raise ValueError("no preference pairs to train on")
    return Dataset.from_list([_pair_row(pair, image_roots) for pair in pairs], features=TRL_PAIR_FEATURES)


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
    per pair) and `is_visual` (bool, one per pair), and, when the rows carry precomputed
    reference log-probs, TRL's `ref_chosen_logps` and `ref_rejected_logps`.
    """

    collator: Callable[[list[dict[str, Any]]], dict[str, Any]]

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        examples = [dict(example) for example in examples]  # popping must not touch the caller's rows
        weights = [example.pop("weight", None) for example in examples]
        weights = [1.0 if weight is None else float(weight) for weight in weights]
        is_visual = [example.pop("kind", "text") == "visual" for example in examples]
        own_rejected = [example.pop("rejected_images", None) or [] for example in examples]
        ref_logps = {key: [example.pop(key) for example in examples] for key in REF_COLUMNS if key in examples[0]}
        chosen_images = [example["images"] if "images" in example else [example["image"]] for example in examples]
        batch = self.collator(examples)
        for key, values in ref_logps.items():
            batch[key] = torch.tensor(values, dtype=torch.float32)
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
    Both layouts work: one row per image (LLaVA's pixel_values) and the patches of all
    images in one flat tensor plus per-image sizes (Qwen2-VL's pixel_values and
    image_grid_thw). The integer tensors (grids, image sizes) must be equal, not only of
    equal shape: a flat tensor keeps its shape when two pairs swap image sizes.
    """
    processed = processor.image_processor(rejected, return_tensors="pt")
    for key, value in processed.items():
        if key not in batch:
            continue
        half = batch[key].shape[0] // 2
        expected = batch[key][half:]
        if expected.shape != value.shape or (
            not expected.is_floating_point() and not torch.equal(expected, value.to(expected.dtype))
        ):
            raise ValueError(
                f"rejected images must match their chosen images in size: {key} "
                f"{_describe(value)}, expected {_describe(expected)}"
            )
        batch[key] = torch.cat([batch[key][:half], value.to(batch[key].dtype)])


def _describe(tensor: torch.Tensor) -> str:
    """Sizes (integer tensors) by value, pixels by shape."""
    return f"of shape {tuple(tensor.shape)}" if tensor.is_floating_point() else str(tensor.tolist())


class WeightedDPOTrainer(DPOTrainer):
    """DPOTrainer with per-pair clinical weights and per-pair rejected images (MMedPO).

    Needs a `WeightedDPOConfig`. The dataset may carry `weight`, `rejected_images` and
    `kind` columns (see `pairs_to_dataset`); rows without them behave as in DPOTrainer.
    Supported losses: see `SUPPORTED_LOSS_TYPES`, one at a time.

    The reference: with `precompute_ref_log_probs`, log-probs cached on disk
    (`mmedpo.training.ref_cache`), computed in one pass with the starting model (the
    policy itself before its first step, adapters disabled under PEFT) and no reference
    model at all; else, under PEFT, the policy with its adapter disabled; else TRL's
    frozen copy.
    """

    _tag_names = ["trl", "dpo", "mmedpo"]
    _name = "MMedPO"

    def __init__(self, model, ref_model=None, args: WeightedDPOConfig | None = None, **kwargs):
        _check_supported(args)
        # TRL refuses precompute_ref_log_probs for image datasets, and without it loads a frozen copy as the
        # reference. So the flag is hidden from TRL's image check and given back (in `_validate_args`, which
        # Trainer.__init__ calls in between) before TRL decides about the copy; TRL then keeps no reference
        # model and calls `_precompute_ref_logps`, which this class implements for images.
        self._precompute_requested = args.precompute_ref_log_probs
        args.precompute_ref_log_probs = False
        try:
            super().__init__(model, ref_model, args, **kwargs)
        finally:
            args.precompute_ref_log_probs = self._precompute_requested
        self.precompute_ref_logps = self._precompute_requested
        if self.precompute_ref_logps and ref_model is None and self.ref_model is not None:
            raise RuntimeError("a reference model was loaded although its log-probs are precomputed")
        self.data_collator = _routing(self.data_collator)

    def _validate_args(self):
        self.args.precompute_ref_log_probs = self._precompute_requested
        super()._validate_args()

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # transformers 5.23 saves a checkpoint in the model's original key format (save_pretrained reverts the
        # model's key renames, e.g. LLaVA's) but resumes with a raw load_state_dict(strict=False), which then loads
        # nothing, silently. For a plain single-process model, load it under the model's own names.
        model = model if model is not None else self.model
        files = _checkpoint_files(Path(resume_from_checkpoint))
        if is_peft_model(model) or self.is_deepspeed_enabled or self.is_fsdp_enabled or not files:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        own = model.state_dict()
        own_name = {id(tensor): name for name, tensor in own.items()}
        saved_as = {name: own_name[id(t)] for name, t in revert_weight_conversion(model, dict(own)).items()}
        state = {saved_as.get(name, name): tensor for file in files for name, tensor in load_file(file).items()}
        model.load_state_dict(state, strict=True)

    def _set_signature_columns_if_needed(self):
        # Without this, Trainer drops our columns before the collator sees them.
        if self._signature_columns is None:
            super()._set_signature_columns_if_needed()
            self._signature_columns = [*self._signature_columns, *PAIR_COLUMNS, *REF_COLUMNS]

    def _precompute_ref_logps(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
        """`dataset` with its reference log-probs as columns: read from the cache, or computed once and cached."""
        settings = {
            "max_length": self.args.max_length,
            "truncation_mode": self.args.truncation_mode,
            "chat_template": getattr(self.processing_class, "chat_template", None),
            "precision": self.accelerator.mixed_precision,
        }
        # Under ZeRO-3 every rank hashes its own shard: all ranks use rank 0's file name.
        path = [ref_cache.cache_path(self.args.reference_cache_dir, self._precompute_model_hash, dataset, settings)]
        broadcast_object_list(path, from_process=0)
        path = path[0]
        if not path.exists():
            chosen, rejected = self._reference_pass(dataset, name, batch_size)
            if self.accelerator.is_main_process:
                ref_cache.save_ref_logps(path, chosen, rejected)
            self.accelerator.wait_for_everyone()
        chosen, rejected = ref_cache.load_ref_logps(path, len(dataset))
        return ref_cache.add_ref_columns(dataset, chosen, rejected)

    def _reference_pass(self, dataset: Dataset, name: str, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass of the reference over `dataset`, with each pair's rejected image (as TRL's, for images)."""
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            collate_fn=_routing(self.data_collator),
            num_workers=self.args.dataloader_num_workers,
            shuffle=False,
        )
        loader = self.accelerator.prepare(loader)
        # Before `train`, DeepSpeed has not placed the parameters yet: TRL wraps the model in an inference engine.
        if self.ref_model is None and self.is_deepspeed_enabled:
            if self._precompute_engine is None:
                self._precompute_engine = prepare_deepspeed(self.model, self.accelerator)
            model = self._precompute_engine
        else:
            model = self.ref_model or self.model
        chosen, rejected = [], []
        for batch in loader:
            batch = {key: value for key, value in batch.items() if key not in PAIR_BATCH_KEYS}
            batch_chosen, batch_rejected = self.compute_ref_log_probs(model, batch)
            batch_chosen, batch_rejected = self.accelerator.gather_for_metrics((batch_chosen, batch_rejected))
            chosen.append(batch_chosen.float().cpu())
            rejected.append(batch_rejected.float().cpu())
        return torch.cat(chosen), torch.cat(rejected)

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
        # Answer tokens of each sequence: the labelled positions, as the log-probs above count them.
        chosen_tokens, rejected_tokens = completion_mask[:, 1:].sum(dim=1).clamp(min=1).chunk(2, dim=0)
        nll = -chosen_logps / chosen_tokens  # the chosen answer's mean per-token NLL (DPO+NLL)
        if self.args.length_normalize:
            chosen_logps, ref_chosen_logps = chosen_logps / chosen_tokens, ref_chosen_logps / chosen_tokens
            rejected_logps, ref_rejected_logps = rejected_logps / rejected_tokens, ref_rejected_logps / rejected_tokens
        chosen_logratios = chosen_logps - ref_chosen_logps
        rejected_logratios = rejected_logps - ref_rejected_logps

        losses = self._pair_losses(chosen_logratios, rejected_logratios, completion_mask)
        if self.args.nll_weight:
            # Per pair, so the clinical weight scales it too and a pair of weight 0 still contributes nothing.
            losses = losses + self.args.nll_weight * nll
        weights = weights.to(losses.dtype) if self.args.pair_weighting else torch.ones_like(losses)
        loss = _reduce(losses, weights, self.args.weight_reduction)
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss

        self._log_pair_metrics(
            mode, chosen_logps, rejected_logps, chosen_logratios, rejected_logratios, losses, weights, is_visual
        )
        if self.args.nll_weight:
            self._metrics[mode]["nll/chosen"].append(self.accelerator.gather(nll.detach()).mean().item())
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


def _checkpoint_files(checkpoint: Path) -> list[Path]:
    """The safetensors weight files of a full-model checkpoint (one file or an index of shards)."""
    index = checkpoint / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [checkpoint / shard for shard in shards]
    single = checkpoint / "model.safetensors"
    return [single] if single.exists() else []


def _routing(collator) -> PairRoutingCollator:
    return collator if isinstance(collator, PairRoutingCollator) else PairRoutingCollator(collator)


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
    callbacks: list[TrainerCallback] | None = None,
) -> Path:
    """Train the model in `model_dir` on `pairs` with weighted DPO; save it and its processor to `out_dir`.

    Full fine-tuning saves the model in `out_dir`. LoRA saves the adapter in
    `out_dir/adapter` (it reloads with `PeftModel.from_pretrained` on the base) and, with
    `settings.merge_lora`, base + adapter merged in `out_dir`. A checkpoint left in
    `out_dir` by an interrupted run (`settings.save_steps`) is resumed from.
    `out_dir/train_log.json` holds the logged entries (weighted and unweighted loss,
    rewards, split by pair kind).
    """
    out_dir = Path(out_dir)
    dataset = pairs_to_dataset(pairs, image_roots)
    model = load_policy(model_dir, settings)
    trainer = WeightedDPOTrainer(
        model=model,
        args=to_trl_config(settings, out_dir),
        train_dataset=dataset,
        peft_config=lora_config(model, settings) if settings.lora else None,
        callbacks=callbacks,
    )
    # The model is loaded before the configuration exists, so under ZeRO-3 each process loads it whole and DeepSpeed
    # partitions it afterwards (as TRL does). Loading under zero.Init instead (configuration first) was tried: with
    # transformers 5.23 the saved LLaVA then has its language model under doubled keys ("language_model.model.model.").
    trainer.train(resume_from_checkpoint=get_last_checkpoint(out_dir) if out_dir.is_dir() else None)
    if settings.lora:
        trainer.save_model(str(out_dir / "adapter"))  # the adapter and the processor
        if settings.merge_lora and trainer.is_world_process_zero():
            merge_adapter(model_dir, out_dir / "adapter", out_dir)
    else:
        trainer.save_model(str(out_dir))  # the model and the processor
    if trainer.is_world_process_zero():
        (out_dir / "train_log.json").write_text(json.dumps(trainer.state.log_history, indent=2), encoding="utf-8")
    return out_dir


def train_from_mmedpo_json(
    json_path: Path | str,
    image_folder: Path | str,
    model_dir: Path | str,
    out_dir: Path | str,
    settings: DPOSettings,
) -> dict[str, Any]:
    """Train on a released MMedPO preference JSON whose image paths are relative to `image_folder`.

    Each pair's weight is its `weighted_score` (the clinical score in [0, 1]) as it is: the
    released training multiplies each loss by it (a pair without one weighs 1). Records that
    cannot be read, and pairs whose image or rejected image is missing, go to
    `out_dir/pairs.rejects.jsonl` with the reason; the rest are trained on. Returns
    {"read", "trained", "rejected", "rejects", "model"}, where read = trained + rejected.
    """
    out_dir = Path(out_dir)
    result = read_mmedpo_json(json_path)
    pairs, rejects = [], list(result.rejects)
    for pair in result.pairs:
        try:
            for image in (pair.image, pair.rejected_image):
                if image:
                    resolve_image(image, [image_folder])
        except ImageError as error:
            rejects.append(Reject(id=pair.id, source=str(json_path), reason=str(error)))
            continue
        pairs.append(pair)
    out_dir.mkdir(parents=True, exist_ok=True)
    rejects_file = out_dir / "pairs.rejects.jsonl"
    write_jsonl(rejects_file, rejects)
    if not pairs:
        raise ValueError(f"{json_path}: no usable pair ({len(rejects)} rejected, reasons in {rejects_file})")
    pairs = [pair.model_copy(update={"weight": pair.clinical_score}) for pair in pairs]
    train_weighted_dpo(Path(model_dir), pairs, [Path(image_folder)], out_dir, settings)
    return {
        "read": result.read,
        "trained": len(pairs),
        "rejected": len(rejects),
        "rejects": str(rejects_file),
        "model": str(out_dir),
    }
