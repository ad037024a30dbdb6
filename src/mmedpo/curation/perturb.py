"""Clinical perturbations of a ground-truth answer: the offline textual hallucination generator.

Each operation makes one clinically wrong answer that reads like the original:

    yes_no_flip      closed answers: "Yes" -> "No"
    finding_swap     a finding for another of its category: "nodule" -> "consolidation"
    laterality_swap  "right" <-> "left" (and "bilateral" -> one side)
    zone_swap        "upper" <-> "lower", "apical" <-> "basilar"
    negation_flip    "No pneumothorax." -> "Pneumothorax."; "Small right pleural effusion." -> "No pleural effusion.";
                     open answers "nodule" <-> "none"; "The heart size is normal." -> "... is enlarged."
    severity_change  "small" <-> "large", "mild" <-> "severe"
    vocabulary_swap  VQA answers other than yes/no: another answer the split gives to the same type of
                     question ("circle" -> "square", "CT" -> "MRI"), for answers the chest lexicon knows
                     nothing about; the caller passes those answers (`curation.vocabulary`)

Reports change one finding sentence per candidate. Casing, punctuation and the
surrounding whitespace are kept, so the pair differs in content, not in style.
Every candidate returned contradicts the answer by `filters.check_rejected`.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable, Sequence

from mmedpo.clinical.findings import Mention, extract_findings, find_mentions, normalise_text, split_sentences, yes_no
from mmedpo.clinical.lexicon import NONE_ANSWERS, TERMS, TERMS_BY_NAME
from mmedpo.curation.filters import check_rejected

OPERATIONS = (
    "yes_no_flip",
    "finding_swap",
    "laterality_swap",
    "zone_swap",
    "negation_flip",
    "severity_change",
    "vocabulary_swap",
)

_SIDE_SWAP = {"right": "left", "left": "right"}
_ZONE_SWAP = {
    "upper": "lower",
    "lower": "upper",
    "apical": "basilar",
    "basilar": "apical",
    "apex": "base",
    "base": "apex",
    "apices": "bases",
    "bases": "apices",
}
_SEVERITY_SWAP = {"small": "large", "large": "small", "mild": "severe", "severe": "mild", "tiny": "large"}
# Findings an open "none" answer can be turned into: the ones every chest dataset has.
_COMMON_FINDINGS = ("nodule", "pleural effusion", "consolidation", "pneumothorax", "cardiomegaly")

# Negation cue -> its affirmative, in order (longer cues first).
_AFFIRM = (
    (re.compile(r"\bno (?:evidence|signs?) of (?:an? )?", re.I), ""),
    (re.compile(r"\b(there (?:is|are)) no\b", re.I), r"\1"),
    (
        re.compile(
            r"\b(is|are) not (seen|identified|visuali[sz]ed|visible|present|demonstrated|evident|noted)\b", re.I
        ),
        r"\1 \2",
    ),
    (re.compile(r"\bnegative for\b", re.I), "positive for"),
    (re.compile(r"\bfree of(?: any)?\b", re.I), "with"),
    (re.compile(r"\babsence of\b", re.I), "presence of"),
    (re.compile(r"\bwithout\b", re.I), "with"),
    (re.compile(r"\bno\b ?", re.I), ""),
)
_NORMAL_RE = re.compile(r"\b(?:within normal limits|normal in size|normal)\b", re.I)


def match_case(template: str, word: str) -> str:
    """`word` in the casing of `template`: "YES" -> "NO", "Yes" -> "No", "yes" -> "no"."""
    if len(template) > 1 and template.isupper():
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word.lower()


def _swap_words(text: str, table: dict[str, str]) -> str:
    pattern = re.compile(r"\b(?:" + "|".join(table) + r")\b", re.I)
    return pattern.sub(lambda m: match_case(m.group(), table[m.group().lower()]), text)


def _laterality_swap(sentence: str, mentions: list[Mention], named: set[str], rng: random.Random) -> str:
    swapped = _swap_words(sentence, _SIDE_SWAP)
    if swapped == sentence:
        swapped = _swap_words(sentence, {"bilateral": rng.choice(("left", "right"))})
    return swapped


def _zone_swap(sentence: str, mentions: list[Mention], named: set[str], rng: random.Random) -> str:
    return _swap_words(sentence, _ZONE_SWAP)


def _severity_change(sentence: str, mentions: list[Mention], named: set[str], rng: random.Random) -> str:
    return _swap_words(sentence, {**_SEVERITY_SWAP, "moderate": rng.choice(("mild", "severe"))})


def _finding_swap(sentence: str, mentions: list[Mention], named: set[str], rng: random.Random) -> str:
    # Swapping an absent finding for another absent one says nothing new.
    present = [m for m in mentions if m.finding.present and not m.from_anatomy]
    if not present:
        return sentence
    mention = rng.choice(present)
    term = TERMS_BY_NAME[mention.finding.name]
    others = [t for t in TERMS if t.category == term.category and t.name != term.name]
    # A finding the answer does not name yet ("Small right pneumothorax. No pneumothorax." contradicts
    # itself), and preferably a common one, which every chest dataset's vocabulary has.
    fresh = [t for t in others if t.name not in named]
    common = [t for t in fresh if t.name in _COMMON_FINDINGS] or fresh
    if not common:
        return sentence
    target = rng.choice(common)
    old = sentence[mention.start : mention.end]
    new = match_case(old, target.display_plural if mention.plural else target.display)
    return sentence[: mention.start] + new + sentence[mention.end :]


def _negation_flip(sentence: str, mentions: list[Mention], named: set[str], rng: random.Random) -> str:
    if any(not m.finding.present and not m.from_anatomy for m in mentions):
        affirmed = sentence
        for pattern, replacement in _AFFIRM:
            affirmed = pattern.sub(replacement, affirmed)
        # "No X or Y" affirmed is "X and Y": both findings are now claimed.
        affirmed = re.sub(r"\bor\b", "and", affirmed)
        return match_case(sentence, affirmed[:1]) + affirmed[1:]
    present = [m for m in mentions if m.finding.present and not m.from_anatomy]
    if present:
        end = re.search(r"[.!?]*$", sentence).group()
        return match_case(sentence, "No ") + TERMS_BY_NAME[present[0].finding.name].display + end
    if any(m.from_anatomy and not m.finding.present for m in mentions):
        enlarged = _NORMAL_RE.sub("enlarged", sentence, count=1)
        return re.sub(r"\b([Aa]) enlarged\b", r"\1n enlarged", enlarged)
    return sentence


def _open_negation_flip(answer: str, rng: random.Random) -> str:
    """Open answers: a finding becomes "none", "none" becomes a finding; other answers stay."""
    if normalise_text(answer) in NONE_ANSWERS:
        return match_case(answer, rng.choice(_COMMON_FINDINGS))
    return match_case(answer, "none") if find_mentions(answer) else answer


# Each takes (sentence, its mentions, the findings the whole answer names, rng) and returns the new sentence.
_SENTENCE_OPERATIONS: dict[str, Callable[[str, list[Mention], set[str], random.Random], str]] = {
    "finding_swap": _finding_swap,
    "laterality_swap": _laterality_swap,
    "zone_swap": _zone_swap,
    "negation_flip": _negation_flip,
    "severity_change": _severity_change,
}


def perturb_answer(
    answer: str, answer_type: str | None, task: str, rng: random.Random, alternatives: Sequence[str] = ()
) -> list[tuple[str, str]]:
    """Clinically wrong versions of `answer`: (text, operation) pairs, at most one per operation.

    An operation that cannot change this answer's meaning (no side word to swap,
    no known finding...) gives no candidate, so the list may be empty.
    `alternatives` are answers the split gives to the same type of question (for
    `vocabulary_swap`, tried last).
    """
    if not answer.strip():
        raise ValueError("cannot perturb an empty answer")
    lead = answer[: len(answer) - len(answer.lstrip())]
    trail = answer[len(answer.rstrip()) :]
    body = answer.strip()
    word = yes_no(body) if answer_type == "closed" else None
    if word is not None:
        flipped = re.sub(r"[A-Za-z]+", lambda m: match_case(m.group(), "no" if word == "yes" else "yes"), body, count=1)
        candidates = [(flipped, "yes_no_flip")]
    else:
        candidates = [
            (text, operation)
            for operation in _SENTENCE_OPERATIONS
            if (text := _perturb_sentences(body, answer_type, task, operation, rng)) is not None
        ]
        swapped = _vocabulary_swap(body, answer_type, task, alternatives, rng) if task == "vqa" else None
        candidates += [(swapped, "vocabulary_swap")] if swapped else []
    return [(lead + text + trail, operation) for text, operation in candidates]


def _vocabulary_swap(
    body: str, answer_type: str | None, task: str, alternatives: Sequence[str], rng: random.Random
) -> str | None:
    """Another of `alternatives` (in `body`'s casing) that contradicts it, neither inside the other; or None."""
    fitting = _fitting_answers(body, answer_type, task, tuple(alternatives))
    return match_case(body, rng.choice(fitting)) if fitting else None


# A split's questions of one type share few gold answers (PathVQA: tens of thousands of questions, a few thousand
# answers), and filtering every alternative against a gold is the slow part: each (gold, type) is filtered once.
@functools.lru_cache(maxsize=1024)
def _fitting_answers(body: str, answer_type: str | None, task: str, alternatives: tuple[str, ...]) -> tuple[str, ...]:
    gold = f" {normalise_text(body)} "
    return tuple(
        other
        for other in alternatives
        if f" {other} " not in gold
        and gold not in f" {other} "
        and check_rejected(body, other, answer_type, task) is None
    )


def _perturb_sentences(body: str, answer_type: str | None, task: str, operation: str, rng: random.Random) -> str | None:
    """`body` with one sentence changed by `operation`, trying sentences in random order; None if none works."""
    spans = split_sentences(body)
    named = {finding.name for finding in extract_findings(body)}
    rng.shuffle(spans)
    for start, end in spans:
        sentence = body[start:end]
        if operation == "negation_flip" and task == "vqa" and answer_type != "closed" and len(spans) == 1:
            changed = _open_negation_flip(sentence, rng)
        else:
            changed = _SENTENCE_OPERATIONS[operation](sentence, find_mentions(sentence), named, rng)
        candidate = body[:start] + changed + body[end:]
        if changed != sentence and check_rejected(body, candidate, answer_type, task) is None:
            return candidate
    return None
