"""The `llava-med-v1.0.0` protocol: LLaVA-Med v1.0.0's VQA scorer (llava/eval/run_eval.py), quirks included.

Reimplemented from github.com/microsoft/LLaVA-Med at tag v1.0.0 (commit b9a98a7,
2023-12-11, "fix closed accuracy calculation (#35)"): its `evaluate` in
llava/eval/run_eval.py and `calculate_f1score`, `calculate_exactmatch`,
`normalize_word` in llava/eval/eval_metrics/. Published Med-VQA tables
(LLaVA-Med, and papers that reuse its script) were scored with this script, so
these numbers are comparable with them. They are NOT trustworthy measures; the
default `mmedpo` protocol is. The quirks, reproduced on purpose:

- Closed questions: the prediction and the gold answer are lower-cased and
  normalised (`normalize_word`); the question is a hit when "yes" or "no"
  occurs in the prediction AS A SUBSTRING ("no" is in "nodule", "not",
  "normal", "know"; "yes" in "eyes") and the gold answer occurs in it as a
  substring too; otherwise it is a miss. So "nodule" is right for gold "no",
  and a choice answer ("MRI" for gold "MRI") is a miss unless it happens to
  contain "yes" or "no". Accuracy is hits over every closed question.
  The first public release (commit e9972cf, 2023-11-08) instead dropped a
  prediction containing yes/no but not the gold answer from the denominator;
  v1.0.0 fixed that, and that older behaviour is not offered here.
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


def closed_hit(prediction: str, gold: str) -> int:
    """1 (hit) or 0 (miss), as LLaVA-Med v1.0.0 scores a closed question.

    >>> closed_hit("nodule", "no"), closed_hit("unknown", "yes"), closed_hit("MRI", "MRI")
    (1, 0, 0)
    """
    predicted, expected = normalize_word(prediction.lower()), normalize_word(gold.lower())
    return int(("yes" in predicted or "no" in predicted) and expected in predicted)


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


def open_scores(prediction: str, gold: str) -> dict[str, float]:
    """The open-question scores of one answer: recall, precision and F1 of `calculate_f1score`, and its "exact"."""
    f1, precision, recall = f1_precision_recall(prediction, gold)
    return {
        "open_recall": recall,
        "open_precision": precision,
        "open_f1": f1,
        "open_exact": exact_match(prediction, gold),
    }


def vqa_item_scores(row: dict) -> dict[str, float]:
    """This protocol's scores of one VQA row: {"closed": 1 or 0}, or `open_scores`."""
    if row["answer_type"] == "closed":
        return {"closed": float(closed_hit(row["prediction"], row["answer"]))}
    return open_scores(row["prediction"], row["answer"])
