"""Configuration of clinical-aware weighted DPO.

Two layers, as TRL does it: `WeightedDPOConfig` is TRL's `DPOConfig` plus MMedPO's
switches (the trainer reads it), and `DPOSettings` (in `mmedpo.training.settings`, light
to import) is the small validated model a run's YAML holds; `to_trl_config` turns the
latter into the former (its LoRA part goes to `mmedpo.training.lora`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from trl import DPOConfig

from mmedpo.training.settings import LENGTH_NORMALIZED, REDUCTIONS, DPOSettings


@dataclass
class WeightedDPOConfig(DPOConfig):
    """TRL's `DPOConfig` with MMedPO's per-pair clinical weights.

    Parameters:
        pair_weighting (`bool`, defaults to `True`):
            Multiply each pair's loss by its `weight` column. Off, every weight counts as 1.
        weight_reduction (`str`, defaults to `"mean"`):
            `"mean"`: mean over the batch of w * loss (the paper's expectation).
            `"normalized"`: sum(w * loss) / sum(w), so the loss scale does not depend on the
            weights' overall level. Both reduce one micro-batch on one process.
    """

    pair_weighting: bool = field(default=True, metadata={"help": "Multiply each pair's loss by its `weight` column."})
    weight_reduction: str = field(
        default="mean",
        metadata={"help": "'mean': mean of w*loss; 'normalized': sum(w*loss)/sum(w)."},
    )
    nll_weight: float = field(
        default=0.0,
        metadata={"help": "Add this times the chosen answer's per-token NLL to each pair's loss (DPO+NLL)."},
    )
    length_normalize: bool = field(
        default=False,
        metadata={"help": "Divide every summed log-prob by its answer's token count before the loss."},
    )
    ref_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Where precomputed reference log-probs are kept; None: `output_dir/ref_logps`."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.weight_reduction not in REDUCTIONS:
            raise ValueError(f"weight_reduction must be one of {list(REDUCTIONS)}, got {self.weight_reduction!r}")
        if self.nll_weight < 0:
            raise ValueError(f"nll_weight must be >= 0, got {self.nll_weight}")
        if self.length_normalize and set(self.loss_type) & LENGTH_NORMALIZED:
            raise ValueError(f"loss_type {self.loss_type} is already length-normalised; leave length_normalize off")

    @property
    def reference_cache_dir(self) -> str:
        return self.ref_cache_dir or str(Path(self.output_dir) / "ref_logps")


def to_trl_config(settings: DPOSettings, out_dir: Path) -> WeightedDPOConfig:
    """The TRL configuration these settings stand for, writing under `out_dir`."""
    bf16 = settings.bf16
    if bf16 is None:
        # QLoRA computes in bf16 (TRL casts the adapters to bf16): it needs autocast, on CPU too.
        bf16 = settings.qlora or (torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    # On a machine without an accelerator, say so explicitly: transformers then (a) allows bf16 as CPU autocast,
    # and (b) under a multi-process launch (accelerate launch / torchrun) sets up gloo data parallelism. Without
    # it, each launched CPU process silently trains alone on all the data and they all write the outputs.
    use_cpu = not torch.accelerator.is_available()
    return WeightedDPOConfig(
        output_dir=str(out_dir),
        beta=settings.beta,
        loss_type=[settings.loss_type],
        pair_weighting=settings.weighted,
        weight_reduction=settings.reduction,
        learning_rate=settings.learning_rate,
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        max_length=settings.max_length,
        seed=settings.seed,
        logging_steps=settings.logging_steps,
        bf16=bf16,
        use_cpu=use_cpu,
        activation_checkpointing=settings.gradient_checkpointing,
        nll_weight=settings.nll_weight,
        length_normalize=settings.length_normalize,
        precompute_ref_log_probs=settings.precompute_ref,
        ref_cache_dir=None if settings.ref_cache_dir is None else str(settings.ref_cache_dir),
        max_steps=settings.max_steps or -1,
        # The final model is saved by the caller; checkpoints are only for resuming.
        save_strategy="no" if settings.save_steps is None else "steps",
        save_steps=settings.save_steps or 500,
        report_to="none",
    )
