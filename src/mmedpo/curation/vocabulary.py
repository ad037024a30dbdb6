"""The answers a split gives to each type of question: what a wrong answer of the right kind looks like.

A question's type is what the dataset says (VQA-RAD's `question_type`, SLAKE's
`content_type`, SynthMed's `question_kind`), else what it asks about, read from
its words (`question_type`): colour, shape, count, size, position, organ,
modality, plane, abnormality, or "other". The vocabulary holds, per type, the
open answers the split gives (normalised text, yes/no left out), so

- the perturbation generator can swap an answer for another answer of the same
  type ("circle" -> "square", "liver" -> "spleen"), whatever the lexicon knows;
- the filters can refuse a candidate that answers another type of question: a
  shape for a colour question is an answer the split gives only to shape
  questions, never to colour ones.

    >>> from mmedpo.records import Sample
    >>> rows = [Sample(id=str(i), task="vqa", image="a.png", question=q, answer=a)
    ...         for i, (q, a) in enumerate([("What color is it?", "blue"), ("What shape is it?", "circle"),
    ...                                     ("What color is the ball?", "red")])]
    >>> vocabulary = AnswerVocabulary.of(rows)
    >>> vocabulary.answers("color"), vocabulary.off_type("circle", "color"), vocabulary.off_type("green", "color")
    (['blue', 'red'], True, False)
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from mmedpo.clinical.findings import normalise_text, yes_no
from mmedpo.clinical.lexicon import NONE_ANSWERS
from mmedpo.records import Sample

# The meta fields in which datasets name a question's type.
TYPE_FIELDS = ("question_type", "content_type", "question_kind")
# What a question asks about, by its words; the first match wins.
_TYPE_WORDS = (
    ("color", r"\bcolou?rs?\b"),
    ("shape", r"\bshapes?\b"),
    ("count", r"\bhow many\b|\bnumber of\b"),
    ("size", r"\bsize\b|\bhow (?:big|large|small)\b"),
    ("position", r"\bwhere\b|\bwhich (?:side|lobe|part|quadrant)\b|\blocat"),
    ("organ", r"\borgans?\b"),
    ("modality", r"\bmodality\b|\bwhat (?:kind|type) of (?:image|scan)\b|\bct or mri\b"),
    ("plane", r"\bplane\b|\bview\b"),
    ("abnormality", r"\babnormal|\bfinding|\blesion|\bdisease|\bdiagnos"),
)


def question_type(sample: Sample) -> str:
    """The sample's question type: the dataset's own field, else what its words ask about ("other")."""
    for key in TYPE_FIELDS:
        value = sample.meta.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip().lower()
    question = sample.question.lower()
    return next((kind for kind, pattern in _TYPE_WORDS if re.search(pattern, question)), "other")


def is_yes_no(text: str) -> bool:
    """A bare yes or no ("Yes.", "no"): the answer of a closed yes/no question, not of an open one."""
    return normalise_text(text) in ("yes", "no")


@dataclass
class AnswerVocabulary:
    """Per question type, the split's open answers (normalised) and how often each is given."""

    by_type: dict[str, Counter] = field(default_factory=dict)

    @classmethod
    def of(cls, samples: Sequence[Sample]) -> AnswerVocabulary:
        """The vocabulary of `samples`' VQA answers; yes/no answers are left out (a flip, not a swap, changes them)."""
        vocabulary = cls()
        for sample in samples:
            if sample.task == "vqa" and yes_no(sample.answer) is None:
                counts = vocabulary.by_type.setdefault(question_type(sample), Counter())
                counts[normalise_text(sample.answer)] += 1
        return vocabulary

    def answers(self, kind: str) -> list[str]:
        """The answers given to questions of type `kind`, commonest first (ties alphabetical)."""
        counts = self.by_type.get(kind, Counter())
        return sorted(counts, key=lambda answer: (-counts[answer], answer))

    def off_type(self, candidate: str, kind: str) -> bool:
        """Whether `candidate` is an answer the split gives only to other types of question than `kind`.

        "None"-like answers ("normal", "no finding") fit every type. A candidate the
        split never gives at all is not judged here: it may be right in form.
        """
        text = normalise_text(candidate)
        if text in NONE_ANSWERS or text in self.by_type.get(kind, ()):
            return False
        return any(text in counts for other, counts in self.by_type.items() if other != kind)
