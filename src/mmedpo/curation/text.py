"""Textual preference pairs: the ground truth over a plausible hallucination.

Run it:

    mmedpo curate text --config configs/demo.yaml

For every sample the generators propose rejected answers: the target model
sampled on (image, question) and clinical perturbations of the ground truth.
A candidate is kept only when it contradicts the ground truth (see
`curation.filters.check_rejected`); model candidates come first, because a
hallucination the model itself produces is the one worth unlearning.
Samples with no acceptable candidate go to the rejects file with every
candidate's drop reason, so samples read = samples paired + samples rejected.
"""

from __future__ import annotations

import random
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mmedpo.config import CurateTextConfig
from mmedpo.curation.answering import answer_samples
from mmedpo.curation.filters import check_rejected
from mmedpo.curation.perturb import perturb_answer
from mmedpo.data.images import ImageError, open_image
from mmedpo.progress import progress_bar
from mmedpo.records import JsonlStore, PreferencePair, Reject, Sample, rejects_path

CHUNK = 32  # samples generated and written together; also the resume granularity


@dataclass
class CurationSummary:
    read: int = 0
    paired: int = 0
    rejected: int = 0
    skipped_done: int = 0
    pairs_by_generator: Counter = field(default_factory=Counter)
    drops: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {
            "read": self.read,
            "paired": self.paired,
            "rejected": self.rejected,
            "already_done": self.skipped_done,
            "pairs_by_generator": dict(self.pairs_by_generator),
            "drop_reasons": dict(self.drops),
        }


def sample_rng(seed: int, sample_id: str) -> random.Random:
    """A generator of its own per sample, so a resumed run draws what a whole run draws."""
    return random.Random(seed * 1_000_003 + zlib.crc32(sample_id.encode()))


def candidates_for(sample: Sample, model_answers: Sequence[str], seed: int) -> list[tuple[str, str]]:
    """(text, generator) candidates: the model's samples first, then perturbations."""
    found = [(text, "target") for text in model_answers]
    rng = sample_rng(seed, sample.id)
    perturbed = perturb_answer(sample.answer, sample.answer_type, sample.task, rng)
    found += [(text, f"perturb:{op}") for text, op in perturbed]
    return found


def select_pairs(
    sample: Sample, candidates: Sequence[tuple[str, str]], settings: CurateTextConfig, summary: CurationSummary
) -> list[PreferencePair]:
    """The first acceptable, distinct candidates, as pairs; counts every drop."""
    pairs, seen = [], set()
    for text, generator in candidates:
        reason = check_rejected(sample.answer, text, sample.answer_type, sample.task, settings.max_length_ratio)
        if reason is None and text.strip().lower() in seen:
            reason = "duplicate"
        if reason is not None:
            summary.drops[f"{generator.split(':')[0]}:{reason}"] += 1
            continue
        seen.add(text.strip().lower())
        pairs.append(
            PreferencePair(
                id=f"{sample.id}-text-{len(pairs)}",
                sample_id=sample.id,
                task=sample.task,
                kind="text",
                image=sample.image,
                question=sample.question,
                chosen=sample.answer,
                rejected=text.strip(),
                answer_type=sample.answer_type,
                provenance={"generator": generator},
            )
        )
        if len(pairs) == settings.pairs_per_sample:
            break
    return pairs


def curate_text(
    samples: Sequence[Sample],
    out_path: Path,
    settings: CurateTextConfig,
    image_roots: Sequence[Path],
    seed: int = 0,
    model_dir: Path | None = None,
    show_progress: bool = True,
) -> CurationSummary:
    """Write textual pairs for `samples` to `out_path`, resuming what is already there."""
    store = JsonlStore(out_path, PreferencePair)
    reject_store = JsonlStore(rejects_path(out_path), Reject)
    done = {pair.sample_id for pair in store} | {reject.id for reject in reject_store}
    summary = CurationSummary(read=len(samples))
    todo = [sample for sample in samples if sample.id not in done]
    summary.skipped_done = len(samples) - len(todo)
    model = processor = None
    if "target" in settings.generators and todo:
        if model_dir is None:
            raise ValueError("curate text: the 'target' generator needs a model")
        from mmedpo.models.vlm import load_vlm

        model, processor = load_vlm(model_dir)
    with progress_bar("curate text", len(todo), show_progress) as advance:
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start : start + CHUNK]
            answers = _sample_model(model, processor, chunk, image_roots, settings, seed + start)
            pairs, rejects = [], []
            for sample, model_answers in zip(chunk, answers):
                if isinstance(model_answers, ImageError):
                    rejects.append(Reject(id=sample.id, source=sample.image, reason=str(model_answers)))
                    continue
                chosen = select_pairs(sample, candidates_for(sample, model_answers, seed), settings, summary)
                if chosen:
                    pairs += chosen
                    summary.pairs_by_generator.update(p.provenance["generator"].split(":")[0] for p in chosen)
                else:
                    reason = "no candidate contradicts the answer"
                    rejects.append(Reject(id=sample.id, source=str(out_path), reason=reason))
            store.extend(pairs)
            reject_store.extend(rejects)
            summary.paired += len({p.sample_id for p in pairs})
            summary.rejected += len(rejects)
            advance(len(chunk))
    return summary


def _sample_model(model, processor, chunk, image_roots, settings, seed) -> list:
    """Sampled answers per sample (none without a model); an unreadable image stands as its error."""
    results: list = [[] for _ in chunk]
    if model is None:
        return results
    readable, images = [], []
    for index, sample in enumerate(chunk):
        try:
            images.append(open_image(sample.image, image_roots))
            readable.append(index)
        except ImageError as error:
            results[index] = error
    answers = answer_samples(
        model,
        processor,
        [chunk[i] for i in readable],
        images,
        do_sample=True,
        temperature=settings.temperature,
        num_return_sequences=settings.candidates,
        seed=seed,
    )
    for index, candidates in zip(readable, answers):
        results[index] = candidates
    return results
