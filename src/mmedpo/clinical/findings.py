"""Finding extraction from radiology text: which findings are said present or absent, where, and how bad.

A small NegEx-style reader, enough for chest X-ray reports and short VQA answers:

- text is split into sentences, sentences into clauses (at "but", "however",
  "which", ";", "there is"...), because negation and uncertainty reach to the
  end of their clause and no further: "No pleural effusion or pneumothorax."
  negates both, "No effusion, but a small pneumothorax." only the first;
- findings are named by the synonyms in `lexicon.TERMS` (longest phrase wins),
  or by anatomy said to be normal or enlarged ("The heart size is normal.");
- a finding is absent after a negation cue ("no", "without", "free of",
  "negative for") or before a trailing one ("is not seen"), uncertain in a
  clause that hedges ("may", "possible", "cannot be excluded");
- side, zone and size/severity words are read next to the finding, first
  before it (up to the previous finding), then after it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from mmedpo.clinical.lexicon import (
    ANATOMY,
    GRADE,
    NONE_ANSWERS,
    NORMAL_STATE,
    SEVERITY_WORDS,
    SIDE_WORDS,
    TERMS,
    ZONE_WORDS,
    Term,
)


@dataclass(frozen=True)
class Finding:
    """One mention of a finding in a sentence."""

    name: str
    present: bool
    uncertain: bool
    side: str | None
    zone: str | None
    severity: str | None
    sentence: str


@dataclass(frozen=True)
class Mention:
    """A finding with where it was named in its sentence (used to rewrite the sentence)."""

    finding: Finding
    start: int
    end: int
    plural: bool
    from_anatomy: bool


@dataclass(frozen=True)
class Disagreement:
    """A finding two texts disagree on: its presence, side, zone or size/severity."""

    name: str
    aspect: str
    severity: str | None


def _alternation(words: Iterable[str]) -> str:
    # Longest first, so "pleural effusion" wins over "effusion" at the same position.
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_PHRASES: dict[str, tuple[Term, bool]] = {}
for _term in TERMS:
    _PHRASES.update({phrase: (_term, False) for phrase in _term.synonyms})
    _PHRASES.update({phrase: (_term, True) for phrase in _term.plurals})

_TERM_RE = re.compile(rf"\b(?:{_alternation(_PHRASES)})\b", re.IGNORECASE)
_ANATOMY_RE = {name: re.compile(rf"\b{anatomy}\b", re.IGNORECASE) for name, (anatomy, _) in ANATOMY.items()}
_ABNORMAL_RE = {name: re.compile(rf"\b(?:{words})\b", re.I) for name, (_, words) in ANATOMY.items() if words}
_NORMAL_RE = re.compile(rf"\b(?:{NORMAL_STATE})\b", re.IGNORECASE)
_SIDE_RE = re.compile(rf"\b(?:{_alternation(SIDE_WORDS)})\b", re.IGNORECASE)
# "upper limits of normal" is no zone.
_ZONE_RE = re.compile(rf"\b(?:{_alternation(ZONE_WORDS)})\b(?!\s+limits?)", re.IGNORECASE)
_SEVERITY_RE = re.compile(rf"\b(?:{_alternation(SEVERITY_WORDS)})\b", re.IGNORECASE)

_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n+")
_CLAUSE_BREAK = re.compile(
    r";|\b(?:but|however|although|though|whereas|except|aside from|apart from|which|while|there (?:is|are))\b",
    re.IGNORECASE,
)
UNCERTAIN_RE = re.compile(
    r"\b(?:may|might|could|possible|possibly|probable|probably|likely|questionable|suspicious for|suspected"
    r"|suggestive of|suggesting|suggests?|concerning for|versus|vs|differential|borderline"
    r"|can ?not be (?:excluded|ruled out)|not (?:be )?(?:excluded|ruled out))\b",
    re.IGNORECASE,
)
NEGATION_AFTER_RE = re.compile(
    r"\b(?:(?:is|are|was|were)\s+)?(?:not\s+(?:seen|identified|visuali[sz]ed|visible|present|demonstrated|evident"
    r"|noted|appreciated|detected)|absent|resolved)\b",
    re.IGNORECASE,
)
NEGATION_BEFORE_RE = re.compile(r"\b(?:no|not|without|free of|negative for|absence of|neither|nor)\b", re.IGNORECASE)

_WINDOW_WORDS = 6


def split_sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) spans of the sentences of `text`, surrounding whitespace excluded."""
    spans, start = [], 0
    for match in [*_SENTENCE_BREAK.finditer(text), None]:
        end = match.start() if match else len(text)
        piece = text[start:end]
        if piece.strip():
            left = start + len(piece) - len(piece.lstrip())
            spans.append((left, start + len(piece.rstrip())))
        start = match.end() if match else end
    return spans


