"""How a chunk of samples with noised images becomes visual pairs and rejects (`curation.visual`).

The target model answers each question on the noised image; an answer the
filters accept as wrong is the rejected answer, and the model is asked again on
the clean image to say which error the pair shows (`lesion-neglect`: right on
the clean image; `wrong-on-clean`). Image-conditional pairs (`rejected="gold"`)
ask no model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mmedpo.curation.answering import sample_questions
from mmedpo.curation.filters import check_rejected
from mmedpo.curation.summary import CurationSummary
from mmedpo.data.images import load_image, open_image
from mmedpo.models.answerer import RequestFailed
from mmedpo.records import PreferencePair, Reject, Sample

KEPT = "answer on the noised image kept"  # a reject whose noised answer the filters refused (`check_rejected`)


def right_answer(sample: Sample, answer: str) -> bool:
    """Whether `answer` agrees with the sample's gold answer: the same, or contradicting nothing in it."""
    reason = check_rejected(sample.answer, answer, sample.answer_type, sample.task, max_length_ratio=math.inf)
    return reason in ("identical", "not_contradicting")


@dataclass
class Pairing:
    """Turns a chunk of samples whose images are noised into visual pairs and rejects.

    `answerer` is the target model (`models.answerer`), asked greedily on the noised
    image and, where that answer is wrong, on the clean one; None for
    image-conditional (gold) pairs.
    """

    image_roots: Sequence[Path]
    noised_root: Path
    answerer: object | None
    noise_region: str = "lesion"
    rejected: str = "model-answer"
    keep: str = "all"

    @property
    def generator(self) -> str:
        return "gold" if self.rejected == "gold" else "noised-target"

    def questions(self, chunk: Sequence[Sample], noised: dict) -> tuple[tuple, list]:
        """((chunk, its rejects so far, its jobs), the questions on the noised images: none for gold pairs)."""
        rejects, jobs = [], []
        for sample in chunk:
            made = noised[sample.image]
            if isinstance(made, str):
                rejects.append(Reject(id=sample.id, source=sample.image, reason=made))
            else:
                jobs.append((sample, *made))
        if self.rejected == "gold":
            return (chunk, rejects, jobs), []
        images = [load_image(self.noised_root / relative) for _, relative, _ in jobs]
        return (chunk, rejects, jobs), sample_questions([job[0] for job in jobs], images)

    def screen(self, jobs: list, answers: list, rejects: list[Reject], summary: CurationSummary) -> tuple:
        """(the jobs whose answer on the noised image is a usable rejected answer, with that answer; their
        questions on the clean image, sent) from the jobs' answers on the noised images. The others join
        `rejects`; a job whose request failed is neither: counted in `summary`, left for the next run."""
        if self.rejected == "gold":
            return [], None
        wrong = []
        for job, candidates in zip(jobs, answers):
            sample, relative, _ = job
            if self._failed(candidates, summary):
                continue
            reason = check_rejected(
                sample.answer, candidates[0], sample.answer_type, sample.task, max_length_ratio=math.inf
            )
            if reason is None:
                wrong.append((job, candidates[0]))
            else:
                rejects.append(Reject(id=sample.id, source=relative, reason=f"{KEPT}: {reason}"))
        samples = [job[0] for job, _ in wrong]
        images = [open_image(sample.image, self.image_roots) for sample in samples]
        return wrong, self.answerer.submit(sample_questions(samples, images))  # only these are asked on it

    def pairs(self, jobs: list, wrong: list, clean, rejects: list[Reject], summary: CurationSummary) -> list:
        """The pairs of a chunk: every job for gold pairs, else the `wrong` ones with their `clean` answers."""
        if self.rejected == "gold":
            return [self.pair(sample, relative, provenance, sample.answer) for sample, relative, provenance in jobs]
        pairs = []
        for ((sample, relative, provenance), noised_answer), candidates in zip(wrong, clean.result()):
            if self._failed(candidates, summary):
                continue
            clean_answer = candidates[0]
            right = right_answer(sample, clean_answer)
            if self.keep == "neglect" and not right:
                reason = f"wrong on the clean image too (keep: neglect): {clean_answer!r}"
                rejects.append(Reject(id=sample.id, source=relative, reason=reason))
                continue
            error = "lesion-neglect" if right else "wrong-on-clean"
            outcome = {"clean_answer": clean_answer, "right_on_clean": right, "error": error}
            pairs.append(self.pair(sample, relative, {**provenance, **outcome}, noised_answer))
        return pairs

    def _failed(self, candidates, summary: CurationSummary) -> bool:
        """Whether a request failed (counted in `summary`): no answer, the sample waits for the next run."""
        if not isinstance(candidates, RequestFailed):
            return False
        summary.failed += 1
        summary.failures[f"{self.generator}: {candidates.kind}"] += 1
        summary.first_failure = summary.first_failure or candidates.reason
        return True

    def pair(self, sample: Sample, relative: str, provenance: dict, rejected: str) -> PreferencePair:
        suffix = "-visual" if self.noise_region == "lesion" else "-visual-whole"
        return PreferencePair(
            id=f"{sample.id}{suffix}{'-gold' if self.rejected == 'gold' else ''}",
            sample_id=sample.id,
            task=sample.task,
            kind="visual",
            image=sample.image,
            rejected_image=relative,
            region=self.noise_region,
            rejected_text="gold" if self.rejected == "gold" else None,
            question=sample.question,
            chosen=sample.answer,
            rejected=rejected,
            answer_type=sample.answer_type,
            provenance={"generator": self.generator, **provenance},
        )
