"""The base Med-LVLM a run starts from: a given HF VLM, or the tiny LLaVA built and taught here.

For the tiny LLaVA (no `settings.path`): build it on the run's text corpus,
pretrain its vision tower on the findings the SFT reports name (the stand-in for
a pretrained CLIP, `models.vision_pretrain`), then supervised fine-tuning on the
SFT split (`models.sft`). Where no SFT report names a finding (a VQA dataset,
reports outside the chest lexicon) there is nothing to pretrain on: that step
is skipped, and the summary's `notes` say so. A given model skips the first
two; with `sft_epochs: 0` it is used as it is (LLaVA-Med is already supervised):
the run's models/base is then a link to it, not a copy.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from mmedpo.config import BaseModelConfig
from mmedpo.records import Sample


def make_base_model(
    settings: BaseModelConfig,
    samples: Sequence[Sample],
    image_roots: Sequence[Path],
    work_dir: Path,
    out_dir: Path,
    seed: int,
    show_progress: bool = True,
) -> dict:
    """Write the base model to `out_dir`; `work_dir` holds the freshly built tiny model. Returns a summary."""
    from mmedpo.models.sft import supervised_finetune

    sft = [sample for sample in samples if sample.split == "sft"]
    if settings.sft_epochs and not sft:
        raise ValueError("no samples in the 'sft' split: set model.sft_epochs=0 or map a split to sft (data.split_map)")
    summary: dict = {}
    start_dir = Path(settings.path) if settings.path else None
    if start_dir is None:
        start_dir = _build_tiny(settings, samples, work_dir, seed)
        skip = _no_pretraining(settings, sft)
        if skip:
            summary["notes"] = [f"vision pretraining skipped: {skip}"]
        else:
            summary["vision_pretrain"] = _pretrain_vision(settings, start_dir, sft, image_roots, seed, show_progress)
    if settings.sft_epochs == 0:
        if settings.path:
            # A given model is used as it is: linked, not copied (a 7B checkpoint is ~14 GB per run or seed).
            out_dir.parent.mkdir(parents=True, exist_ok=True)
            out_dir.symlink_to(Path(settings.path).resolve(), target_is_directory=True)
        else:
            shutil.copytree(start_dir, out_dir, dirs_exist_ok=True)
        return {**summary, "sft_samples": 0}
    supervised_finetune(
        start_dir,
        sft,
        image_roots,
        out_dir,
        epochs=settings.sft_epochs,
        learning_rate=settings.sft_learning_rate,
        batch_size=settings.sft_batch_size,
        seed=seed,
        progress=show_progress,
        freeze_vision=settings.sft_freeze_vision,
    )
    return {**summary, "sft_samples": len(sft)}


def _build_tiny(settings: BaseModelConfig, samples: Sequence[Sample], work_dir: Path, seed: int) -> Path:
    from mmedpo.models.tiny import build_tiny_llava

    # The tokenizer learns the words of every split: vocabulary only, no answer is seen by a model.
    corpus = [text for sample in samples for text in (sample.question, sample.answer)]
    return build_tiny_llava(
        corpus,
        work_dir,
        image_size=settings.image_size,
        seed=seed,
        vision_hidden=settings.vision_hidden,
        text_hidden=settings.text_hidden,
        layers=settings.layers,
    )


def _no_pretraining(settings: BaseModelConfig, sft: Sequence[Sample]) -> str | None:
    """Why the tiny model's vision tower is not pretrained, or None when it is."""
    from mmedpo.models.vision_pretrain import finding_labels

    if not settings.vision_pretrain_epochs:
        return "model.vision_pretrain_epochs is 0"
    labels = finding_labels(sft)
    if not any(labels.values()):
        return (
            f"its labels are the findings the sft split's reports name, and {len(labels)} report image(s) name none; "
            "the tower learns only through SFT"
        )
    return None


def _pretrain_vision(
    settings: BaseModelConfig,
    model_dir: Path,
    sft: Sequence[Sample],
    image_roots: Sequence[Path],
    seed: int,
    show_progress: bool,
) -> dict:
    """Pretrain the freshly built tiny model's vision tower in place (see models.vision_pretrain)."""
    from mmedpo.models.vision_pretrain import pretrain_vision_tower
    from mmedpo.models.vlm import load_vlm

    model, processor = load_vlm(model_dir)
    summary = pretrain_vision_tower(
        model, processor, list(sft), image_roots, settings.vision_pretrain_epochs, seed=seed, progress=show_progress
    )
    model.save_pretrained(model_dir)
    return summary
