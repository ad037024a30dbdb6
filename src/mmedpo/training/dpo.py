"""Clinical-aware weighted multimodal DPO: TRL's DPOTrainer, extended narrowly.

MMedPO's objective (PAPER.md, "Clinical-aware preference optimisation"):

    L = - E[ w * log sigmoid( beta * ( (log pi(y_w|x_w) - log ref(y_w|x_w))
                                     - (log pi(y_l|x_l) - log ref(y_l|x_l)) ) ) ]

Upstream DPOTrainer (TRL 1.16) lacks two things this needs: a per-pair weight w, and
a rejected sequence x_l with its own image (the lesion-noised one of a visual pair).
Both travel the way TRL already routes `ref_chosen_logps`: dataset columns kept by the
signature columns -> a collator that turns them into batch tensors -> the loss
(`mmedpo.training.pairs`; where that replaces TRL's private methods, and why:
`mmedpo.training.trl_overrides`). With weighting off (or every w = 1) and no rejected
images the loss, its gradient and the logged rewards are those of upstream DPOTrainer.

Beyond upstream: DPO+NLL (`nll_weight`; the clinical weight scales the NLL term only with
`nll_scaled_by_weight`), length-normalised log-probs, and reference log-probs precomputed
for image data and cached on disk (`precompute_ref_log_probs`, which upstream refuses for
images), so that no reference model is held or run while training.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PrinterCallback, ProgressCallback, TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from mmedpo import __version__
from mmedpo.data.convert import usable_pairs
from mmedpo.data.llava_json import read_mmedpo_json
from mmedpo.records import PreferencePair, write_jsonl
from mmedpo.training.dpo_config import WeightedDPOConfig, to_trl_config
from mmedpo.training.lora import load_policy, lora_config, merge_adapter
from mmedpo.training.model_card import base_model_name, hub_folder, push_model, write_model_card
from mmedpo.training.pairs import PAIR_BATCH_KEYS, pairs_to_dataset
from mmedpo.training.settings import SUPPORTED_LOSS_TYPES, DPOSettings
from mmedpo.training.trl_overrides import TRLOverrides

log = logging.getLogger(__name__)
# Batch keys that are not model inputs (TRL's own list, as in DPOTrainer._compute_loss).
_NON_MODEL_KEYS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}


class WeightedDPOTrainer(TRLOverrides):
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
        super().__init__(model, ref_model, args, **kwargs)

    def preference_loss(self, model, inputs, return_outputs):
        """The weighted loss of one micro-batch (docs/method.md), with upstream's metrics and ours."""
        mode = "train" if self.model.training else "eval"
        weights, is_visual = inputs["weight"], inputs["is_visual"]
        batch = {key: value for key, value in inputs.items() if key not in PAIR_BATCH_KEYS}
        model_kwargs = {key: value for key, value in batch.items() if key not in _NON_MODEL_KEYS}
        model_kwargs["use_cache"] = False
        if self.aux_loss_enabled:
            model_kwargs["output_router_logits"] = True

        # The reference first (no gradient): its forward's transient memory is freed before the policy's
        # activations, kept for the backward pass, build up (upstream runs it after, on top of them).
        if self.precompute_ref_logps:
            ref_chosen_logps, ref_rejected_logps = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        else:
            reference = self.ref_model if self.ref_model is not None else self.model  # PEFT: adapters disabled
            ref_chosen_logps, ref_rejected_logps = self.compute_ref_log_probs(reference, batch)
        # Log-probs of the completions, summed over tokens, as upstream: the batch is [chosen..., rejected...]
        # and the rejected half already sees its own image x_l.
        completion_mask = batch["completion_mask"]
        labels = batch["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        seq_len = completion_mask.size(1) - 1
        chosen_logps, rejected_logps = outputs.log_probs[:, -seq_len:].sum(dim=1).chunk(2, dim=0)
        # Answer tokens of each sequence: the labelled positions, as the log-probs above count them.
        chosen_tokens, rejected_tokens = completion_mask[:, 1:].sum(dim=1).clamp(min=1).chunk(2, dim=0)
        nll = -chosen_logps / chosen_tokens  # the chosen answer's mean per-token NLL (DPO+NLL)
        if self.args.length_normalize:
            chosen_logps, ref_chosen_logps = chosen_logps / chosen_tokens, ref_chosen_logps / chosen_tokens
            rejected_logps, ref_rejected_logps = rejected_logps / rejected_tokens, ref_rejected_logps / rejected_tokens
        chosen_logratios = chosen_logps - ref_chosen_logps
        rejected_logratios = rejected_logps - ref_rejected_logps

        losses = self._pair_losses(chosen_logratios, rejected_logratios, completion_mask, nll)
        weights = weights.to(losses.dtype) if self.args.pair_weighting else torch.ones_like(losses)
        loss = objective(
            losses, nll, weights, self.args.nll_weight, self.args.nll_scaled_by_weight, self.args.weight_reduction
        )
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

    def _pair_losses(self, chosen_logratios, rejected_logratios, completion_mask, nll) -> torch.Tensor:
        """Each pair's unweighted loss; the same formulas as upstream DPOTrainer, but "sft" per pair.

        Upstream's "sft" averages over every chosen token of the batch; ours is each pair's mean per-token NLL
        of its chosen answer, so the supervised control is exactly the NLL term of DPO+NLL on its own.
        """
        loss_type = self.loss_types[0]
        beta = self.beta
        if loss_type == "sft":
            return nll
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
        # Held out, across processes: without the repeats that even out the last batch, so shares count each pair once.
        gather = self.accelerator.gather_for_metrics if mode == "eval" else self.accelerator.gather
        chosen_lp, rejected_lp, chosen_r, rejected_r, loss, weight, visual = gather(per_pair).T
        metrics = self._metrics[mode]

        def add(name: str, values: torch.Tensor) -> None:
            # `log` averages what was added. In training that is upstream's mean of batch means; held out, every
            # pair is added, so the figures are shares of pairs and a short last batch weighs what its pairs weigh.
            if mode == "eval":
                metrics[name].extend(values.tolist())
            else:
                metrics[name].append(values.mean().item())

        add("logps/chosen", chosen_lp)
        add("logps/rejected", rejected_lp)
        add("rewards/chosen", chosen_r)
        add("rewards/rejected", rejected_r)
        add("rewards/accuracies", (chosen_r > rejected_r).float())
        add("rewards/margins", chosen_r - rejected_r)
        add("loss/unweighted", loss)
        metrics["loss/weighted"].append(_reduce(loss, weight, self.args.weight_reduction).item())
        add("weight/mean", weight)
        for kind, mask in (("text", visual == 0), ("visual", visual == 1)):
            # Only batches that hold this kind add an entry, so in training the logged value averages those.
            if mask.any():
                add(f"rewards/accuracies/{kind}", (chosen_r[mask] > rejected_r[mask]).float())
                add(f"rewards/margins/{kind}", chosen_r[mask] - rejected_r[mask])
                add(f"loss/unweighted/{kind}", loss[mask])


def objective(
    losses: torch.Tensor,
    nll: torch.Tensor,
    weights: torch.Tensor,
    nll_weight: float,
    nll_scaled_by_weight: bool,
    reduction: str,
) -> torch.Tensor:
    """The micro-batch loss from per-pair preference losses, NLLs and clinical weights (docs/method.md).

    Without NLL (the paper's loss): reduce(w, l). With `nll_weight` = c, the NLL term c * nll is added per pair:
    scaled by the weight, reduce(w, l + c * nll); or not (the default), reduce(w, l) + c * mean(nll).
    """
    if not nll_weight:
        return _reduce(losses, weights, reduction)
    if nll_scaled_by_weight:
        return _reduce(losses + nll_weight * nll, weights, reduction)
    return _reduce(losses, weights, reduction) + nll_weight * nll.mean()


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
        "loss_weights": args.loss_weights is not None,
    }
    if any(unsupported.values()):
        names = ", ".join(name for name, used in unsupported.items() if used)
        raise ValueError(f"WeightedDPOTrainer does not implement {names}; leave them at their defaults")


