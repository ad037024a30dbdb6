"""The policy to train: full fine-tuning, LoRA or QLoRA (PEFT), and merging an adapter back.

LoRA adapters go on the language model only: the vision tower stays frozen, and the
vision-to-text projector is trained fully when asked (PEFT's `modules_to_save`). The
model is wrapped once, by the trainer, so the saved adapter reloads on a fresh base:

    model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), adapter_dir)
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel
from transformers import AutoModelForImageTextToText, AutoProcessor, PreTrainedModel
from trl.trainer.utils import create_model_from_path

from mmedpo.models.vlm import PROJECTOR_MODULES, VISION_MODULES, freeze_vision_tower
from mmedpo.training.settings import DPOSettings

# Every module inside the vision tower or the projector, and the LM head (TRL reads lm_head.weight directly).
_NOT_ADAPTED = r".*\b(?:{})\b.*|(?:.*\.)?lm_head".format("|".join(VISION_MODULES + PROJECTOR_MODULES))


def load_policy(model_dir: Path | str, settings: DPOSettings) -> PreTrainedModel:
    """The starting model; 4-bit for QLoRA; vision tower frozen for full fine-tuning when asked."""
    kwargs = {}
    if settings.load_in_4bit:
        kwargs["quantization_config"] = _four_bit_config()
    model = create_model_from_path(str(model_dir), **kwargs)
    if not settings.use_peft and settings.freeze_vision_tower:
        freeze_vision_tower(model)
    return model


def _four_bit_config():
    """NF4 with double quantisation for the language model; the image encoder, the projector and the LM head stay
    in full precision (as LLaVA's QLoRA recipe: the projector may be trained fully, which a 4-bit layer cannot)."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ValueError(
            "load_in_4bit needs bitsandbytes (pip install -e '.[qlora]'); or set load_in_4bit: false"
        ) from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        # Patterns matched from the start of a module's name (regex) or as its suffix.
        llm_int8_skip_modules=[r".*\b(?:{})".format("|".join(VISION_MODULES + PROJECTOR_MODULES)), "lm_head"],
    )


def lora_config(model: torch.nn.Module, settings: DPOSettings) -> LoraConfig:
    """LoRA on the language model's `settings.lora_target_modules`, the projector fully trained if asked."""
    targets = "all-linear" if settings.lora_target_modules == ["all-linear"] else list(settings.lora_target_modules)
    adapted = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and not re.fullmatch(_NOT_ADAPTED, name)
        and (targets == "all-linear" or name.rsplit(".", 1)[-1] in targets)
    ]
    if not adapted:
        raise ValueError(f"no linear layer of the language model is named {settings.lora_target_modules}")
    names = {part for name, _ in model.named_modules() for part in name.split(".")}
    projector = sorted(names & set(PROJECTOR_MODULES))
    if settings.train_projector and not projector:
        raise ValueError(f"train_projector: the model has no module named one of {list(PROJECTOR_MODULES)}")
    return LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=targets,
        exclude_modules=_NOT_ADAPTED,
        modules_to_save=projector if settings.train_projector else None,
        task_type="CAUSAL_LM",
    )


def merge_adapter(base_dir: Path | str, adapter_dir: Path | str, out_dir: Path | str) -> Path:
    """Save base + adapter as one plain model (with the processor) in `out_dir`; returns `out_dir`."""
    out_dir = Path(out_dir)
    base = AutoModelForImageTextToText.from_pretrained(base_dir, local_files_only=True)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir)
    AutoProcessor.from_pretrained(base_dir, local_files_only=True).save_pretrained(out_dir)  # training leaves it as is
    return out_dir
