"""Is a candidate rejected answer a usable hallucination? One check, one reason code.

The released MMedPO data show what goes wrong with generated rejected answers:
generator meta-text ("Dispreferred Answer: ..."), answers identical to the
ground truth, answers many times longer than it (DPO then learns length, not
content), and answers that do not actually contradict it. `check_rejected`
catches each and says which.
"""

from __future__ import annotations

import re

from mmedpo.clinical.findings import compare_answers, normalise_text, yes_no

META_TEXT_RE = re.compile(
    r"dispreferred|\bas an ai\b|contradicts? the original|original answer|\bhere is\b|candidate answer"
    r"|based on the (?:information|original|given|provided)",
    re.IGNORECASE,
)


def contradicts(gold: str, candidate: str, answer_type: str | None) -> bool:
    """Whether `candidate` says something clinically different from `gold`.

    Closed answers: the other yes/no word. Open answers and reports: a finding
    disagreement (presence, side, zone or severity); when the gold answer names
    no known finding, the gold answer's words not appearing in the candidate.
    """
    gold_word = yes_no(gold) if answer_type == "closed" else None
    if gold_word is not None:
        candidate_word = yes_no(candidate)
        return candidate_word is not None and candidate_word != gold_word
    disagreements = compare_answers(gold, candidate)
    if disagreements is not None:
        return bool(disagreements)
    return f" {normalise_text(gold)} " not in f" {normalise_text(candidate)} "


def check_rejected(
    gold: str, candidate: str, answer_type: str | None, task: str, max_length_ratio: float = 3.0
) -> str | None:
    """None if `candidate` is an acceptable rejected answer for `gold`, else why not.

    Reason codes: "empty", "identical", "meta_text", "too_long" (more than
    `max_length_ratio` times the gold answer's words), "not_contradicting".
    `task` is "vqa" or "report"; both are judged the same way today.
    """
    if task not in ("vqa", "report"):
        raise ValueError(f"task must be 'vqa' or 'report', got {task!r}")
    if not candidate.strip():
        return "empty"
    if normalise_text(candidate) == normalise_text(gold):
        return "identical"
    if META_TEXT_RE.search(candidate):
        return "meta_text"
    if len(candidate.split()) > max_length_ratio * max(len(gold.split()), 1):
        return "too_long"
    if not contradicts(gold, candidate, answer_type):
        return "not_contradicting"
    return None
