"""Medical VQA and report-generation metrics, scored honestly.

Closed (yes/no) questions: accuracy over EVERY closed question. An answer that
is wrong or cannot be read as yes/no counts as wrong; the common LLaVA-Med
scorer drops such answers from the denominator and matches "no" inside
"nodule", which inflates accuracy.

Open questions: token recall of the gold answer in the prediction (the field's
convention), plus exact match and token F1.

Reports: BLEU-1..4, ROUGE-L, CIDEr and optionally METEOR from pycocoevalcap,
called directly on text tokenised the R2Gen way (lower-case, punctuation
stripped, words joined by single spaces), so no PTB tokenizer (Java) is needed;
and finding-level clinical precision, recall and F1 (`evaluation.clinical`).

Protocols: `mmedpo` (the default, above) or `llava-med`, which scores VQA as
LLaVA-Med's own script does, quirks included, for comparison with published
tables (`evaluation.llava_med`); `mmedpo.registry.PROTOCOLS` names them. Every
metrics dict names its protocol.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from mmedpo.evaluation.clinical import clinical_metrics
from mmedpo.evaluation.meteor import meteor_scorer
from mmedpo.records import Sample
from mmedpo.registry import PROTOCOLS

YesNo = Literal["yes", "no"]

# Apostrophes are removed rather than split on, so "there's" stays one word ("theres"), as R2Gen does.
_APOSTROPHES = re.compile(r"['\u2019]")
# A word is a run of letters or digits (any script); everything else separates words.
_WORD = re.compile(r"[^\W_]+")

BREAKDOWN_KEYS = ("modality", "organ")


def tokenize(text: str) -> list[str]:
    """Lower-cased words of `text` with all punctuation stripped.

    "There's NO pleural-effusion." -> ["theres", "no", "pleural", "effusion"].
    """
    return _WORD.findall(_APOSTROPHES.sub("", text.lower()))


def normalize_report(text: str) -> str:
    """The tokenised text joined by single spaces: what pycocoevalcap expects."""
    return " ".join(tokenize(text))


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


def closed_correct(prediction: str, gold: str) -> bool:
    """Whether a closed-question prediction is right.

    Yes/no gold answers compare the parsed prediction. Other closed answers
    (choice questions such as "CT or MRI?") are right when the gold answer's
    words occur as a contiguous run of words in the prediction
    ("It is an MRI scan" answers "MRI"); "MRIs" or "fMRI" do not.
    """
    gold_words = tokenize(gold)
    if gold_words in (["yes"], ["no"]):
        return parse_yes_no(prediction) == gold_words[0]
    if not gold_words:
        raise ValueError(f"closed gold answer {gold!r} has no words to compare")
    words = tokenize(prediction)
    width = len(gold_words)
    return any(words[start : start + width] == gold_words for start in range(len(words) - width + 1))


def closed_accuracy(predictions: Sequence[str], golds: Sequence[str]) -> float:
    """Fraction of closed questions answered right; wrong and unreadable answers stay in the denominator."""
    _check_lengths(predictions, golds)
    if not golds:
        raise ValueError("closed_accuracy needs at least one question")
    return sum(closed_correct(p, g) for p, g in zip(predictions, golds)) / len(golds)


def _overlap(prediction: str, gold: str) -> tuple[int, int, int]:
    """(shared tokens counted with clipping, prediction length, gold length)."""
    predicted, expected = tokenize(prediction), tokenize(gold)
    if not expected:
        raise ValueError(f"gold answer {gold!r} has no words to compare")
    shared = sum((Counter(predicted) & Counter(expected)).values())
    return shared, len(predicted), len(expected)


def open_recall(prediction: str, gold: str) -> float:
    """Fraction of the gold answer's tokens found in the prediction.

    Tokens are counted with multiplicity and clipped (a gold word that occurs
    twice must occur twice in the prediction to count twice), as in SQuAD's F1.
    "left lower lobe" vs "the lower lobe of the left lung" -> 1.0.
    """
    shared, _, gold_length = _overlap(prediction, gold)
    return shared / gold_length


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the prediction's tokens equal the gold's tokens, else 0.0."""
    return float(tokenize(prediction) == tokenize(gold))


def token_f1(prediction: str, gold: str) -> float:
    """Harmonic mean of token precision and token recall (0.0 when nothing is shared)."""
    shared, predicted_length, gold_length = _overlap(prediction, gold)
    if shared == 0:
        return 0.0
    precision, recall = shared / predicted_length, shared / gold_length
    return 2 * precision * recall / (precision + recall)


