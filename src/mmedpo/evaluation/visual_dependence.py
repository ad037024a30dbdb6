"""Visual dependence: does the model's answer come from the image, and from the lesion in it?

Every sample with a lesion region is answered three times: on the clean image,
on the image whose lesion region alone carries DDPM forward noise (the same
noise MMedPO's visual pairs use, `imaging.noise`), and on a blank (black)
image of the same size. Per answer type the result gives the mean score in each
condition (closed: correct or not; open: token recall; report: finding-level
clinical F1 of the report) and the share of answers that change (compared as
normalised words) when the lesion is hidden or the image blanked.

A model that ignores the image gives the same answers in all three conditions:
its `changed_noised`, `changed_blank` and both score drops are exactly zero.
Samples without a usable lesion region are not measured; each is listed in
`skipped` with the localizer's reason, so measured + skipped = samples, and
`skip_reasons` counts the reasons (numbers and quoted answers left out, so that
alike reasons group). `localizer` names where the regions came from: the
samples' annotations by default, or the run's localizer where the test split has
none (`imaging.run_localizer.evaluation_localizer`).

The model is any `Answerer`: a function (task, images, prompts) -> answers;
`greedy_answerer` wraps the target model (`models.answerer`: loaded in process
or served) with greedy decoding. A sample whose request failed is not measured:
the others are, then `StageIncomplete` says how many failed (a served model's
answers are cached, so running again asks only those).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmedpo.data.images import ImageError, open_image
from mmedpo.errors import StageIncomplete
from mmedpo.evaluation.clinical import clinical_metrics
from mmedpo.evaluation.evaluate import DEFAULT_MAX_NEW_TOKENS, render_prompt
from mmedpo.evaluation.metrics import closed_correct, normalize_report, open_recall, vqa_answer_type
from mmedpo.imaging.localizers import AnnotationLocalizer
from mmedpo.imaging.noise import add_regional_noise, image_seed
from mmedpo.imaging.regions import NoRegion
from mmedpo.models.answerer import Decoding, Question, RequestFailed
from mmedpo.records import Sample

# (task, images, prompts) -> one answer per image, or RequestFailed where a served model gave none.
Answerer = Callable[[str, list[Image.Image], list[str]], list[str | RequestFailed]]
CONDITIONS = ("clean", "noised", "blank")


def greedy_answerer(answerer, max_new_tokens: Mapping[str, int] = DEFAULT_MAX_NEW_TOKENS) -> Answerer:
    """An `Answerer` asking a `models.answerer` model (loaded or served), greedily, with the task's answer length."""
    tokens = {**DEFAULT_MAX_NEW_TOKENS, **max_new_tokens}

    def answer(task: str, images: list[Image.Image], prompts: list[str]) -> list[str | RequestFailed]:
        questions = [Question(image, prompt, Decoding(tokens[task])) for image, prompt in zip(images, prompts)]
        answers = answerer.submit(questions).result()
        return [candidates if isinstance(candidates, RequestFailed) else candidates[0] for candidates in answers]

    return answer


def visual_dependence(
    answer: Answerer,
    samples: Sequence[Sample],
    image_roots: Sequence[Path],
    localizer=None,
    timestep: int = 999,
    seed: int = 0,
    edge_sigma: float = 2.0,
    prompts: Mapping[str, str] | None = None,
    chunk_size: int = 64,
) -> dict[str, Any]:
    """Scores on clean, lesion-noised and blank images and the share of answers that change.

    Returns {"n_samples", "n_measured", "n_skipped", "skipped": {id: reason},
    "skip_reasons": {reason: count}, "localizer", "timestep", "overall": {...},
    "by_type": {answer type: {...}}, "answers": [...]}
    where each {...} has n, clean, noised, blank (mean scores), drop_noised,
    drop_blank (clean minus each) and changed_noised, changed_blank (shares);
    `answers` keeps the three answers of every measured sample.
    The lesion noise is seeded by `seed` and the image path, as in curation.
    """
    localizer = localizer or AnnotationLocalizer()
    prompts = prompts or {}
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    failures: Counter[str] = Counter()
    first_failure = ""
    for task in ("vqa", "report"):
        task_samples = [sample for sample in samples if sample.task == task]
        for start in range(0, len(task_samples), chunk_size):
            chunk, images = [], {condition: [] for condition in CONDITIONS}
            for sample in task_samples[start : start + chunk_size]:
                try:
                    views = _views(sample, image_roots, localizer, timestep, seed, edge_sigma)
                except (NoRegion, ImageError) as error:
                    skipped[sample.id] = str(error)
                    continue
                chunk.append(sample)
                for condition in CONDITIONS:
                    images[condition].append(views[condition])
            if not chunk:
                continue
            asked = [render_prompt(sample, prompts) for sample in chunk]
            answers = {condition: answer(task, images[condition], asked) for condition in CONDITIONS}
            for index, sample in enumerate(chunk):
                by_condition = {condition: answers[condition][index] for condition in CONDITIONS}
                failed = [a for a in by_condition.values() if isinstance(a, RequestFailed)]
                if failed:
                    failures[failed[0].kind] += 1
                    first_failure = first_failure or failed[0].reason
                else:
                    rows.append(_row(sample, by_condition))
    if failures:
        raise StageIncomplete(
            f"visual dependence: {sum(failures.values())} samples not measured because requests failed "
            f"({dict(failures)}); first: {first_failure[:200]}. Run again to ask only these",
            {"failed": sum(failures.values()), "failures": dict(failures)},
        )
    name = getattr(localizer, "name", type(localizer).__name__)
    return dependence_result(len(samples), rows, skipped, name, timestep)