class LabelledLogLines(TrainerCallback):
    """Each logged entry as one line: the label, the step and the main figures (the rest: train_log.json)."""

    SHOWN = ("loss", "rewards/accuracies", "rewards/margins", "eval_loss", "eval_rewards/accuracies", "train_loss")

    def __init__(self, label: str):
        self.label = label

    def on_log(self, args, state, control, logs=None, **kwargs):
        figures = [f"{name} {logs[name]:.4g}" for name in self.SHOWN if isinstance((logs or {}).get(name), float)]
        if state.is_world_process_zero and figures:
            print(f"{self.label} step {state.global_step}/{state.max_steps}: {', '.join(figures)}", flush=True)


def train_weighted_dpo(
    model_dir: Path,
    pairs: list[PreferencePair],
    image_roots: list[Path],
    out_dir: Path,
    settings: DPOSettings,
    callbacks: list[TrainerCallback] | None = None,
    heldout_pairs: list[PreferencePair] | None = None,
    data_description: str | None = None,
    log_label: str | None = None,
) -> Path:
    """Train the model in `model_dir` on `pairs` with weighted DPO; save it and its processor to `out_dir`.

    The Trainer shows a progress bar and prints each logged entry as a dict; with
    `log_label` there is no bar and each entry is one short line starting with the
    label (`LabelledLogLines`), for output that mixes with other runs' (a study's
    seeds side by side). Every entry is in train_log.json either way.

    With `heldout_pairs` (never trained on), the trained policy is evaluated on them
    against the reference once training ends; train_log.json's "heldout" holds their
    reward accuracy and margin (overall and by pair kind) and the loss.

    Full fine-tuning saves the model in `out_dir`. LoRA saves the adapter in
    `out_dir/adapter` (it reloads with `PeftModel.from_pretrained` on the base) and, with
    `settings.merge_lora`, base + adapter merged in `out_dir`. A complete checkpoint left in
    `out_dir` by an interrupted run (`settings.save_steps`) is resumed from; one that a kill
    left half-written is removed. Once all steps are done no checkpoint is kept. `out_dir/train_log.json`
    holds the optimiser steps, the pairs (and by kind), the epochs (past 1 when `max_steps`
    cycles through the pairs), the base, the settings, `data_description` (where the pairs came
    from) and every logged entry (`log_history`: weighted and unweighted loss, rewards, split by
    pair kind). The model (and the adapter) gets a model card from it (`training.model_card`);
    with `settings.push_to_hub` the folder is then uploaded to `settings.hub_model_id`.
    """
    out_dir = Path(out_dir)
    dataset = pairs_to_dataset(pairs, image_roots)
    model = load_policy(model_dir, settings)
    trainer = WeightedDPOTrainer(
        model=model,
        args=to_trl_config(settings, out_dir),
        train_dataset=dataset,
        eval_dataset=pairs_to_dataset(heldout_pairs, image_roots) if heldout_pairs else None,
        peft_config=lora_config(model, settings) if settings.use_peft else None,
        callbacks=callbacks,
    )
    if log_label is not None:
        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(LabelledLogLines(log_label))
    # The model is loaded before the configuration exists, so under ZeRO-3 each process loads it whole and DeepSpeed
    # partitions it afterwards (as TRL does). Loading under zero.Init instead (configuration first) was tried: with
    # transformers 5.23 the saved LLaVA then has its language model under doubled keys ("language_model.model.model.").
    resume = last_complete_checkpoint(out_dir, remove_incomplete=trainer.is_world_process_zero())
    trainer.train(resume_from_checkpoint=resume)
    heldout = _heldout_metrics(trainer, len(heldout_pairs)) if heldout_pairs else None
    if settings.use_peft:
        trainer.save_model(str(out_dir / "adapter"))  # the adapter and the processor
        if settings.merge_lora and trainer.is_world_process_zero():
            merge_adapter(model_dir, out_dir / "adapter", out_dir)
    else:
        trainer.save_model(str(out_dir))  # the model and the processor
    if trainer.is_world_process_zero():
        state = trainer.state
        summary = {
            "optimizer_steps": state.global_step,
            "pairs": len(dataset),
            "pairs_by_kind": dict(Counter(pair.kind for pair in pairs)),
            "epochs": state.epoch,
            "heldout": heldout,
            "base_model": base_model_name(model_dir, out_dir),
            "data": data_description,
            "settings": settings.model_dump(mode="json"),
            "mmedpo_version": __version__,
            "log_history": state.log_history,
        }
        (out_dir / "train_log.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        write_model_card(out_dir)
        if settings.push_to_hub:
            folder = hub_folder(out_dir)
            log.info("pushed %s to %s", folder, push_model(folder, settings.hub_model_id))
        if state.global_step >= state.max_steps:  # finished (not stopped early): checkpoints were only for resuming
            for checkpoint in _checkpoints(out_dir):
                shutil.rmtree(checkpoint)
    return out_dir


def _heldout_metrics(trainer: WeightedDPOTrainer, pairs: int) -> dict:
    """Reward accuracy and margin of the trained policy on the held-out pairs (shares and means over pairs)."""
    trainer.evaluate()
    logged = trainer.state.log_history[-1]  # evaluate() logs our metrics with the eval_ prefix
    names = {
        "eval_rewards/accuracies": "reward_accuracy",
        "eval_rewards/margins": "reward_margin",
        "eval_rewards/accuracies/text": "reward_accuracy_text",
        "eval_rewards/accuracies/visual": "reward_accuracy_visual",
        "eval_loss": "loss",
    }
    return {"pairs": pairs, **{ours: logged[theirs] for theirs, ours in names.items() if theirs in logged}}


def last_complete_checkpoint(out_dir: Path, remove_incomplete: bool = False) -> str | None:
    """The newest checkpoint in `out_dir` that was written to the end, or None.

    Trainer writes a checkpoint's trainer state last, so a checkpoint without a readable one
    was cut short (a kill during the save leaves e.g. a 0-byte optimizer.pt): it is skipped,
    and removed when `remove_incomplete` (the main process), so that no later run trips on it.
    """
    for checkpoint in sorted(_checkpoints(out_dir), key=lambda path: int(path.name.rsplit("-", 1)[1]), reverse=True):
        try:
            json.loads((checkpoint / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
            return str(checkpoint)
        except (OSError, ValueError):
            log.warning("%s: incomplete checkpoint (no readable %s), not resumed from", checkpoint, TRAINER_STATE_NAME)
            if remove_incomplete:
                shutil.rmtree(checkpoint)
    return None


def _checkpoints(out_dir: Path) -> list[Path]:
    if not out_dir.is_dir():
        return []
    return [
        path
        for path in out_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
        if path.is_dir() and path.name.rsplit("-", 1)[1].isdigit()
    ]


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
    cannot be read, and pairs that cannot be trained on (a missing or unreadable image, the
    same answer chosen and rejected: `data.convert.usable_pairs`), go to
    `out_dir/pairs.rejects.jsonl` with the reason; the rest are trained on. Returns
    {"read", "trained", "rejected", "rejects", "model"}, where read = trained + rejected.
    """
    out_dir = Path(out_dir)
    result = read_mmedpo_json(json_path)
    pairs, unusable = usable_pairs(result.pairs, [image_folder], str(json_path))
    rejects = [*result.rejects, *unusable]
    out_dir.mkdir(parents=True, exist_ok=True)
    rejects_file = out_dir / "pairs.rejects.jsonl"
    write_jsonl(rejects_file, rejects)
    if not pairs:
        raise ValueError(f"{json_path}: no usable pair ({len(rejects)} rejected, reasons in {rejects_file})")
    pairs = [pair.model_copy(update={"weight": pair.clinical_score}) for pair in pairs]
    data = f"The MMedPO preference file `{Path(json_path).name}`; each pair's weight is its `weighted_score`."
    train_weighted_dpo(Path(model_dir), pairs, [Path(image_folder)], out_dir, settings, data_description=data)
    return {
        "read": result.read,
        "trained": len(pairs),
        "rejected": len(rejects),
        "rejects": str(rejects_file),
        "model": str(out_dir),
    }
