"""The weighted-DPO settings: one vocabulary, validated here and only here, light to import (no torch, no TRL).

A run's `train:` section, its variants and the Python entry points all speak these
names. They are TRL's own wherever TRL has one: `DPOConfig`/`TrainingArguments` for the
objective and the optimisation (`num_train_epochs`, `per_device_train_batch_size`,
`precompute_ref_log_probs`, ...), TRL's `ModelConfig` for the adapter (`use_peft`,
`lora_target_modules`, `load_in_4bit`). MMedPO's own switches (`pair_weighting`,
`weight_reduction`, `nll_weight`, ...) keep the same names in `WeightedDPOConfig`, whose
defaults and help come from here. `mmedpo.training.dpo_config.to_trl_config` passes
them on by name; any other `DPOConfig` argument goes through `trl_args`.
"""

from __future__ import annotations

import difflib
import json
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Losses whose per-pair value the weighted trainer computes (an explicit list, as TRL does).
# "sft" is the supervised control: the chosen answer's NLL alone, the baseline a preference loss must beat.
SUPPORTED_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "sigmoid_norm", "sft")
REDUCTIONS = ("mean", "normalized")
# Losses that divide the log-ratios by the answer lengths themselves.
LENGTH_NORMALIZED = {"ipo", "sigmoid_norm"}
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# transformers' SchedulerType names (the version guard test checks the list against the pinned transformers).
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
    "greedy",
)
REPORTERS = ("none", "tensorboard", "wandb")

# Names an earlier version used: a config that still has one is told the new name.
RENAMED = {
    "weighted": "pair_weighting",
    "reduction": "weight_reduction",
    "epochs": "num_train_epochs",
    "batch_size": "per_device_train_batch_size",
    "gradient_checkpointing": "activation_checkpointing",
    "precompute_ref": "precompute_ref_log_probs",
    "lora": "use_peft",
    "qlora": "load_in_4bit",
    "lora_targets": "lora_target_modules",
}
# DPOConfig arguments the weighted trainer does not implement (it refuses them; see dpo.py `_check_supported`).
UNSUPPORTED_TRL_ARGS = ("use_weighting", "ld_alpha", "f_divergence_type", "loss_weights")
# DPOConfig arguments the trainer sets itself from the settings and the output folder.
MANAGED_TRL_ARGS = ("output_dir", "use_cpu", "save_strategy", "prediction_loss_only")
# DPOConfig's argument names in the pinned TRL and transformers (checked against them by the version guard test).
TRL_FIELDS_FILE = "trl_fields.json"


