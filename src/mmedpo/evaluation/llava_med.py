"""The `llava-med` protocol: LLaVA-Med's own VQA scorer (llava/eval/run_eval.py), quirks included.

Published Med-VQA tables (LLaVA-Med, and papers that reuse its script, MMedPO
among them) were scored this way, so these numbers are comparable with them.
They are NOT trustworthy measures; the default `mmedpo` protocol is. The quirks,
reproduced on purpose:

- Closed questions: the prediction is first normalised (`normalize_word`); then
  if "yes" or "no" occurs in it AS A SUBSTRING ("no" is in "nodule", "not",
  "normal", "know"; "yes" in "eyes"), the question is a hit when the gold answer
  also occurs as a substring, and is DROPPED from the denominator otherwise.
  Only answers containing neither substring count as wrong. So wrong answers
  that mention yes/no vanish, and accuracy is hits / (not dropped), 0.0 when
  nothing is left.
- Open "recall" is the recall of `calculate_f1score`: word types of the gold
  answer, but a shared word counts as many times as the PREDICTION repeats it
  (tp), against gold words missing from the prediction (fn): tp / (tp + fn).
  Repeating a gold word raises it. Precision and F1 come from the same counts.
- Open "exact match" (`calculate_exactmatch`) is not exact match: the number of
  distinct gold words found in the prediction divided by the number of
  prediction words.
- `normalize_word` removes articles, maps number words ("one".."ten", and
  "none") to digits, deletes or spaces punctuation depending on whether the
  text has "p " or " p" anywhere, and deletes periods not followed by a digit,
  at most 32 of them (the script passes re.UNICODE, 32, as the count).
- Contractions written without their apostrophe ("isnt") get it back, as in
  the script's table; its few two-apostrophe and self-contradictory entries
  ("couldn'tve", "somebody'd" -> "somebodyd") are not reproduced.

Its "open accuracy" needs a candidate-answer file that was never released, so
it is not computed here.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

_PUNCTUATION = tuple(';/[]"{}()=+\\_-><@`,?!')
# The script's lookbehind is mistyped "(?!<=\d)", a lookahead that always holds: every period not before a digit goes.
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_DIGIT_COMMA = re.compile(r"(\d)(\,)(\d)")
_PERIOD_LIMIT = 32
_NUMBERS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = ("a", "an", "the")
_CONTRACTED = (
    "ain't aren't can't could've couldn't didn't doesn't don't hadn't hasn't haven't he'd he's how'd how'll how's "
    "isn't it'd it'll ma'am mightn't might've mustn't must've needn't not've o'clock oughtn't shan't should've "
    "shouldn't somebody'll somebody's someone'd someone'll someone's something'd something'll that's there'd "
    "there're there's they'd they'll they're they've 'twas wasn't we've weren't what'll what're what's what've "
    "when's where'd where's where've who'd who'll who's who've why'll why're why's won't would've wouldn't y'all "
    "you'd you'll you're you've"
).split()
_CONTRACTIONS = {word.replace("'", ""): word for word in _CONTRACTED}


def normalize_word(text: str) -> str:
    """LLaVA-Med's answer normalisation (glossary.normalize_word), quirks included.

    >>> normalize_word("The left-lung, two nodules.")
    'left lung 2 nodules'
    """
    spaced = text
    for mark in _PUNCTUATION:
        # The test looks at the original text, the replacement works on the running one.
        if mark + " " in text or " " + mark in text or _DIGIT_COMMA.search(text):
            spaced = spaced.replace(mark, "")
        else:
            spaced = spaced.replace(mark, " ")
    spaced = _PERIOD.sub("", spaced, count=_PERIOD_LIMIT)
    words = [_NUMBERS.get(word, word) for word in spaced.lower().split()]
    words = [_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES]
    return " ".join(words).replace(",", "")


def _prepare(text: str) -> str:
    # run_eval.py lower-cases and normalises; the metric functions normalise once more.
    return normalize_word(normalize_word(text.lower()))


def closed_hit(prediction: str, gold: str) -> int | None:
    """1 (hit), 0 (miss) or None (dropped from the denominator), as LLaVA-Med scores a closed question.

    >>> closed_hit("nodule", "no"), closed_hit("nodule", "yes"), closed_hit("right lung", "yes")
    (1, None, 0)
    """
    predicted, expected = normalize_word(prediction.lower()), normalize_word(gold.lower())
    if "yes" in predicted or "no" in predicted:
        return 1 if expected in predicted else None
    return 0


def f1_precision_recall(prediction: str, gold: str) -> tuple[float, float, float]:
    """(F1, precision, recall) of `calculate_f1score`: shared words weighted by their count in the prediction.

    >>> f1_precision_recall("left left left", "left lung")
    (0.8571428571428571, 1.0, 0.75)
    """
    predicted, expected = Counter(_prepare(prediction).split()), Counter(_prepare(gold).split())
    if not predicted or not expected:
        return 0.0, 0.0, 0.0
    true_positive = sum(count for word, count in predicted.items() if word in expected)
    if true_positive == 0:
        return 0.0, 0.0, 0.0
    false_positive = sum(count for word, count in predicted.items() if word not in expected)
    false_negative = sum(count for word, count in expected.items() if word not in predicted)
    precision = true_positive / (true_positive + false_positive)
    recall = true_positive / (true_positive + false_negative)
    return 2 * precision * recall / (precision + recall), precision, recall


def exact_match(prediction: str, gold: str) -> float:
    """`calculate_exactmatch`: distinct gold words found in the prediction / prediction words.

    >>> exact_match("left lung left", "left lung")
    0.6666666666666666
    """
    predicted, expected = Counter(_prepare(prediction).split()), Counter(_prepare(gold).split())
    total = sum(predicted.values())
    return sum(1 for word in expected if word in predicted) / total if total else 0.0


def score_vqa(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """LLaVA-Med's closed accuracy (with its denominator) and open recall/precision/F1/"exact" over VQA rows."""
    closed = [r for r in rows if r["task"] == "vqa" and r["answer_type"] == "closed"]
    open_ = [r for r in rows if r["task"] == "vqa" and r["answer_type"] == "open"]
    metrics: dict[str, Any] = {}
    if closed:
        hits = [closed_hit(r["prediction"], r["answer"]) for r in closed]
        kept = [hit for hit in hits if hit is not None]
        metrics["closed_accuracy"] = sum(kept) / len(kept) if kept else 0.0
        metrics["n_closed_dropped"] = len(hits) - len(kept)
    if open_:
        scores = [f1_precision_recall(r["prediction"], r["answer"]) for r in open_]
        metrics["open_recall"] = _mean(recall for _, _, recall in scores)
        metrics["open_precision"] = _mean(precision for _, precision, _ in scores)
        metrics["open_f1"] = _mean(f1 for f1, _, _ in scores)
        metrics["open_exact"] = _mean(exact_match(r["prediction"], r["answer"]) for r in open_)
    return metrics


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)
