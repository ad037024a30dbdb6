"""The weighted-DPO settings a run's configuration holds: validated, light to import (no torch, no TRL).

`mmedpo.training.dpo_config.to_trl_config` turns them into TRL's configuration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Losses whose per-pair value the weighted trainer computes (an explicit list, as TRL does).
SUPPORTED_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "sigmoid_norm")
REDUCTIONS = ("mean", "normalized")
# Losses that divide the log-ratios by the answer lengths themselves.
LENGTH_NORMALIZED = {"ipo", "sigmoid_norm"}
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class DPOSettings(BaseModel):
    """The training settings a run's configuration gives the weighted DPO stage."""

    model_config = ConfigDict(extra="forbid")

    beta: float = Field(0.1, gt=0, description="DPO temperature: how far the policy may move from the reference")
    loss_type: Literal[SUPPORTED_LOSS_TYPES] = Field(  # type: ignore[valid-type]
        "sigmoid", description="per-pair preference loss; 'sigmoid' is the DPO loss of the paper"
    )
    weighted: bool = Field(
        True, description="multiply each pair's loss by its clinical weight (MMedPO); off = plain DPO"
    )
    reduction: Literal[REDUCTIONS] = Field(  # type: ignore[valid-type]
        "mean", description="'mean': mean of w*loss over the batch; 'normalized': sum(w*loss)/sum(w)"
    )
    learning_rate: float = Field(5e-4, gt=0, description="peak learning rate of the optimiser")
    epochs: float = Field(1, gt=0, description="passes over the pairs")
    batch_size: int = Field(8, ge=1, description="pairs per device per step")
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro-batches per optimiser step")
    max_length: int | None = Field(
        None, ge=1, description="truncate prompt+answer to this many tokens (image tokens included); None: no limit"
    )
    seed: int = Field(0, description="seed of initialisation, shuffling and dropout")
    logging_steps: int = Field(10, ge=1, description="optimiser steps between two logged entries")
    bf16: bool | None = Field(
        None,
        description="bf16 mixed precision (CPU autocast without a GPU); None: on for qlora or a bf16 CUDA GPU",
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass to save memory (for large models)"
    )
    nll_weight: float = Field(
        0.0, ge=0, description="DPO+NLL: add this times the chosen answer's per-token NLL to each pair's loss"
    )
    length_normalize: bool = Field(
        False, description="average log-probs over answer tokens (against the length bias of long rejected answers)"
    )
    precompute_ref: bool = Field(
        False, description="compute reference log-probs once, cache them on disk, and hold no reference model"
    )
    ref_cache_dir: Path | None = Field(
        None, description="reference log-prob cache (keyed by model and data); None: OUT_DIR/ref_logps"
    )
    lora: bool = Field(False, description="train a LoRA adapter (PEFT) instead of every weight")
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    lora_alpha: float = Field(32, gt=0, description="LoRA scale numerator (the update is scaled by alpha/r)")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    lora_targets: list[str] = Field(
        list(DEFAULT_LORA_TARGETS),
        description="names of the language model's linear layers given adapters, or ['all-linear']",
    )
    train_projector: bool = Field(False, description="also train the vision-to-text projector (fully)")
    qlora: bool = Field(
        False, description="load the language model in 4-bit NF4 for LoRA (needs bitsandbytes; runs on CPU too)"
    )
    freeze_vision_tower: bool = Field(True, description="full fine-tuning: keep the vision encoder frozen")
    merge_lora: bool = Field(
        True, description="LoRA: also save base+adapter merged in OUT_DIR (the adapter goes to OUT_DIR/adapter)"
    )
    save_steps: int | None = Field(
        None, ge=1, description="save a resumable checkpoint every this many steps; None: no checkpoints"
    )
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimiser steps; None: use epochs")

    @model_validator(mode="after")
    def _check_combinations(self) -> DPOSettings:
        if self.qlora and not self.lora:
            raise ValueError("qlora needs lora: a 4-bit base can only be trained through an adapter")
        if self.length_normalize and self.loss_type in LENGTH_NORMALIZED:
            raise ValueError(f"loss_type {self.loss_type!r} is already length-normalised; leave length_normalize off")
        return self