def report_metrics(predictions: Sequence[str], references: Sequence[str], meteor: bool = False) -> dict[str, float]:
    """Corpus BLEU-1..4, ROUGE-L, CIDEr (and METEOR when `meteor`) and clinical P/R/F1 of generated reports.

    METEOR runs pycocoevalcap's Java scorer, whose start-up loads a paraphrase
    table (about 12 s of CPU), so it is opt-in; the process is started first, so
    that it loads while the other metrics are computed, and kept for later calls.
    """
    _check_lengths(predictions, references)
    if not references:
        raise ValueError("report_metrics needs at least one report")
    scorer = meteor_scorer() if meteor else None
    gts = {i: [normalize_report(text)] for i, text in enumerate(references)}
    res = {i: [normalize_report(text)] for i, text in enumerate(predictions)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = {f"bleu_{n}": float(value) for n, value in enumerate(bleu, start=1)}
    scores["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    scores["cider"] = float(Cider().compute_score(gts, res)[0])
    scores.update(clinical_metrics(predictions, references))
    if scorer is not None:
        scores["meteor"] = scorer.score([res[i][0] for i in res], [gts[i][0] for i in gts])
    return scores


def _check_lengths(predictions: Sequence[str], golds: Sequence[str]) -> None:
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} gold answers")


def vqa_answer_type(answer_type: str | None, answer: str) -> str:
    """The answer type to score a VQA item by: its own, or "closed" for a bare yes/no answer when unset."""
    if answer_type is not None:
        return answer_type
    return "closed" if tokenize(answer) in (["yes"], ["no"]) else "open"


def score_predictions(
    samples: Sequence[Sample], predictions: Sequence[str], meteor: bool = False, protocol: str = "mmedpo"
) -> dict[str, Any]:
    """All metrics for predictions on `samples`, with breakdowns by meta modality and organ.

    Returns protocol, n_closed, n_open, n_report, then closed_accuracy;
    open_recall, open_exact, open_f1 (means over open questions); report metrics
    over report samples; and `by_modality` / `by_organ` dicts of the same
    metrics (without METEOR) per value, when samples carry those meta keys.
    Metrics of a part with no samples are absent. VQA samples without an answer
    type count as closed when their answer is a bare yes/no. The `llava-med`
    protocol scores VQA as LLaVA-Med's script does (`evaluation.llava_med`) and
    adds n_closed_dropped and open_precision.
    """
    if len(samples) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(samples)} samples")
    rows = [
        {
            "id": sample.id,
            "task": sample.task,
            "answer_type": vqa_answer_type(sample.answer_type, sample.answer) if sample.task == "vqa" else None,
            "answer": sample.answer,
            "prediction": prediction,
            "meta": sample.meta,
        }
        for sample, prediction in zip(samples, predictions)
    ]
    return score_rows(rows, meteor=meteor, protocol=protocol)


def score_rows(rows: Sequence[dict[str, Any]], meteor: bool = False, protocol: str = "mmedpo") -> dict[str, Any]:
    """`score_predictions` on stored prediction rows (keys id, task, answer_type, answer, prediction, meta)."""
    PROTOCOLS.check(protocol)
    for row in rows:
        _check_row(row)
    metrics = {"protocol": protocol, **_score_group(rows, meteor, protocol)}
    for key in BREAKDOWN_KEYS:
        groups: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            value = (row.get("meta") or {}).get(key)
            if value is not None:
                groups.setdefault(str(value), []).append(row)
        if groups:
            metrics[f"by_{key}"] = {
                value: _score_group(group, False, protocol) for value, group in sorted(groups.items())
            }
    return metrics


def _check_row(row: dict[str, Any]) -> None:
    if row["task"] == "vqa":
        if row["answer_type"] not in ("closed", "open"):
            raise ValueError(
                f"record {row['id']}: VQA answer_type must be 'closed' or 'open', got {row['answer_type']!r}"
            )
        if not tokenize(row["answer"]):
            raise ValueError(f"record {row['id']}: gold answer {row['answer']!r} has no words to compare")
    elif row["task"] != "report":
        raise ValueError(f"record {row['id']}: unknown task {row['task']!r}")


def _score_group(rows: Sequence[dict[str, Any]], meteor: bool, protocol: str) -> dict[str, Any]:
    closed = [r for r in rows if r["task"] == "vqa" and r["answer_type"] == "closed"]
    open_ = [r for r in rows if r["task"] == "vqa" and r["answer_type"] == "open"]
    reports = [r for r in rows if r["task"] == "report"]
    metrics: dict[str, Any] = {"n_closed": len(closed), "n_open": len(open_), "n_report": len(reports)}
    metrics.update(PROTOCOLS.load(protocol)(rows))
    if reports:
        metrics.update(report_metrics([r["prediction"] for r in reports], [r["answer"] for r in reports], meteor))
    return metrics


def score_vqa(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The `mmedpo` protocol over VQA rows: every closed question counts; open recall, exact match, F1."""
    closed = [r for r in rows if r["task"] == "vqa" and r["answer_type"] == "closed"]
    open_ = [r for r in rows if r["task"] == "vqa" and r["answer_type"] == "open"]
    metrics = {}
    if closed:
        metrics["closed_accuracy"] = closed_accuracy([r["prediction"] for r in closed], [r["answer"] for r in closed])
    if open_:
        metrics["open_recall"] = _mean(open_recall(r["prediction"], r["answer"]) for r in open_)
        metrics["open_exact"] = _mean(exact_match(r["prediction"], r["answer"]) for r in open_)
        metrics["open_f1"] = _mean(token_f1(r["prediction"], r["answer"]) for r in open_)
    return metrics


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)
