"""Judges: score how clinically relevant a preference pair is, in [0, 1], with a reason.

A judge has a `name`, a `version` (part of the judge cache key: bump it when
scores would change) and `score(question, chosen, rejected) -> (float, str)`.
`JUDGES` maps the names a config uses to judge classes; add one with
`@register("name")` on the class.

The offline `FindingsJudge` reads the findings of both answers and scores the
pair by the clinical severity (`clinical.lexicon`) of the worst finding they
disagree on: inventing a large effusion or a pneumothorax is a costly error, a
rewording that keeps every finding costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from mmedpo.clinical.findings import compare_answers, extract_findings, normalise_text, worst_severity, yes_no
from mmedpo.clinical.lexicon import UNRECOGNISED_SEVERITY, clinical_severity

JUDGES: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator adding a judge class to `JUDGES` under `name`."""

    def add(cls: type) -> type:
        if name in JUDGES:
            raise ValueError(f"judge {name!r} is already registered")
        JUDGES[name] = cls
        return cls

    return add


@register("findings")
class FindingsJudge:
    """Offline clinical judge: the severity of the worst finding the two answers disagree on."""

    name = "findings"
    version = "1"

    def score(self, question: str, chosen: str, rejected: str) -> tuple[float, str]:
        """(score in [0, 1], reason) for preferring `chosen` over `rejected` as answers to `question`."""
        # A bare "yes"/"no" ground truth marks a closed question ("No pleural effusion." is a report).
        rejected_word = yes_no(rejected)
        if normalise_text(chosen) in ("yes", "no") and rejected_word:
            return self._closed(question, normalise_text(chosen), rejected_word)
        disagreements = compare_answers(chosen, rejected)
        if disagreements == []:
            return 0.0, "same findings (rewording)"
        if disagreements:
            scored = [(clinical_severity(d.name, d.severity), d) for d in disagreements]
            worst = max(value for value, _ in scored)
            details = ", ".join(f"{d.name} {d.aspect} ({value:.2f})" for value, d in scored)
            return worst, f"findings disagree: {details}"
        if f" {normalise_text(chosen)} " in f" {normalise_text(rejected)} ":
            return 0.0, "no known finding; the rejected answer contains the chosen one"
        # "right" vs "left" to "Which lung has the nodule?" is an error about the nodule.
        return _about_question(question, "answers differ")

    def _closed(self, question: str, chosen_word: str, rejected_word: str) -> tuple[float, str]:
        if chosen_word == rejected_word:
            return 0.0, f"same answer ({chosen_word})"
        return _about_question(question, "yes/no flip")


def _about_question(question: str, what: str) -> tuple[float, str]:
    """An error about what the question asks: the severity of the worst finding it names."""
    asked = extract_findings(question)
    if not asked:
        return UNRECOGNISED_SEVERITY, f"{what}; the question names no known finding"
    value, name = max((clinical_severity(f.name, worst_severity([f])), f.name) for f in asked)
    return value, f"{what} about {name} ({value:.2f})"
