"""What a VQA score must be read against: the majority answer per question type, and accuracy per gold answer.

A test split that is 69% "no" gives 0.69 closed accuracy to a model that
always says "no". So every VQA evaluation also reports:

- `majority`: the metrics of a baseline that answers every question with the
  commonest gold answer of its question type in the evaluated split. A
  question's type is its answer type (closed or open) and, where the sample's
  meta has one, its question category: `question_type` (VQA-RAD: PRES, POS,
  ABN, ...), `content_type` (SLAKE: Organ, Position, Abnormality, ...) or
  `question_kind` (SynthMed), the first of these present. Answers are compared
  as content words (`answers.content_words`: "The left lung" = "left lung");
  a tie goes to the alphabetically first answer.
- For closed questions, accuracy per gold answer (`closed_by_answer`, with
  `closed_accuracy_yes` / `closed_accuracy_no` when those answers occur) and
  balanced accuracy (`closed_balanced_accuracy`): the mean over gold answers of
  the accuracy on that answer, so always answering "no" scores 0.5 on a
  yes/no split whatever its skew.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from mmedpo.evaluation.answers import content_words

CATEGORY_KEYS = ("question_type", "content_type", "question_kind")


def question_type(row: Mapping[str, Any]) -> str:
    """ "closed" or "open", with the question category when the meta has one: "closed/PRES"."""
    meta = row.get("meta") or {}
    category = next((meta[key] for key in CATEGORY_KEYS if meta.get(key) is not None), None)
    return row["answer_type"] if category is None else f"{row['answer_type']}/{category}"


def gold_class(answer: str) -> str:
    """The gold answer as the class it is counted under: its content words joined by spaces."""
    return " ".join(content_words(answer))


def majority_answers(rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The commonest gold answer of each question type among VQA `rows`.

    >>> majority_answers([{"answer_type": "closed", "answer": a} for a in ("No", "no", "yes")])
    {'closed': 'no'}
    """
    counts: dict[str, Counter[str]] = {}
    for row in rows:
        counts.setdefault(question_type(row), Counter())[gold_class(row["answer"])] += 1
    return {
        kind: min(counter, key=lambda answer: (-counter[answer], answer)) for kind, counter in sorted(counts.items())
    }


def majority_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The VQA `rows` with every prediction replaced by the majority answer of its question type."""
    answers = majority_answers(rows)
    return [{**row, "prediction": answers[question_type(row)]} for row in rows]


def answer_breakdown(rows: Sequence[Mapping[str, Any]], scores: Sequence[float]) -> dict[str, Any]:
    """Accuracy per gold answer and balanced accuracy of closed `rows` scored `scores` (1 right, 0 wrong)."""
    by_answer: dict[str, list[float]] = {}
    for row, score in zip(rows, scores, strict=True):
        by_answer.setdefault(gold_class(row["answer"]), []).append(score)
    accuracy = {answer: sum(hits) / len(hits) for answer, hits in sorted(by_answer.items())}
    metrics: dict[str, Any] = {"closed_balanced_accuracy": sum(accuracy.values()) / len(accuracy)}
    metrics.update({f"closed_accuracy_{answer}": accuracy[answer] for answer in ("yes", "no") if answer in accuracy})
    metrics["closed_by_answer"] = {
        answer: {"n": len(by_answer[answer]), "accuracy": value} for answer, value in accuracy.items()
    }
    return metrics
