"""Dataset cards for exported preference pairs, generated from the pairs themselves.

Every dataset export (`mmedpo.data.convert`: HF folder, Parquet, TRL, ms-swift,
LLaMA-Factory) gets a card: a README.md inside a folder, `NAME.README.md` beside a
file. It says where the pairs came from, how many of each kind there are, what
`clinical_score` / `weighted_score` and `weight` mean, which images the data need,
what the target tool ignores, the licence situation, and that the data are a
research artefact, not for clinical use. The front matter is a Hugging Face
dataset card's (`huggingface_hub.DatasetCardData`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import DatasetCard, DatasetCardData

from mmedpo.records import PreferencePair

# Formats written as folders; the others are single files.
FOLDER_FORMATS = ("hf", "trl", "ms-swift", "llama-factory")

_TITLES = {
    "hf": "a Hugging Face dataset (save_to_disk folder) with mmedpo's columns",
    "parquet": "a Parquet file with mmedpo's columns",
    "trl": "TRL's preference format (save_to_disk folder), images embedded",
    "trl-parquet": "TRL's preference format (Parquet file), images embedded",
    "ms-swift": "ms-swift's DPO format (JSON Lines), images copied",
    "llama-factory": "LLaMA-Factory's ShareGPT preference format, images copied",
}

_TASK_CATEGORIES = {"vqa": "visual-question-answering", "report": "image-to-text"}
# Parquet files hold what the folders of the same layout hold.
_FAMILY = {"parquet": "hf", "trl-parquet": "trl"}
_SCORE_WHERE = {
    "hf": "the `clinical_score` column",
    "trl": "the `clinical_score` of the `pair` column's JSON record",
    "ms-swift": "not exported",
    "llama-factory": "not exported",
}

_IMAGES = {
    "hf": "Not included: `image` and `rejected_image` are paths relative to the image root the pairs were "
    "made with; keep that folder (dataset images, and the run's `images/` for noised ones).",
    "trl": "Embedded in the `images` and `rejected_images` columns, each with its relative path; DICOM and "
    "16-bit images as the 8-bit PNG the models see.",
    "ms-swift": "Copied into `images/` here (DICOM and 16-bit images as the 8-bit PNG the models see). Paths are "
    "relative to this folder: run ms-swift from it, or set `ROOT_IMAGE_DIR` to it.",
    "llama-factory": "Copied into `images/` here (DICOM and 16-bit images as the 8-bit PNG the models see). "
    "LLaMA-Factory finds them relative to `--dataset_dir` (its `media_dir`), this folder.",
}

_OUR_TRAINER = (
    "from mmedpo.data.convert import read_pairs\n"
    "from mmedpo.training import train_weighted_dpo\n"
    "pairs, rejects = read_pairs('{name}')\n"
    "train_weighted_dpo(MODEL_DIR, pairs, [IMAGE_ROOT], OUT_DIR, settings)  # reads weight and rejected images\n"
)
_USAGE = {
    "hf": "datasets.load_from_disk('{name}')  # or: mmedpo convert {name} pairs.jsonl\n" + _OUR_TRAINER,
    "parquet": "datasets.load_dataset('parquet', data_files='{name}')  # or: mmedpo convert {name} pairs.jsonl\n"
    + _OUR_TRAINER,
    "trl": _OUR_TRAINER + "# plain TRL, which ignores weight and rejected_images:\n"
    "DPOTrainer(..., train_dataset=datasets.load_from_disk('{name}'))",
    "trl-parquet": _OUR_TRAINER + "# plain TRL, which ignores weight and rejected_images:\n"
    "DPOTrainer(..., train_dataset=datasets.load_dataset('parquet', data_files='{name}')['train'])",
    "ms-swift": "cd {name} && swift rlhf --rlhf_type dpo --model MODEL --dataset train.jsonl",
    "llama-factory": "llamafactory-cli train --stage dpo --dataset_dir {name} --dataset mmedpo_dpo ...",
}


def card_path(target: Path, format_name: str) -> Path:
    """README.md inside a folder export, NAME.README.md beside a file export."""
    target = Path(target)
    return target / "README.md" if format_name in FOLDER_FORMATS else target.with_name(f"{target.name}.README.md")


def write_card(
    target: Path, format_name: str, pairs: Sequence[PreferencePair], provenance: str, lost: Sequence[str]
) -> Path:
    """Write the dataset card of the export at `target`; returns its path."""
    path = card_path(target, format_name)
    DatasetCard(dataset_card(Path(target).name, format_name, pairs, provenance, lost)).save(path)
    return path


def dataset_card(
    name: str, format_name: str, pairs: Sequence[PreferencePair], provenance: str, lost: Sequence[str]
) -> str:
    tasks = Counter(pair.task for pair in pairs)
    data = DatasetCardData(
        pretty_name=f"MMedPO preference pairs: {name}",
        license="unknown",
        task_categories=[
            {"vqa": "visual-question-answering", "report": "image-to-text"}[task] for task in sorted(tasks)
        ],
        tags=["medical", "preference", "dpo", "mmedpo"],
        size_categories=[_size_category(len(pairs))],
    )
    lines = [
        "---",
        data.to_yaml(),
        "---",
        "",
        f"# MMedPO preference pairs: `{name}`",
        "",
        "**A research artefact, not for clinical use.** The rejected answers are deliberate hallucinations, and "
        "the chosen ones are only as right as the dataset they come from; nothing here is medical advice.",
        "",
        f"Format: {_TITLES[format_name]}. {provenance}".rstrip(),
        "",
        "## Contents",
        "",
        "| kind | " + " | ".join(sorted(tasks)) + " | all |",
        "|---|" + "---|" * (len(tasks) + 1),
    ]
    for kind, meaning in (("text", "text (one image)"), ("visual", "visual (own rejected image)")):
        counts = [sum(1 for p in pairs if p.kind == kind and p.task == task) for task in sorted(tasks)]
        lines.append(f"| {meaning} | " + " | ".join(map(str, counts)) + f" | {sum(counts)} |")
    lines += ["", "## Scores", "", *_score_lines(pairs, format_name), "", "## Images", ""]
    images = {image for pair in pairs for image in (pair.image, pair.rejected_image) if image}
    lines.append(f"{len(images)} distinct images. {_IMAGES[_FAMILY.get(format_name, format_name)]}")
    if lost:
        lines += ["", "## What the target tool ignores", ""] + [f"- {note}" for note in lost]
    lines += [
        "",
        "## Use",
        "",
        "```",
        _USAGE[format_name].format(name=name),
        "```",
        "",
        "## Licence",
        "",
        "The pairs keep the terms of what they were made from: the source dataset's licence covers its questions, "
        "answers and images (images stay their owners'; the MMedPO release's pair texts are Apache-2.0), and "
        "generated answers follow the terms of the models that wrote them. Check them before sharing this export.",
        "",
    ]
    return "\n".join(lines)


def _score_lines(pairs: Sequence[PreferencePair], format_name: str) -> list[str]:
    family = _FAMILY.get(format_name, format_name)
    scores = [p.clinical_score for p in pairs if p.clinical_score is not None]
    weights = [p.weight for p in pairs if p.weight is not None]
    lines = [
        f"- **Clinical score** (`weighted_score` in MMedPO JSON; here {_SCORE_WHERE[family]}): how clinically "
        "relevant the rejected answer's error is, in [0, 1] (the judge panel's aggregate, or the lesion "
        f"localizer's confidence for visual pairs). {_summary(scores, len(pairs))}"
    ]
    if family in ("hf", "trl"):
        missing = " A missing weight is written as 1.0." if family == "trl" else ""
        lines.append(
            "- **Weight** (`weight`): what the trainer multiplies the pair's DPO loss by: the clinical score "
            f"normalised over the pairs one variant trains on. {_summary(weights, len(pairs))}{missing}"
        )
    else:
        lines.append("- **Weight**: not in this format (the tool has no per-pair weight).")
    return lines


def _summary(values: list[float], total: int) -> str:
    return f"Set on {len(values)} of {total} pairs, mean {sum(values) / len(values):.3f}." if values else "Not set."


def _size_category(count: int) -> str:
    # The Hugging Face Hub's size buckets.
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if count < limit:
            return label
    return "1M<n<10M"
