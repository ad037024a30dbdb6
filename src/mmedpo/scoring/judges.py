"""Judges: score how clinically relevant a preference pair is, in [0, 1], with a reason.

A judge subclasses `Judge`: a `name`, a `version` (its prompt version, part of
the judge cache key: bump it when scores would change), the `model` it runs on
(also in the key) and `score(question, chosen, rejected) -> Verdict`. A verdict
whose score is None means the judge could not score the pair (an unparseable
reply) or its request failed (`Verdict.failure`): `reason` says why and the
panel leaves the pair unscored instead of guessing a weight. Judges that batch or run requests
concurrently override `score_many`, which yields verdicts as they come, so the
panel caches each one at once. `mmedpo.registry.JUDGES` maps the names a config
uses to judge classes; add a judge there with one line.

A judge that has nothing to say about a pair returns `not_applicable(reason)`:
no score, and not a failure either. The panel then weights the pair by the
members that do apply (`scoring.panel`, docs/method.md).

The offline `FindingsJudge` reads the findings of both answers and scores the
pair by the clinical severity (`clinical.lexicon`) of the worst finding they
disagree on: inventing a large effusion or a pneumothorax is a costly error, a
rewording that keeps every finding costs nothing. Where neither the answers nor
the question name a finding its lexicon knows (a colour, a shape, an organ), it
does not apply.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

from mmedpo.clinical.findings import compare_answers, extract_findings, normalise_text, worst_severity, yes_no
from mmedpo.clinical.lexicon import clinical_severity


class Verdict(NamedTuple):
    """A judge's score in [0, 1] (None: could not score) and its short reason.

    `failure` is set (e.g. "HTTP 503") when no verdict came back because the
    request failed: a transport or HTTP error, or a body that is not a chat
    completion. A retry may succeed, so the score stage is left incomplete and
    asks again next run. A judge that answered but could not score (an
    unparseable reply, a non-answer) is a verdict: the pair is rejected, for good.
    """

    score: float | None
    reason: str
    failure: str = ""
    applicable: bool = True  # False: the judge has nothing to say about this pair (`not_applicable`)


def not_applicable(reason: str) -> Verdict:
    """The verdict of a judge that does not apply to a pair: no score, no failure."""
    return Verdict(None, f"not applicable: {reason}", applicable=False)


class Judge:
    """Base of every judge; subclasses set `name` and `version` and implement `score`."""

    name = ""
    version = "1"
    model = ""  # what the judge runs on, e.g. an endpoint's model name or a local path
    weights = ""  # a fingerprint of local weights (cache.folder_fingerprint); part of the cache key
    cached = True  # go through the judge cache (worth it for anything slower than a lookup)

    def score(self, question: str, chosen: str, rejected: str) -> Verdict | tuple[float | None, str]:
        """The verdict on preferring `chosen` over `rejected` as answers to `question`."""
        raise NotImplementedError

    def score_many(self, items: Sequence[tuple[str, str, str]]) -> Iterator[tuple[int, Verdict]]:
        """Yield (index into items, verdict) for every (question, chosen, rejected), in any order."""
        for index, (question, chosen, rejected) in enumerate(items):
            yield index, Verdict(*self.score(question, chosen, rejected))


class FindingsJudge(Judge):
    """Offline clinical judge: the severity of the worst finding the two answers disagree on."""

    name = "findings"
    version = "2"  # 2: "not applicable" where the lexicon knows nothing, instead of a constant 0.5
    # Instant and defined by the lexicon in code: a cache would only risk serving stale severities.
    cached = False

    def score(self, question: str, chosen: str, rejected: str) -> Verdict:
        """The verdict (score in [0, 1], reason) on preferring `chosen` over `rejected` as answers to `question`."""
        # A bare "yes"/"no" ground truth marks a closed question ("No pleural effusion." is a report).
        rejected_word = yes_no(rejected)
        if normalise_text(chosen) in ("yes", "no") and rejected_word:
            return self._closed(question, normalise_text(chosen), rejected_word)
        disagreements = compare_answers(chosen, rejected)
        if disagreements == []:
            return Verdict(0.0, "same findings (rewording)")
        if disagreements:
            scored = [(clinical_severity(d.name, d.severity), d) for d in disagreements]
            worst = max(value for value, _ in scored)
            details = ", ".join(f"{d.name} {d.aspect} ({value:.2f})" for value, d in scored)
            return Verdict(worst, f"findings disagree: {details}")
        if f" {normalise_text(chosen)} " in f" {normalise_text(rejected)} ":
            return Verdict(0.0, "no known finding; the rejected answer contains the chosen one")
        # "right" vs "left" to "Which lung has the nodule?" is an error about the nodule.
        return _about_question(question, "answers differ")

    def _closed(self, question: str, chosen_word: str, rejected_word: str) -> Verdict:
        if chosen_word == rejected_word:
            return Verdict(0.0, f"same answer ({chosen_word})")
        return _about_question(question, "yes/no flip")


def _about_question(question: str, what: str) -> Verdict:
    """An error about what the question asks: the severity of the worst finding it names (none: not applicable)."""
    asked = extract_findings(question)
    if not asked:
        return not_applicable(f"{what}, and neither they nor the question name a finding the lexicon knows")
    value, name = max((clinical_severity(f.name, worst_severity([f])), f.name) for f in asked)
    return Verdict(value, f"{what} about {name} ({value:.2f})")
