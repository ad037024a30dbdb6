"""Model cards for the models weighted DPO trains: README.md with Hugging Face metadata, from train_log.json.

    write_model_card(out_dir)                                  # once training ends (train_weighted_dpo)
    write_model_card(out_dir, evaluation=metrics, dataset="SynthMed", split="test")  # the eval stage, later

The card says what the model started from (a local base as a path relative to the
card, a Hub model by its id; only an id goes into the metadata's `base_model`, since
the Hub refuses a card whose `base_model` is not a model id), what it trained on (pairs by kind, where they came
from), with which settings, how it did on held-out pairs and, once evaluated, its
test metrics; and that it is a research artefact, not for clinical use. A full
fine-tune, or base + adapter merged, gets OUT/README.md (transformers); a LoRA
adapter gets OUT/adapter/README.md (peft), replacing PEFT's empty template with
its absolute local base and "text-generation" tag. Everything comes from
OUT/train_log.json, so the eval stage rewrites the same card with its metrics.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

PIPELINE_TAG = "image-text-to-text"
ADAPTER_DIR = "adapter"
# The test metrics a card lists (and puts in its model-index), in this order.
CARD_METRICS = (
    "closed_accuracy",
    "closed_balanced_accuracy",
    "open_recall",
    "open_f1",
    "bleu_1",
    "bleu_4",
    "rouge_l",
    "meteor",
    "cider",
    "clinical_precision",
    "clinical_recall",
    "clinical_f1",
    "visual_changed_noised",
    "visual_drop_noised",
    "visual_drop_blank",
)
NOT_CLINICAL = (
    "**A research artefact, not for clinical use.** This model was trained to study preference optimisation of "
    "medical vision-language models. It is not a medical device, has not been validated on patients, and its "
    "answers must not inform diagnosis or treatment."
)


def base_model_name(model_dir: Path | str, out_dir: Path | str) -> str:
    """The base as a card names it: a local folder relative to `out_dir` (always starting with "."), else a Hub id."""
    if not Path(model_dir).is_dir():
        return str(model_dir)
    relative = os.path.relpath(os.path.abspath(model_dir), os.path.abspath(out_dir))  # links kept as named
    return relative if relative.startswith(".") else f"./{relative}"


def write_model_card(
    out_dir: Path | str,
    evaluation: Mapping[str, Any] | None = None,
    dataset: str | None = None,
    split: str = "test",
) -> list[Path]:
    """Write the card of each model in `out_dir` (the model, the adapter) from its train_log.json; returns the paths.

    `evaluation`: the model's test metrics (an eval JSON's "metrics"), scored on `dataset`'s `split`.
    """
    out_dir = Path(out_dir)
    log = json.loads((out_dir / "train_log.json").read_text(encoding="utf-8"))
    tested = {"evaluation": evaluation, "dataset": dataset, "split": split}
    written = []
    if (out_dir / "config.json").exists():
        merged = (out_dir / ADAPTER_DIR).is_dir()
        model_card(out_dir.name, log, log["base_model"], adapter=False, merged=merged, **tested).save(
            out_dir / "README.md"
        )
        written.append(out_dir / "README.md")
    if (out_dir / ADAPTER_DIR / "adapter_config.json").exists():
        base = log["base_model"]
        base = os.path.normpath(os.path.join("..", base)) if base.startswith(".") else base  # one folder deeper
        path = out_dir / ADAPTER_DIR / "README.md"
        model_card(f"{out_dir.name} (LoRA adapter)", log, base, adapter=True, merged=False, **tested).save(path)
        written.append(path)
    return written


def model_card(
    name: str,
    log: Mapping[str, Any],
    base: str,
    adapter: bool,
    merged: bool,
    evaluation: Mapping[str, Any] | None = None,
    dataset: str | None = None,
    split: str = "test",
) -> ModelCard:
    """The card of one model (or adapter) from its train_log.json and, once evaluated, its test metrics."""
    evaluation = evaluation or {}
    metrics = {name: float(evaluation[name]) for name in CARD_METRICS if evaluation.get(name) is not None}
    local = base.startswith(".")  # base_model_name's local folders; the card's text names them
    data = ModelCardData(
        model_name=name,
        base_model=None if local else base,
        library_name="peft" if adapter else "transformers",
        pipeline_tag=PIPELINE_TAG,
        tags=["mmedpo", "dpo", "medical", "research-only", *(["lora"] if adapter else [])],
        eval_results=_eval_results(metrics, dataset, split) or None,
    )
    what = "A LoRA adapter" if adapter else ("A LoRA fine-tune merged into its base," if merged else "A model")
    version = log.get("mmedpo_version", "?")
    where = " (a local folder, relative to this card's folder)." if local else " (Hugging Face Hub)."
    lines = [
        f"# {name}",
        "",
        f"{what} trained with clinical-aware weighted DPO (MMedPO) by mmedpo {version}.",
        "",
        NOT_CLINICAL,
        "",
        "## Base model",
        "",
        f"`{base}`{where}",
        "",
        *_data_lines(log),
        *_training_lines(log),
        *_evaluation_lines(metrics, evaluation, dataset, split),
        "## How to load",
        "",
        "```python",
        *_load_lines(base, adapter),
        "```",
        "",
    ]
    return ModelCard("\n".join(["---", data.to_yaml(), "---", "", *lines]))


def _data_lines(log: Mapping[str, Any]) -> list[str]:
    by_kind = log.get("pairs_by_kind") or {}
    lines = ["## Training data", ""]
    if log.get("data"):
        lines += [log["data"], ""]
    lines += ["| pair kind | pairs |", "|---|---|"]
    lines += [f"| {kind} | {count} |" for kind, count in by_kind.items()]
    lines += [f"| all | {log.get('pairs', sum(by_kind.values()))} |", ""]
    lines.append(
        "Text pairs share one image; a visual pair's rejected answer goes with a noised copy of the image. Each "
        "pair's loss is multiplied by its clinical weight when `pair_weighting` is on."
    )
    return [*lines, ""]


def _training_lines(log: Mapping[str, Any]) -> list[str]:
    settings = log.get("settings") or {}
    steps, epochs = log.get("optimizer_steps"), log.get("epochs")
    lines = ["## Training", ""]
    if steps is not None:
        lines.append(f"Optimizer steps: {steps}" + (f", over {epochs:.2f} epochs." if epochs is not None else "."))
    heldout = log.get("heldout") or {}
    if heldout.get("reward_accuracy") is not None:
        by_kind = ", ".join(
            f"{kind} pairs {heldout[f'reward_accuracy_{kind}']:.3f}"
            for kind in ("text", "visual")
            if heldout.get(f"reward_accuracy_{kind}") is not None
        )
        lines.append(
            f"Reward accuracy on {heldout.get('pairs', '?')} held-out pairs (never trained on): "
            f"{heldout['reward_accuracy']:.3f}" + (f" ({by_kind})." if by_kind else ".")
        )
    if settings:
        lines += ["", "<details><summary>Settings (mmedpo's DPOSettings)</summary>", "", "```yaml"]
        lines += [yaml.safe_dump(dict(settings), sort_keys=False).rstrip(), "```", "", "</details>"]
    return [*lines, ""]


def _eval_results(metrics: Mapping[str, float], dataset: str | None, split: str) -> list[EvalResult]:
    """The test metrics as the Hub's model-index entries."""
    return [
        EvalResult(
            task_type=PIPELINE_TAG,
            dataset_type=(dataset or "unknown").lower(),
            dataset_name=dataset or "unknown",
            dataset_split=split,
            metric_type=name,
            metric_name=name,
            metric_value=round(value, 4),
        )
        for name, value in metrics.items()
    ]