def dependence_result(
    n_samples: int, rows: list[dict[str, Any]], skipped: dict[str, str], localizer: str, timestep: int
) -> dict:
    """`visual_dependence`'s result from its per-sample rows (also of several shards' rows, joined)."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_type.setdefault(row["answer_type"], []).append(row)
    return {
        "n_samples": n_samples,
        "n_measured": len(rows),
        "n_skipped": len(skipped),
        "skipped": skipped,
        "skip_reasons": dict(Counter(_reason_kind(reason) for reason in skipped.values())),
        "localizer": localizer,
        "timestep": timestep,
        "overall": _summary(rows),
        "by_type": {kind: _summary(group) for kind, group in sorted(by_type.items())},
        "answers": rows,
    }


def measured_line(result: Mapping[str, Any]) -> str:
    """One line: how many samples a `visual_dependence` result measured, and why the others were skipped."""
    line = f"visual dependence measured {result['n_measured']} of {result['n_samples']} samples"
    reasons = ", ".join(f"{reason} ({count})" for reason, count in result["skip_reasons"].items())
    return line + (f"; skipped: {reasons}" if reasons else "")


def _reason_kind(reason: str) -> str:
    """A skip reason without its image, quoted answers and numbers: "region covers N% of the image ..."."""
    reason = re.sub(r"^(?:image|sample) \S+: ", "", reason)
    return re.sub(r"\d+(?:\.\d+)?", "N", re.sub(r"'[^']*'", "'...'", reason))


def _views(
    sample: Sample, image_roots, localizer, timestep: int, seed: int, edge_sigma: float
) -> dict[str, Image.Image]:
    region = localizer.localize(sample, image_roots)
    clean = open_image(sample.image, image_roots)
    noised = add_regional_noise(np.asarray(clean), region.mask, timestep, image_seed(seed, sample.image), edge_sigma)
    return {"clean": clean, "noised": Image.fromarray(noised), "blank": Image.new("RGB", clean.size)}


def _row(sample: Sample, answers: dict[str, str]) -> dict[str, Any]:
    answer_type = vqa_answer_type(sample.answer_type, sample.answer) if sample.task == "vqa" else "report"
    return {
        "id": sample.id,
        "answer_type": answer_type,
        "answer": sample.answer,
        **{condition: answers[condition] for condition in CONDITIONS},
        **{f"score_{condition}": _score(answer_type, answers[condition], sample.answer) for condition in CONDITIONS},
    }


def _score(answer_type: str, prediction: str, gold: str) -> float:
    if answer_type == "closed":
        return float(closed_correct(prediction, gold))
    if answer_type == "open":
        return open_recall(prediction, gold)
    if answer_type == "report":
        return clinical_metrics([prediction], [gold])["clinical_f1"]
    raise ValueError(f"unknown answer type {answer_type!r}; valid: closed, open, report")


def _summary(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    if not rows:
        return {"n": 0}
    means = {condition: float(np.mean([row[f"score_{condition}"] for row in rows])) for condition in CONDITIONS}
    return {
        "n": len(rows),
        **means,
        "drop_noised": means["clean"] - means["noised"],
        "drop_blank": means["clean"] - means["blank"],
        "changed_noised": _changed_share(rows, "noised"),
        "changed_blank": _changed_share(rows, "blank"),
    }


def _changed_share(rows: Sequence[dict[str, Any]], condition: str) -> float:
    return float(np.mean([normalize_report(row["clean"]) != normalize_report(row[condition]) for row in rows]))
