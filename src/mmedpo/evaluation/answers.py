"""One Med-VQA answer against its gold answer, scored strictly (the `mmedpo` protocol).

Closed questions:
- Yes/no gold answers: the prediction is read as yes or no by whole words
  (`parse_yes_no`); "nodule" is not "no", and an unreadable answer is wrong.
- Other closed answers (choice questions, "CT or MRI?"): right when the gold
  answer's words occur as a contiguous run of words in the prediction, articles
  aside ("It is an MRI scan" answers "MRI"; "fMRI" does not), and the prediction
  names no other option of the question: for "Is it on the left or right?",
  "left and right" is wrong for gold "left" (`other_option`).

Open questions: token recall, exact match and token F1 over content words:
lower-cased words without punctuation and without the articles "a", "an",
"the", as SQuAD's evaluation normalises answers ("left lung" against "the left
lung" has recall 1.0). Tokens are counted with multiplicity and clipped.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

from mmedpo.evaluation.text import tokenize

YesNo = Literal["yes", "no"]

ARTICLES = frozenset({"a", "an", "the"})


def content_words(text: str) -> list[str]:
    """The words of `text` without articles; all of them when nothing else is left ("A" stays ["a"]).

    >>> content_words("The left lung")
    ['left', 'lung']
    """
    words = tokenize(text)
    return [word for word in words if word not in ARTICLES] or words


def parse_yes_no(text: str) -> YesNo | None:
    """Read a closed answer as "yes" or "no", or None when it is neither.

    Whole words only, never substrings: "nodule" is not "no".
    - If the first word is "yes" or "no", it decides ("No." -> no, "Yes, there is" -> yes,
      "No, yes" -> no).
    - Otherwise the answer is read when exactly one of the two words occurs in it
      ("There is no effusion" -> no); both or neither -> None ("unknown" -> None).
    - Negations without the word "no" are NOT read as "no": "Not seen" -> None.
      "not" also starts hedges ("not sure", "not clear"), and guessing in the
      model's favour would inflate accuracy; an unreadable answer counts as wrong.
    """
    words = tokenize(text)
    if not words:
        return None
    if words[0] in ("yes", "no"):
        return words[0]  # type: ignore[return-value]
    present = {word for word in words if word in ("yes", "no")}
    if len(present) == 1:
        return present.pop()  # type: ignore[return-value]
    return None


def other_option(question: str, gold: str) -> list[str]:
    """The option a question names beside the gold answer ("A or B?"), as content words; [] when none is found.

    The gold answer anchors it: when the gold's words end right before an "or"
    of the question, the other option is as many words right after it, and
    the other way round. "Is the mass in the right upper lobe or the left lower
    lobe?" with gold "left lower lobe" -> [right, upper, lobe]; "Is the left or
    right lung more opaque?" with gold "left" -> [right]. A gold answer that is
    not next to an "or" ("spine" in "in the brain or in the spine?") gives [].

    >>> other_option("Which is bigger in this image, kidney or liver?", "liver")
    ['kidney']
    """
    words, gold_words = content_words(question), content_words(gold)
    width = len(gold_words)
    for index, word in enumerate(words):
        if word != "or":
            continue
        if index >= width and words[index - width : index] == gold_words:
            return words[index + 1 : index + 1 + width]
        if words[index + 1 : index + 1 + width] == gold_words:
            return words[max(0, index - width) : index]
    return []


def closed_correct(prediction: str, gold: str, question: str = "") -> bool:
    """Whether a closed-question prediction is right (see the module docstring).

    >>> closed_correct("left and right", "left", "Is the lesion on the left or right?")
    False
    """
    gold_words = content_words(gold)
    if gold_words in (["yes"], ["no"]):
        return parse_yes_no(prediction) == gold_words[0]
    if not gold_words:
        raise ValueError(f"closed gold answer {gold!r} has no words to compare")
    words = content_words(prediction)
    if not _contains(words, gold_words):
        return False
    # Words only the other option has: "right" of "right upper lobe" against gold "left lower lobe".
    return not set(words) & (set(other_option(question, gold)) - set(gold_words))


def _contains(words: list[str], run: list[str]) -> bool:
    width = len(run)
    return any(words[start : start + width] == run for start in range(len(words) - width + 1))


def _overlap(prediction: str, gold: str) -> tuple[int, int, int]:
    """(shared content words counted with clipping, prediction length, gold length)."""
    predicted, expected = content_words(prediction), content_words(gold)
    if not expected:
        raise ValueError(f"gold answer {gold!r} has no words to compare")
    shared = sum((Counter(predicted) & Counter(expected)).values())
    return shared, len(predicted), len(expected)


def open_recall(prediction: str, gold: str) -> float:
    """Fraction of the gold answer's content words found in the prediction.

    Words are counted with multiplicity and clipped (a gold word that occurs
    twice must occur twice in the prediction to count twice), as in SQuAD's F1.
    "left lower lobe" vs "the lower lobe of the left lung" -> 1.0.
    """
    shared, _, gold_length = _overlap(prediction, gold)
    return shared / gold_length


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the prediction's content words equal the gold's, else 0.0."""
    return float(content_words(prediction) == content_words(gold))


def token_f1(prediction: str, gold: str) -> float:
    """Harmonic mean of content-word precision and recall (0.0 when nothing is shared)."""
    shared, predicted_length, gold_length = _overlap(prediction, gold)
    if shared == 0:
        return 0.0
    precision, recall = shared / predicted_length, shared / gold_length
    return 2 * precision * recall / (precision + recall)