# The evaluation's sizes a card states beside its metrics.
_COUNTS = (("n_closed", "closed questions"), ("n_open", "open questions"), ("n_report", "reports"))


def _evaluation_lines(
    metrics: Mapping[str, float], evaluation: Mapping[str, Any], dataset: str | None, split: str
) -> list[str]:
    if not metrics:
        return ["## Evaluation", "", "Not evaluated yet (a run's eval stage adds its test metrics here).", ""]
    counts = ", ".join(f"{evaluation[key]} {what}" for key, what in _COUNTS if key in evaluation)
    where = f"{dataset or 'the test data'}, {split} split" + (f" ({counts})" if counts else "")
    lines = ["## Evaluation", "", f"On {where}:", "", "| metric | value |", "|---|---|"]
    lines += [f"| {name} | {value:.4f} |" for name, value in metrics.items()]
    return [*lines, ""]


def _load_lines(base: str, adapter: bool) -> list[str]:
    if adapter:
        return [
            "from peft import PeftModel",
            "from transformers import AutoModelForImageTextToText, AutoProcessor",
            "",
            f'base = AutoModelForImageTextToText.from_pretrained("{base}")',
            'model = PeftModel.from_pretrained(base, "path/to/this/folder")  # or its Hub id',
            f'processor = AutoProcessor.from_pretrained("{base}")',
        ]
    return [
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        "",
        'model = AutoModelForImageTextToText.from_pretrained("path/to/this/folder")  # or its Hub id',
        'processor = AutoProcessor.from_pretrained("path/to/this/folder")',
    ]


def hub_folder(out_dir: Path | str) -> Path:
    """What `push_model` uploads of a trained model's folder: the model (full or merged) if there is one, else
    the LoRA adapter."""
    out_dir = Path(out_dir)
    return out_dir if (out_dir / "config.json").exists() else out_dir / ADAPTER_DIR


def push_model(folder: Path | str, repo_id: str) -> str:
    """Upload a model folder, its card included, to a private Hub repository (created if needed); returns its URL.

    The token comes from the environment (HF_TOKEN) or `hf auth login`, never from a setting.
    """
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=True, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), ignore_patterns=["checkpoint-*", "ref_logps/*"])
    return f"https://huggingface.co/{repo_id}"


def push_cards(out_dir: Path | str, cards: Sequence[Path], repo_id: str) -> None:
    """Upload the `cards` of a trained model's folder that `push_model` uploaded (the model's, and a merged
    model's adapter card beside it), each to its place: evaluation adds the test metrics after training."""
    from huggingface_hub import HfApi

    folder, api = hub_folder(out_dir), HfApi()
    for card in cards:
        if Path(card).is_relative_to(folder):
            api.upload_file(
                path_or_fileobj=str(card),
                path_in_repo=Path(card).relative_to(folder).as_posix(),
                repo_id=repo_id,
                commit_message="Model card: the test metrics of mmedpo's evaluation",
            )
