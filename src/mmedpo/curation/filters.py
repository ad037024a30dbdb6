"""Is a candidate rejected answer a usable hallucination? One check, one reason code.

The released MMedPO data show what goes wrong with generated rejected answers:
generator meta-text ("Dispreferred Answer: ..."), answers identical to the
ground truth, answers many times longer than it (DPO then learns length, not
content), and answers that do not actually contradict it. A small target model
sampled at temperature 1 adds junk of its own: broken bytes ("\ufffd"), stray
letters ("W", "e yes"), loops ("blue blue"), a "yes" to "what is the blue
shape?", a shape named for a colour question. A pair built on such an answer
teaches the model nothing about the image. `check_rejected` catches each and
says which.
"""

from __future__ import annotations

import re

from mmedpo.clinical.findings import compare_answers, normalise_text, yes_no
from mmedpo.curation.vocabulary import AnswerVocabulary, is_yes_no

META_TEXT_RE = re.compile(
    r"dispreferred|\bas an ai\b|contradicts? the original|original answer|\bhere is\b|candidate answer"
    r"|based on the (?:information|original|given|provided)",
    re.IGNORECASE,
)
# A replacement character (bytes a tokenizer could not decode) or a control character other than whitespace.
MALFORMED_RE = re.compile(r"[\ufffd\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# A Latin letter standing alone between spaces or sentence punctuation ("W", the "e" of "e yes"); in "X-ray",
# "patient's" and "V/Q" it is part of a word, and "2 x 3 cm" is a measurement.
_LONE_LETTER_RE = re.compile(r"""(?<![^\s"(\[])[A-Za-z](?![^\s.,;:!?"')\]])""")
_TIMES_RE = re.compile(r"\d\s*[xX]\s*\d")
_WORD_LETTERS = {"a", "i"}
_SIDES = {"L", "R"}  # radiology's shorthand for left and right: "nodule L"
# Words a capital letter names a kind of: "hepatitis C", "Type B dissection", "zone B", "grade A", "vitamin D".
_LABELLED_WORDS = {
    "type", "zone", "grade", "stage", "class", "group", "level", "phase", "segment", "category", "lead",
    "hepatitis", "vitamin", "factor", "pattern", "influenza", "schatzki", "kerley",
}  # fmt: skip
# A word said twice in a row ("blue blue", "nodule nodule nodule"): a sampler stuck in a loop.
_REPEAT_RE = re.compile(r"\b(\w+)\s+\1\b", re.IGNORECASE)


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


def is_fragment(candidate: str, gold: str) -> bool:
    """A stray Latin letter the gold answer does not have: "W", "e yes", "No W" (but "a", "I", "2 x 3 cm" and the
    sides "L", "R" are words, and a capital after a word that names kinds is a type or a zone: "hepatitis C",
    "Type B dissection")."""
    allowed = _WORD_LETTERS | {letter.lower() for letter in _LONE_LETTER_RE.findall(gold)}
    text = _TIMES_RE.sub(" ", candidate)
    return any(
        match.group().lower() not in allowed and match.group() not in _SIDES and not _is_label(text, match.start())
        for match in _LONE_LETTER_RE.finditer(text)
    )


def _is_label(text: str, start: int) -> bool:
    """Whether the lone letter at `start` is a capital right after a word that names kinds (`_LABELLED_WORDS`)."""
    before = text[:start].split()
    return text[start].isupper() and bool(before) and before[-1].lower() in _LABELLED_WORDS


def is_repeated(candidate: str, gold: str) -> bool:
    """A word repeated at once ("blue blue") where the gold answer repeats none."""
    return bool(_REPEAT_RE.search(candidate)) and not _REPEAT_RE.search(gold)


def wrong_type(gold: str, candidate: str, answer_type: str | None) -> bool:
    """A closed yes/no question answered without yes or no, or any other question answered by a bare yes/no
    or with a "yes" in it ("yes blue yes"; "no" may negate a finding: "no nodule").

    Without an answer type, a bare yes/no gold answer marks a yes/no question.
    """
    if answer_type == "closed" and yes_no(gold) is not None or answer_type is None and is_yes_no(gold):
        return yes_no(candidate) is None
    says_yes = "yes" in normalise_text(candidate).split() and "yes" not in normalise_text(gold).split()
    return is_yes_no(candidate) or says_yes


def check_rejected(
    gold: str,
    candidate: str,
    answer_type: str | None,
    task: str,
    max_length_ratio: float = 3.0,
    kind: str | None = None,
    vocabulary: AnswerVocabulary | None = None,
) -> str | None:
    """None if `candidate` is an acceptable rejected answer for `gold`, else why not.

    Reason codes, checked in this order: "empty"; "malformed" (a replacement or
    control character); "fragment" (a stray letter, `is_fragment`); "repeated"
    (a word twice in a row, `is_repeated`); "identical";
    "meta_text"; "too_long" (more than `max_length_ratio` times the gold answer's
    words); for VQA, "wrong_type" (`wrong_type`) and, given the split's
    `vocabulary` and the question's type `kind`, "off_type" (an answer the split
    gives only to other types of question); "not_contradicting".
    `task` is "vqa" or "report".
    """
    if task not in ("vqa", "report"):
        raise ValueError(f"task must be 'vqa' or 'report', got {task!r}")
    if not candidate.strip():
        return "empty"
    if MALFORMED_RE.search(candidate):
        return "malformed"
    if is_fragment(candidate, gold):
        return "fragment"
    if is_repeated(candidate, gold):
        return "repeated"
    if normalise_text(candidate) == normalise_text(gold):
        return "identical"
    if META_TEXT_RE.search(candidate):
        return "meta_text"
    if len(candidate.split()) > max_length_ratio * max(len(gold.split()), 1):
        return "too_long"
    if task == "vqa" and wrong_type(gold, candidate, answer_type):
        return "wrong_type"
    if task == "vqa" and vocabulary is not None and kind is not None and vocabulary.off_type(candidate, kind):
        return "off_type"
    if not contradicts(gold, candidate, answer_type):
        return "not_contradicting"
    return None
