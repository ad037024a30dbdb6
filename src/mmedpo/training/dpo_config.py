"""Configuration of clinical-aware weighted DPO.

Two layers, as TRL does it: `WeightedDPOConfig` is TRL's `DPOConfig` plus the two
MMedPO switches (the trainer reads it), and `DPOSettings` is the small validated
model a run's YAML holds; `to_config` turns the latter into the former.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from trl import DPOConfig

# Losses whose per-pair value the weighted trainer computes (an explicit list, as TRL does).
SUPPORTED_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "sigmoid_norm")
REDUCTIONS = ("mean", "normalized")


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

    def __post_init__(self):
        super().__post_init__()
        if self.weight_reduction not in REDUCTIONS:
            raise ValueError(f"weight_reduction must be one of {list(REDUCTIONS)}, got {self.weight_reduction!r}")


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
        None, description="bf16 mixed precision; None: on where a CUDA GPU supports it, else fp32"
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass to save memory (for large models)"
    )

    def to_config(self, out_dir: Path) -> WeightedDPOConfig:
        """The TRL configuration these settings stand for, writing under `out_dir`."""
        bf16 = self.bf16
        if bf16 is None:
            bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return WeightedDPOConfig(
            output_dir=str(out_dir),
            beta=self.beta,
            loss_type=[self.loss_type],
            pair_weighting=self.weighted,
            weight_reduction=self.reduction,
            learning_rate=self.learning_rate,
            num_train_epochs=self.epochs,
            per_device_train_batch_size=self.batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            max_length=self.max_length,
            seed=self.seed,
            logging_steps=self.logging_steps,
            bf16=bf16,
            activation_checkpointing=self.gradient_checkpointing,
            # The stage saves the final model itself; intermediate checkpoints only cost disk.
            save_strategy="no",
            report_to="none",
        )
