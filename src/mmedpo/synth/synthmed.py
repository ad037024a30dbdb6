"""SynthMed: the embedded synthetic chest X-ray dataset, written to disk as PNGs and Samples.

Every image draws from its own random stream, keyed by (seed, split, index), so
the same arguments write byte-identical files and changing one split's size
leaves every other image unchanged.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from mmedpo.records import REPORT_INSTRUCTION, Sample
from mmedpo.synth.drawing import Finding, Radiograph, draw_radiograph
from mmedpo.synth.questions import (
    PRIORS,
    Question,
    choose_findings,
    make_questions,
    make_report,
)

SPLITS = tuple(PRIORS)  # ("sft", "pref", "test", "val"): a split's place keys its images' random streams


def draw_case(
    seed: int, split: str, index: int, image_size: int = 128
) -> tuple[list[Finding], Radiograph, list[Question]]:
    """The findings, drawing and VQA questions of one SynthMed image, exactly as `generate_synthmed` makes them."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split), index)))
    prior = PRIORS[split]
    findings = choose_findings(prior, rng)
    drawing = draw_radiograph(findings, rng, image_size)
    return findings, drawing, make_questions(findings, prior, rng)


def generate_synthmed(out_root: Path, n_images: dict[str, int], seed: int = 0, image_size: int = 128) -> list[Sample]:
    """Draw SynthMed, write its images and masks under `out_root/synthmed/SPLIT/`, and return its Samples.

    Image paths in the Samples are relative to `out_root`. Each image gives several
    VQA samples (closed and open) and one report sample.
    """
    _check_arguments(n_images, image_size)
    out_root = Path(out_root)
    samples: list[Sample] = []
    for split, count in n_images.items():
        folder = out_root / "synthmed" / split
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            samples.extend(_write_case(out_root, split, index, seed, image_size))
    return samples


def _check_arguments(n_images: dict[str, int], image_size: int) -> None:
    for split, count in n_images.items():
        if split not in SPLITS:
            raise ValueError(f"unknown SynthMed split {split!r}; splits are {', '.join(SPLITS)}")
        if not isinstance(count, int) or count < 0:
            raise ValueError(f"SynthMed split {split!r}: image count must be an integer >= 0, got {count!r}")
    # Below 32 px a small nodule is about one pixel: the findings stop being visible.
    if not isinstance(image_size, int) or image_size < 32:
        raise ValueError(f"SynthMed image_size must be an integer >= 32, got {image_size!r}")


def _write_case(out_root: Path, split: str, index: int, seed: int, image_size: int) -> list[Sample]:
    findings, drawing, questions = draw_case(seed, split, index, image_size)
    stem = f"synthmed/{split}/{index:05d}"
    Image.fromarray(drawing.pixels).save(out_root / f"{stem}.png")
    described = []
    for finding in findings:
        mask = drawing.masks[finding.name]
        mask_path = f"{stem}_{finding.name}.png"
        _save_mask(mask, out_root / mask_path)
        described.append(
            {
                "name": finding.name,
                "side": finding.side,
                "zone": finding.zone,
                "size": finding.size,
                "mask": mask_path,
                "bbox": _bbox(mask),
                "area": round(float(mask.mean()), 6),
            }
        )
    lesion_mask = None
    if findings:
        lesion_mask = f"{stem}_lesion.png"
        _save_mask(np.logical_or.reduce(list(drawing.masks.values())), out_root / lesion_mask)

    image_id = f"synthmed-{split}-{index:05d}"
    common = {
        "image_id": image_id,
        "modality": "x-ray",
        "organ": "chest",
        "findings": described,
        "lesion_mask": lesion_mask,
    }
    samples = [
        Sample(
            id=f"{image_id}-{k}",
            task="vqa",
            image=f"{stem}.png",
            question=q.question,
            answer=q.answer,
            answer_type=q.answer_type,
            split=split,
            meta={**common, "question_kind": q.kind, "asks_about": q.asks_about},
        )
        for k, q in enumerate(questions)
    ]
    samples.append(
        Sample(
            id=f"{image_id}-{len(questions)}",
            task="report",
            image=f"{stem}.png",
            question=REPORT_INSTRUCTION,
            answer=make_report(findings),
            split=split,
            meta={**common, "question_kind": "report", "asks_about": None},
        )
    )
    return samples


def _save_mask(mask: np.ndarray, path: Path) -> None:
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def _bbox(mask: np.ndarray) -> list[int]:
    """[x0, y0, x1, y1] in pixels, x1 and y1 exclusive (PIL's box convention)."""
    rows, cols = np.nonzero(mask)
    return [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1]


def synthmed_corpus(samples: Iterable[Sample]) -> list[str]:
    """Every question and answer, in order, with repeats kept (their frequencies matter to a tokenizer)."""
    corpus = []
    for sample in samples:
        corpus.extend((sample.question, sample.answer))
    return corpus


def answer_statistics(samples: Iterable[Sample]) -> dict[str, dict[str, dict]]:
    """Per split and VQA question kind: the number of questions and each answer's share, commonest first.

    Reports are left out: their answers are free text, not a distribution worth counting.
    """
    counts: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for sample in samples:
        if sample.task == "vqa":
            counts[sample.split][sample.meta.get("question_kind", "unknown")][sample.answer] += 1
    statistics: dict[str, dict[str, dict]] = {}
    for split, kinds in counts.items():
        statistics[split] = {}
        for kind, answers in kinds.items():
            total = sum(answers.values())
            shares = {answer: n / total for answer, n in sorted(answers.items(), key=lambda item: (-item[1], item[0]))}
            statistics[split][kind] = {"n": total, "answers": shares}
    return statistics


def prior_baseline(sft_samples: Iterable[Sample], test_samples: Iterable[Sample]) -> dict[str, float | int]:
    """Test accuracy of a "model" that never looks: it answers each question with its commonest SFT answer.

    A question text never seen in SFT gets the commonest SFT answer of its answer type.
    Answers match exactly after lower-casing and trimming; reports are left out.
    """
    by_question: dict[str, Counter] = defaultdict(Counter)
    by_type: dict[str | None, Counter] = defaultdict(Counter)
    for sample in sft_samples:
        if sample.task == "vqa":
            by_question[sample.question][_normal(sample.answer)] += 1
            by_type[sample.answer_type][_normal(sample.answer)] += 1
    correct: Counter = Counter()
    total: Counter = Counter()
    for sample in test_samples:
        if sample.task != "vqa":
            continue
        votes = by_question.get(sample.question) or by_type.get(sample.answer_type)
        if not votes:
            raise ValueError(f"sample {sample.id}: no SFT answer of type {sample.answer_type!r} to answer from")
        guess = min(votes, key=lambda answer: (-votes[answer], answer))  # commonest, ties alphabetically
        total[sample.answer_type] += 1
        correct[sample.answer_type] += guess == _normal(sample.answer)
    return {
        "closed_accuracy": correct["closed"] / total["closed"] if total["closed"] else float("nan"),
        "open_accuracy": correct["open"] / total["open"] if total["open"] else float("nan"),
        "n_closed": total["closed"],
        "n_open": total["open"],
    }


def _normal(answer: str) -> str:
    return answer.strip().lower()