def _clauses(sentence: str) -> list[tuple[int, int]]:
    cuts = [0, *(m.start() for m in _CLAUSE_BREAK.finditer(sentence)), len(sentence)]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def _blank(text: str, pattern: re.Pattern) -> str:
    """`text` with the matches of `pattern` replaced by spaces (offsets kept)."""
    return pattern.sub(lambda m: " " * len(m.group()), text)


def _last_words(text: str, count: int = _WINDOW_WORDS) -> str:
    words = list(re.finditer(r"[\w-]+", text))
    return text[words[-count].start() :] if len(words) > count else text


def _first_words(text: str, count: int = _WINDOW_WORDS) -> str:
    words = list(re.finditer(r"[\w-]+", text))
    return text[: words[count - 1].end()] if len(words) > count else text


def _modifier(pattern: re.Pattern, table: dict[str, str], before: str, after: str) -> str | None:
    """The modifier nearest before the finding, else the first after it."""
    found = pattern.findall(before)
    if found:
        return table[found[-1].lower()]
    found = pattern.findall(after)
    return table[found[0].lower()] if found else None


def _anatomy_state(name: str, clause: str, start: int, end: int) -> bool | None:
    """True if the anatomy at clause[start:end] is said enlarged, False if normal, None if neither."""
    after = _first_words(clause[end:], 8)
    before = _last_words(clause[:start], 4)
    abnormal = _ABNORMAL_RE.get(name)
    for window in (after, before):
        if abnormal and (hit := abnormal.search(window)):
            # "the heart is not enlarged": a negation between anatomy and state word flips it.
            between = window[: hit.start()] if window is after else ""
            return not NEGATION_BEFORE_RE.search(between)
        if _NORMAL_RE.search(window):
            return False
    return None


def _spans(clause: str) -> list[tuple[int, int, str, bool, bool | None]]:
    """Findings named in one clause, in order: (start, end, name, plural, state).

    `state` is None for a finding named by a term (its negation is read from the
    clause), else whether the anatomy was said abnormal (True) or normal (False).
    Anatomy said neither ("the mediastinum") names no finding.
    """
    spans: list[tuple[int, int, str, bool, bool | None]] = []
    for match in _TERM_RE.finditer(clause):
        term, plural = _PHRASES[match.group().lower()]
        spans.append((match.start(), match.end(), term.name, plural, None))
    for name, pattern in _ANATOMY_RE.items():
        for match in pattern.finditer(clause):
            overlaps = any(s < match.end() and match.start() < e for s, e, *_ in spans)
            state = None if overlaps else _anatomy_state(name, clause, match.start(), match.end())
            if state is not None:
                spans.append((match.start(), match.end(), name, False, state))
    return sorted(spans, key=lambda span: span[0])


