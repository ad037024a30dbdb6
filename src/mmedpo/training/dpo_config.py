"""TRL's configuration of clinical-aware weighted DPO.

`WeightedDPOConfig` is TRL's `DPOConfig` plus MMedPO's switches, as TRL pairs each trainer
with a config dataclass. The switches have the names, defaults and help of the settings
(`mmedpo.training.settings.DPOSettings`, the one vocabulary) and are checked by the same
function. `to_trl_config` passes the settings on by name; the adapter's settings go to
`mmedpo.training.lora` instead.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
from trl import DPOConfig

from mmedpo.training.settings import DPOSettings, check_objective


def _setting(name: str):
    """A dataclass field with the setting's default and help: one definition for both layers."""
    info = DPOSettings.model_fields[name]
    return field(default=info.default, metadata={"help": info.description})


@dataclass
class WeightedDPOConfig(DPOConfig):
    """TRL's `DPOConfig` with MMedPO's per-pair clinical weights and objective switches.

    Parameters (defaults and meaning as in `DPOSettings`):
        pair_weighting: multiply each pair's loss by its `weight` column; off, every weight counts as 1.
        weight_reduction: "mean" (mean of w * loss, the paper's expectation) or "normalized"
            (sum(w * loss) / sum(w)); both reduce one micro-batch on one process.
        nll_weight, nll_scaled_by_weight: DPO+NLL, and whether the clinical weight scales the NLL term.
        length_normalize: divide every summed log-prob by its answer's token count before the loss.
        ref_cache_dir: where precomputed reference log-probs are kept; None: `output_dir/ref_logps`.
    """

    pair_weighting: bool = _setting("pair_weighting")
    weight_reduction: str = _setting("weight_reduction")
    nll_weight: float = _setting("nll_weight")
    nll_scaled_by_weight: bool = _setting("nll_scaled_by_weight")
    length_normalize: bool = _setting("length_normalize")
    ref_cache_dir: str | None = _setting("ref_cache_dir")

    def __post_init__(self):
        super().__post_init__()
        for loss_type in self.loss_type:
            check_objective(loss_type, self.weight_reduction, self.nll_weight, self.length_normalize)

    @property
    def reference_cache_dir(self) -> str:
        return self.ref_cache_dir or str(Path(self.output_dir) / "ref_logps")


# Settings not passed to DPOConfig: the adapter's and the model's (mmedpo.training.lora), trl_args, and sharing.
NOT_TRL = {
    "use_peft",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "train_projector",
    "load_in_4bit",
    "freeze_vision_tower",
    "merge_lora",
    "trl_args",
    # Pushed by train_weighted_dpo with the model card, not by TRL's Trainer (whose own card would replace ours).
    "push_to_hub",
    "hub_model_id",
}


def to_trl_config(settings: DPOSettings, out_dir: Path) -> WeightedDPOConfig:
    """The TRL configuration these settings stand for, writing under `out_dir`.

    Every setting goes to the DPOConfig argument of the same name; the few whose empty value
    means something of ours are translated below; `trl_args` are added as they are.
    """
    values = {name: getattr(settings, name) for name in DPOSettings.model_fields if name not in NOT_TRL}
    bf16 = settings.bf16
    if bf16 is None:
        # QLoRA computes in bf16 (TRL casts the adapters to bf16): it needs autocast, on CPU too.
        bf16 = settings.load_in_4bit or (torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    # On a machine without an accelerator, say so explicitly: transformers then (a) allows bf16 as CPU autocast,
    # and (b) under a multi-process launch (accelerate launch / torchrun) sets up gloo data parallelism. Without
    # it, each launched CPU process silently trains alone on all the data and they all write the outputs.
    use_cpu = not torch.accelerator.is_available()
    values.update(
        output_dir=str(out_dir),
        loss_type=[settings.loss_type],
        bf16=bf16,
        use_cpu=use_cpu,
        seed=settings.seed or 0,
        ref_cache_dir=None if settings.ref_cache_dir is None else str(settings.ref_cache_dir),
        max_steps=settings.max_steps or -1,
        # The final model is saved by the caller; checkpoints are only for resuming.
        save_strategy="no" if settings.save_steps is None else "steps",
        save_steps=settings.save_steps or 500,
        # The held-out evaluation reads only the logged rewards: without this, transformers keeps every
        # held-out pair's logits (for a 7B model, GBs of full-vocabulary logits) and the loss runs a second
        # forward to make them.
        prediction_loss_only=True,
    )
    # Checked on load against the recorded names; here against the installed TRL, whatever its version.
    names = {f.name for f in dataclasses.fields(WeightedDPOConfig)}
    unknown = sorted(set(settings.trl_args) - names)
    if unknown:
        raise ValueError(f"trl_args: {unknown} are not arguments of TRL {DPOConfig.__module__}.DPOConfig")
    return WeightedDPOConfig(**values, **settings.trl_args)