class DPOSettings(BaseModel):
    """The training settings of weighted DPO: a run's `train:` section, or the argument of `train_weighted_dpo`."""

    model_config = ConfigDict(extra="forbid")

    # --- the objective (docs/method.md) ---
    beta: float = Field(0.1, gt=0, description="DPO temperature: how far the policy may move from the reference")
    loss_type: str = Field(
        "sigmoid", description=f"per-pair preference loss, one of {list(SUPPORTED_LOSS_TYPES)}; 'sigmoid': the paper's"
    )
    pair_weighting: bool = Field(
        True, description="multiply each pair's loss by its clinical weight (MMedPO); off = plain DPO"
    )
    weight_reduction: str = Field(
        "mean", description="'mean': mean of w*loss over the batch (the paper); 'normalized': sum(w*loss)/sum(w)"
    )
    nll_weight: float = Field(
        0.0,
        description="DPO+NLL: add this times the chosen answer's per-token NLL to each pair's loss (0: the paper's "
        "loss, no NLL term)",
    )
    nll_scaled_by_weight: bool = Field(
        False,
        description="DPO+NLL: the clinical weight also multiplies each pair's NLL term (off: only the preference "
        "term is weighted, so weighting changes which preferences count, not how much the model imitates)",
    )
    length_normalize: bool = Field(
        False, description="average log-probs over answer tokens (against the length bias of long rejected answers)"
    )
    # --- optimisation (TRL's DPOConfig / transformers' TrainingArguments names) ---
    learning_rate: float = Field(
        5e-4, gt=0, description="peak learning rate; the default suits the tiny demo model (7B: docs/training.md)"
    )
    num_train_epochs: float = Field(1, gt=0, description="passes over the pairs (max_steps wins when set)")
    max_steps: int | None = Field(
        None,
        ge=1,
        description="stop after this many optimiser steps, cycling through the pairs as often as needed (equal "
        "budgets across variants); empty: num_train_epochs",
    )
    per_device_train_batch_size: int = Field(8, ge=1, description="pairs per device per micro-batch")
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro-batches per optimiser step")
    lr_scheduler_type: Literal[SCHEDULERS] = Field(  # type: ignore[valid-type]
        "linear", description="learning-rate schedule after warmup (transformers' SchedulerType)"
    )
    warmup_steps: int | float = Field(
        0,
        ge=0,
        description="linear warmup: an integer is a number of steps, a number in [0, 1) a fraction of all steps "
        "(transformers' convention, e.g. 0.03 for the paper's 3%)",
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (not on biases and norms)")
    max_length: int | None = Field(
        None, ge=1, description="truncate prompt+answer to this many tokens (image tokens included); empty: no limit"
    )
    seed: int | None = Field(
        None, description="seed of initialisation, shuffling and dropout; empty: the run's seed (0 from Python)"
    )
    logging_steps: int = Field(10, ge=1, description="optimiser steps between two logged entries")
    report_to: Literal[REPORTERS] | list[Literal[REPORTERS]] = Field(  # type: ignore[valid-type]
        "none",
        description="experiment tracking: 'tensorboard' (pip install 'mmedpo[tensorboard]'; events in "
        "OUT_DIR/runs), 'wandb' (pip install wandb), a list of both, or 'none'",
    )
    bf16: bool | None = Field(
        None,
        description="bf16 mixed precision (CPU autocast without a GPU); empty: on for load_in_4bit or a bf16 GPU",
    )
    activation_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass to save memory (for large models)"
    )
    precompute_ref_log_probs: bool = Field(
        False, description="compute reference log-probs once, cache them on disk, and hold no reference model"
    )
    ref_cache_dir: Path | None = Field(
        None, description="reference log-prob cache (keyed by model and data); empty: OUT_DIR/ref_logps"
    )
    save_steps: int | None = Field(
        None, ge=1, description="save a resumable checkpoint every this many steps; empty: no checkpoints"
    )
    save_total_limit: int | None = Field(
        1, ge=1, description="checkpoints kept while training (oldest deleted first); all are removed after success"
    )
    trl_args: dict[str, Any] = Field(
        {},
        description="any other argument of TRL's DPOConfig, passed as is, e.g. {optim: adamw_torch, max_grad_norm: "
        "0.5}; names are checked on load, values by TRL when training starts",
    )
    # --- the model and the adapter (TRL's ModelConfig names where it has them) ---
    use_peft: bool = Field(False, description="train a LoRA adapter (PEFT) instead of every weight")
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    lora_alpha: float = Field(32, gt=0, description="LoRA scale numerator (the update is scaled by alpha/r)")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    lora_target_modules: list[str] = Field(
        list(DEFAULT_LORA_TARGETS),
        description="names of the language model's linear layers given adapters, or ['all-linear']",
    )
    train_projector: bool = Field(False, description="LoRA: also train the vision-to-text projector (fully)")
    load_in_4bit: bool = Field(
        False, description="QLoRA: the language model in 4-bit NF4 under the adapter (needs bitsandbytes)"
    )
    freeze_vision_tower: bool = Field(True, description="full fine-tuning: keep the vision encoder frozen")
    merge_lora: bool = Field(
        True, description="LoRA: also save base+adapter merged in OUT_DIR (the adapter goes to OUT_DIR/adapter)"
    )
    # --- sharing (TRL's names; done by mmedpo once training ends, so that the model card goes with the model) ---
    push_to_hub: bool = Field(
        False,
        description="upload the trained model and its card to the Hugging Face Hub repository hub_model_id "
        "(created private; the token comes from HF_TOKEN or `hf auth login`)",
    )
    hub_model_id: str | None = Field(None, description="push_to_hub: the repository, e.g. 'me/mmedpo-vqa-rad'")

    @model_validator(mode="before")
    @classmethod
    def _known_names(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in data:
                if name not in cls.model_fields:
                    raise ValueError(unknown_setting(name, cls.model_fields))
        return data

    @field_validator("warmup_steps")
    @classmethod
    def _steps_or_fraction(cls, value: int | float) -> int | float:
        if isinstance(value, float) and value >= 1:
            if not value.is_integer():
                raise ValueError(f"warmup_steps {value}: a number of steps must be an integer, a fraction below 1")
            return int(value)
        return value

    @field_validator("trl_args")
    @classmethod
    def _trl_args_are_other_dpo_config_fields(cls, trl_args: dict[str, Any]) -> dict[str, Any]:
        for name in trl_args:
            check_trl_arg(name)
        return trl_args

    @model_validator(mode="after")
    def _check_combinations(self) -> DPOSettings:
        check_objective(self.loss_type, self.weight_reduction, self.nll_weight, self.length_normalize)
        if self.load_in_4bit and not self.use_peft:
            raise ValueError("load_in_4bit needs use_peft: a 4-bit base can only be trained through an adapter")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub needs hub_model_id, the Hub repository to upload to (e.g. 'me/my-model')")
        return self


def check_objective(loss_type: str, weight_reduction: str, nll_weight: float, length_normalize: bool) -> None:
    """The objective's settings, checked here for both `DPOSettings` and `WeightedDPOConfig`."""
    if loss_type not in SUPPORTED_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {list(SUPPORTED_LOSS_TYPES)}, got {loss_type!r}")
    if weight_reduction not in REDUCTIONS:
        raise ValueError(f"weight_reduction must be one of {list(REDUCTIONS)}, got {weight_reduction!r}")
    if nll_weight < 0:
        raise ValueError(f"nll_weight must be >= 0, got {nll_weight}")
    if loss_type == "sft" and nll_weight:
        raise ValueError("loss_type 'sft' is the chosen answer's NLL already; leave nll_weight at 0")
    if length_normalize and loss_type in LENGTH_NORMALIZED:
        raise ValueError(f"loss_type {loss_type!r} is already length-normalised; leave length_normalize off")


def unknown_setting(name: str, known) -> str:
    """The message for a setting name that does not exist: its new name, or the closest names."""
    if name in RENAMED and RENAMED[name] in known:
        return f"train setting {name!r} is now called {RENAMED[name]!r} (docs/training.md lists the settings)"
    close = difflib.get_close_matches(name, list(known), n=3)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown train setting {name!r}{hint}"


def check_trl_arg(name: str) -> None:
    """Refuse a `trl_args` name that is a setting of its own, unsupported, set by the trainer, or not TRL's."""
    if name in DPOSettings.model_fields or name in RENAMED:
        raise ValueError(f"trl_args.{name}: set it as the train setting {RENAMED.get(name, name)!r}")
    if name in UNSUPPORTED_TRL_ARGS:
        raise ValueError(f"trl_args.{name}: the weighted DPO trainer does not implement it")
    if name in MANAGED_TRL_ARGS:
        raise ValueError(f"trl_args.{name}: set by the trainer itself (from the output folder and the settings)")
    fields = pinned_dpo_config_fields()
    if fields is not None and name not in fields:
        close = difflib.get_close_matches(name, fields, n=3)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"trl_args.{name}: not an argument of TRL's DPOConfig{hint}")


def pinned_dpo_config_fields() -> list[str] | None:
    """DPOConfig's argument names, read from the list recorded for the installed TRL and transformers.

    None when other versions are installed: the names are then checked by TRL itself when training starts.
    Reading the list needs no import of TRL (whose import takes seconds).
    """
    recorded = json.loads(resources.files("mmedpo.training").joinpath(TRL_FIELDS_FILE).read_text(encoding="utf-8"))
    installed = {package: _installed_version(package) for package in ("trl", "transformers")}
    if installed != recorded["versions"]:
        return None
    return recorded["dpo_config_fields"]


def _installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
