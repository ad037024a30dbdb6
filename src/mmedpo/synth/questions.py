"""What SynthMed asks and answers: per-split priors, question templates and reports.

The vocabulary is deliberately small and regular so a tiny model can learn it.
Each split has its own `SplitPrior`: the SFT split is skewed (closed questions
mostly answered "yes", findings mostly on the right, upper zone, small), the
preference split is balanced and the test split leans the other way on closed
questions, so a model that answers from the SFT language prior is wrong on test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmedpo.synth.drawing import FINDINGS, LUNG_FINDINGS, SIDES, Finding

WHICH_QUESTION = "What abnormality is seen?"
NO_FINDING = "no finding"

_ARTICLE = {
    "nodule": "a nodule",
    "effusion": "a pleural effusion",
    "consolidation": "consolidation",
    "pneumothorax": "a pneumothorax",
    "cardiomegaly": "cardiomegaly",
}
_NOUN = {
    "nodule": "nodule",
    "effusion": "pleural effusion",
    "consolidation": "consolidation",
    "pneumothorax": "pneumothorax",
}
# Which open detail questions each lung finding supports, and the attribute that answers them.
_DETAILS = {
    "nodule": ("side", "zone", "size"),
    "effusion": ("side", "size"),
    "consolidation": ("side", "zone"),
    "pneumothorax": ("side",),
}
_DETAIL_TEMPLATE = {
    "side": "Which lung has the {noun}?",
    "zone": "Which zone is the {noun} in?",
    "size": "How large is the {noun}?",
}


@dataclass(frozen=True)
class SplitPrior:
    """How one split draws its images and questions.

    `counts`: probabilities of 0, 1 and 2 findings; `yes`: chance a closed question is
    asked about a finding that is present (when the image has one); `right`, `upper`,
    `small`: chances of a lung finding's side, zone and size.
    """

    counts: tuple[float, float, float]
    yes: float
    right: float
    upper: float
    small: float


PRIORS = {
    "sft": SplitPrior(counts=(0.08, 0.52, 0.4), yes=0.95, right=0.9, upper=0.8, small=0.8),
    "pref": SplitPrior(counts=(0.25, 0.5, 0.25), yes=0.72, right=0.5, upper=0.5, small=0.5),
    "test": SplitPrior(counts=(0.3, 0.5, 0.2), yes=0.52, right=0.5, upper=0.5, small=0.5),
    # Validation: the test distribution on images of its own, for choosing settings without the test split.
    "val": SplitPrior(counts=(0.3, 0.5, 0.2), yes=0.52, right=0.5, upper=0.5, small=0.5),
}


@dataclass(frozen=True)
class Question:
    """One VQA item before it becomes a Sample."""

    kind: str
    question: str
    answer: str
    answer_type: str
    asks_about: str | None


def choose_findings(prior: SplitPrior, rng: np.random.Generator) -> list[Finding]:
    """0 to 2 distinct findings, at most one per lung, in the canonical FINDINGS order."""
    count = int(rng.choice(3, p=prior.counts))
    names = sorted(rng.choice(len(FINDINGS), size=count, replace=False).tolist())
    findings = []
    taken: set[str] = set()
    for name in (FINDINGS[i] for i in names):
        if name not in LUNG_FINDINGS:
            findings.append(Finding(name))
            continue
        side = "right" if rng.random() < prior.right else "left"
        if side in taken:  # the other lung is the only free one
            side = "left" if side == "right" else "right"
        taken.add(side)
        zone = ("upper" if rng.random() < prior.upper else "lower") if name in ("nodule", "consolidation") else None
        size = ("small" if rng.random() < prior.small else "large") if name in ("nodule", "effusion") else None
        findings.append(Finding(name, side, zone, size))
    return findings


def make_questions(findings: list[Finding], prior: SplitPrior, rng: np.random.Generator) -> list[Question]:
    """Two closed questions, the open "which" question and, when a lung finding is present, one detail question."""
    questions = [_presence(findings, prior, rng), _presence_side(findings, prior, rng), _which(findings)]
    lung = [f for f in findings if f.name in LUNG_FINDINGS]
    if lung:
        finding = lung[int(rng.integers(len(lung)))]
        details = _DETAILS[finding.name]
        kind = details[int(rng.integers(len(details)))]
        question = _DETAIL_TEMPLATE[kind].format(noun=_NOUN[finding.name])
        questions.append(Question(kind, question, getattr(finding, kind), "open", finding.name))
    return questions


def _presence(findings: list[Finding], prior: SplitPrior, rng: np.random.Generator) -> Question:
    present = [f.name for f in findings]
    if present and rng.random() < prior.yes:
        name, answer = present[int(rng.integers(len(present)))], "yes"
    else:
        absent = [name for name in FINDINGS if name not in present]
        name, answer = absent[int(rng.integers(len(absent)))], "no"
    return Question("presence", f"Is there {_ARTICLE[name]}?", answer, "closed", name)


def _presence_side(findings: list[Finding], prior: SplitPrior, rng: np.random.Generator) -> Question:
    present = [(f.name, f.side) for f in findings if f.side]
    if present and rng.random() < prior.yes:
        (name, side), answer = present[int(rng.integers(len(present)))], "yes"
    else:
        # Includes the present finding on the wrong side: a laterality negative.
        absent = [(name, side) for name in LUNG_FINDINGS for side in SIDES if (name, side) not in present]
        (name, side), answer = absent[int(rng.integers(len(absent)))], "no"
    return Question("presence_side", f"Is there {_ARTICLE[name]} in the {side} lung?", answer, "closed", name)


def _which(findings: list[Finding]) -> Question:
    answer = " and ".join(f.name for f in findings) or NO_FINDING
    return Question("which", WHICH_QUESTION, answer, "open", None)


def make_report(findings: list[Finding]) -> str:
    """A short report: one sentence per finding, the standard negations, the heart size last."""
    by_name = {f.name: f for f in findings}
    sentences = [_finding_sentence(by_name[name]) for name in LUNG_FINDINGS if name in by_name]
    if not sentences:
        sentences.append("The lungs are clear.")
    if "effusion" not in by_name:
        sentences.append("No pleural effusion.")
    if "pneumothorax" not in by_name:
        sentences.append("No pneumothorax.")
    sentences.append("The heart is enlarged." if "cardiomegaly" in by_name else "The heart size is normal.")
    return " ".join(sentences)


def _finding_sentence(finding: Finding) -> str:
    if finding.name == "nodule":
        return f"{finding.size.capitalize()} nodule in the {finding.side} {finding.zone} lung."
    if finding.name == "effusion":
        return f"{finding.size.capitalize()} {finding.side} pleural effusion."
    if finding.name == "consolidation":
        return f"Consolidation in the {finding.side} {finding.zone} lung."
    return f"{finding.side.capitalize()} pneumothorax."