def find_mentions(sentence: str) -> list[Mention]:
    """The findings named in one sentence, with their spans in it."""
    mentions = []
    for c_start, c_end in _clauses(sentence):
        clause = sentence[c_start:c_end]
        uncertain = bool(UNCERTAIN_RE.search(clause))
        # Hedges such as "cannot be excluded" contain "not" but do not negate.
        unhedged = _blank(clause, UNCERTAIN_RE)
        after_cues = [m.start() for m in NEGATION_AFTER_RE.finditer(unhedged)]
        before_cues = [m.start() for m in NEGATION_BEFORE_RE.finditer(_blank(unhedged, NEGATION_AFTER_RE))]
        spans = _spans(clause)
        for index, (start, end, name, plural, state) in enumerate(spans):
            previous_end = spans[index - 1][1] if index else 0
            next_start = spans[index + 1][0] if index + 1 < len(spans) else len(clause)
            before = _last_words(clause[previous_end:start])
            after = _first_words(clause[end:next_start])
            if state is None:
                negated = any(c < start for c in before_cues) or any(c >= end for c in after_cues)
                present = not negated
            else:
                present = state
            finding = Finding(
                name=name,
                present=present,
                uncertain=uncertain,
                side=_modifier(_SIDE_RE, SIDE_WORDS, before, after),
                zone=_modifier(_ZONE_RE, ZONE_WORDS, before, after),
                severity=_modifier(_SEVERITY_RE, SEVERITY_WORDS, before, after),
                sentence=sentence.strip(),
            )
            mentions.append(Mention(finding, c_start + start, c_start + end, plural, state is not None))
    return mentions


def extract_findings(text: str) -> list[Finding]:
    """Every finding mentioned in `text`, in order, with presence, uncertainty, side, zone and severity."""
    return [m.finding for start, end in split_sentences(text) for m in find_mentions(text[start:end])]


def finding_set(text: str) -> set[tuple[str, bool, str | None]]:
    """The (name, present, side) triples of `text`: two texts saying the same findings give the same set."""
    return {(f.name, f.present, f.side) for f in extract_findings(text)}


def _sides(findings: list[Finding]) -> set[str]:
    sides: set[str] = set()
    for finding in findings:
        if finding.side:
            sides |= {"left", "right"} if finding.side == "bilateral" else {finding.side}
    return sides


def worst_severity(findings: Iterable[Finding]) -> str | None:
    """The size/severity word of highest grade among `findings` (None if none was said)."""
    order = {"low": 0, "mid": 1, "high": 2}
    words = [f.severity for f in findings if f.severity in GRADE]
    return max(words, key=lambda word: order[GRADE[word]]) if words else None


def compare_findings(a: Iterable[Finding], b: Iterable[Finding]) -> list[Disagreement]:
    """What two finding lists disagree on, finding by finding.

    A finding present in one and absent or unmentioned in the other disagrees on
    presence. Present in both, it disagrees on side, zone or size/severity grade
    when both texts state that aspect and state it differently. Absent versus
    unmentioned is agreement: leaving out a negative is not a hallucination.
    """
    present_a = [f for f in a if f.present]
    present_b = [f for f in b if f.present]
    disagreements = []
    for name in sorted({f.name for f in present_a + present_b}):
        in_a = [f for f in present_a if f.name == name]
        in_b = [f for f in present_b if f.name == name]
        severity = worst_severity(in_a + in_b)
        if bool(in_a) != bool(in_b):
            disagreements.append(Disagreement(name, "presence", severity))
            continue
        aspects = {
            "side": (_sides(in_a), _sides(in_b)),
            "zone": ({f.zone for f in in_a if f.zone}, {f.zone for f in in_b if f.zone}),
            "severity": (
                {GRADE[f.severity] for f in in_a if f.severity in GRADE},
                {GRADE[f.severity] for f in in_b if f.severity in GRADE},
            ),
        }
        for aspect, (said_a, said_b) in aspects.items():
            if said_a and said_b and said_a != said_b:
                disagreements.append(Disagreement(name, aspect, severity))
    return disagreements


def yes_no(answer: str) -> str | None:
    """ "yes" or "no" if the answer starts with that word ("No, there is..."), else None ("Nodule" is not "no")."""
    first = re.match(r"\s*([A-Za-z]+)", answer)
    word = first.group(1).lower() if first else None
    return word if word in ("yes", "no") else None


def normalise_text(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: for comparing short answers."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def compare_answers(gold: str, other: str) -> list[Disagreement] | None:
    """The finding disagreements of `other` with `gold`; None if `gold` names no finding to compare with.

    A gold answer such as "none" counts as naming findings (all absent); one such
    as "liver" or "right" does not, and the caller must compare the words instead.
    """
    gold_findings = extract_findings(gold)
    disagreements = compare_findings(gold_findings, extract_findings(other))
    if disagreements or gold_findings or normalise_text(gold) in NONE_ANSWERS:
        return disagreements
    return None
