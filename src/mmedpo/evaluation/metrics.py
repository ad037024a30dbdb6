"""Medical VQA and report-generation metrics, scored honestly.

Closed questions: accuracy over EVERY closed question, read strictly
(`evaluation.answers`): an answer that is wrong, unreadable or that names
another option of the question counts as wrong; the common LLaVA-Med scorer
matches "no" inside "nodule". Beside it, balanced accuracy, accuracy per gold
answer and the majority-answer baseline (`evaluation.baselines`).

Open questions: token recall of the gold answer in the prediction (the field's
convention), plus exact match and token F1, over content words (no articles).

Reports: BLEU-1..4, ROUGE-L, CIDEr and optionally METEOR from pycocoevalcap,
called directly on tokenised text (`evaluation.text`: ours by default, or
R2Gen's cleaning), so no PTB tokenizer (Java) is needed; and finding-level
clinical precision, recall and F1 (`evaluation.clinical`).

Protocols: `mmedpo` (the default, above) or `llava-med-v1.0.0`, which scores
VQA as LLaVA-Med v1.0.0's own script does, quirks included, for comparison
with published tables (`evaluation.llava_med`). `mmedpo.registry.PROTOCOLS`
maps each name to its per-row scorer. Every metrics dict names its protocol,
and its report tokenization when it scored reports.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from mmedpo.evaluation.answers import closed_correct, exact_match, open_recall, token_f1
from mmedpo.evaluation.baselines import answer_breakdown, majority_answers, majority_rows
from mmedpo.evaluation.clinical import clinical_metrics
from mmedpo.evaluation.meteor import meteor_scorer
from mmedpo.evaluation.text import REPORT_TOKENIZATIONS, normalize_report, tokenize
from mmedpo.records import Sample
from mmedpo.registry import PROTOCOLS

BREAKDOWN_KEYS = ("modality", "organ")


def closed_accuracy(predictions: Sequence[str], golds: Sequence[str], questions: Sequence[str] | None = None) -> float:
    """Fraction of closed questions answered right; wrong and unreadable answers stay in the denominator."""
    _check_lengths(predictions, golds)
    if not golds:
        raise ValueError("closed_accuracy needs at least one question")
    questions = questions if questions is not None else [""] * len(golds)
    return sum(closed_correct(p, g, q) for p, g, q in zip(predictions, golds, questions, strict=True)) / len(golds)


def report_metrics(
    predictions: Sequence[str], references: Sequence[str], meteor: bool = False, tokenization: str = "mmedpo"
) -> dict[str, float]:
    """Corpus BLEU-1..4, ROUGE-L, CIDEr (and METEOR when `meteor`) and clinical P/R/F1 of generated reports.

    The n-gram metrics compare the reports as `text.normalize_report` tokenises
    them under `tokenization` ("mmedpo", "r2gen-iu-xray" or "r2gen-mimic-cxr");
    the clinical metrics read the raw text. METEOR runs pycocoevalcap's Java
    scorer, whose start-up loads a paraphrase table (about 12 s of CPU), so it
    is opt-in; the process is started first, so that it loads while the other
    metrics are computed, and kept for later calls.
    """
    _check_lengths(predictions, references)
    if not references:
        raise ValueError("report_metrics needs at least one report")
    gts = {i: [normalize_report(text, tokenization)] for i, text in enumerate(references)}
    res = {i: [normalize_report(text, tokenization)] for i, text in enumerate(predictions)}
    scorer = meteor_scorer() if meteor else None
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


def vqa_item_scores(row: dict[str, Any]) -> dict[str, float]:
    """The `mmedpo` protocol's scores of one VQA row: {"closed": 1 or 0}, or the open-question metrics."""
    if row["answer_type"] == "closed":
        return {"closed": float(closed_correct(row["prediction"], row["answer"], row.get("question") or ""))}
    return {
        "open_recall": open_recall(row["prediction"], row["answer"]),
        "open_exact": exact_match(row["prediction"], row["answer"]),
        "open_f1": token_f1(row["prediction"], row["answer"]),
    }


def closed_scores(rows: Sequence[dict[str, Any]], protocol: str) -> list[float]:
    """1.0 or 0.0 per closed-question row (keys answer, prediction, and question when known), under `protocol`."""
    score = PROTOCOLS.load(protocol)
    return [score(row)["closed"] for row in rows]


def open_scores(rows: Sequence[dict[str, Any]], protocol: str) -> dict[str, list[float]]:
    """Per-row scores of the open-question metrics (open_recall, open_exact, open_f1, ...) under `protocol`."""
    score = PROTOCOLS.load(protocol)
    per_row = [score(row) for row in rows]
    return {name: [scores[name] for scores in per_row] for name in (per_row[0] if per_row else {})}


def score_predictions(
    samples: Sequence[Sample],
    predictions: Sequence[str],
    meteor: bool = False,
    protocol: str = "mmedpo",
    report_tokenization: str = "mmedpo",
) -> dict[str, Any]:
    """All metrics for predictions on `samples`, with breakdowns by meta modality and organ.

    Returns protocol, n_closed, n_open, n_report, then closed_accuracy with its
    per-answer and balanced accuracies; open_recall, open_exact, open_f1 (means
    over open questions); report metrics over report samples (and
    report_tokenization); `majority`, the same VQA metrics of the majority-answer
    baseline (`evaluation.baselines`); and `by_modality` / `by_organ` dicts of
    the metrics (without METEOR) per value, when samples carry those meta keys.
    Metrics of a part with no samples are absent. VQA samples without an answer
    type count as closed when their answer is a bare yes/no. The
    `llava-med-v1.0.0` protocol scores VQA as LLaVA-Med's script does
    (`evaluation.llava_med`) and adds open_precision.
    """
    if len(samples) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(samples)} samples")
    rows = [
        {
            "id": sample.id,
            "task": sample.task,
            "answer_type": vqa_answer_type(sample.answer_type, sample.answer) if sample.task == "vqa" else None,
            "question": sample.question,
            "answer": sample.answer,
            "prediction": prediction,
            "meta": sample.meta,
        }
        for sample, prediction in zip(samples, predictions)
    ]
    return score_rows(rows, meteor=meteor, protocol=protocol, report_tokenization=report_tokenization)


def score_rows(
    rows: Sequence[dict[str, Any]], meteor: bool = False, protocol: str = "mmedpo", report_tokenization: str = "mmedpo"
) -> dict[str, Any]:
    """`score_predictions` on stored rows (keys id, task, answer_type, question, answer, prediction, meta)."""
    PROTOCOLS.check(protocol)
    if report_tokenization not in REPORT_TOKENIZATIONS:
        raise ValueError(
            f"unknown report tokenization {report_tokenization!r}; valid: {', '.join(REPORT_TOKENIZATIONS)}"
        )
    for row in rows:
        _check_row(row)
    metrics: dict[str, Any] = {"protocol": protocol}
    if any(row["task"] == "report" for row in rows):
        metrics["report_tokenization"] = report_tokenization
    metrics.update(_score_group(rows, meteor, protocol, report_tokenization))
    vqa = [row for row in rows if row["task"] == "vqa"]
    if vqa:
        metrics["majority"] = {
            "answers": majority_answers(vqa),
            **_vqa_metrics(majority_rows(vqa), protocol),
        }
    for key in BREAKDOWN_KEYS:
        groups: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            value = (row.get("meta") or {}).get(key)
            if value is not None:
                groups.setdefault(str(value), []).append(row)
        if groups:
            metrics[f"by_{key}"] = {
                value: _score_group(group, False, protocol, report_tokenization)
                for value, group in sorted(groups.items())
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


def _score_group(rows: Sequence[dict[str, Any]], meteor: bool, protocol: str, tokenization: str) -> dict[str, Any]:
    reports = [r for r in rows if r["task"] == "report"]
    metrics: dict[str, Any] = {
        "n_closed": sum(r["task"] == "vqa" and r["answer_type"] == "closed" for r in rows),
        "n_open": sum(r["task"] == "vqa" and r["answer_type"] == "open" for r in rows),
        "n_report": len(reports),
    }
    metrics.update(_vqa_metrics([r for r in rows if r["task"] == "vqa"], protocol))
    if reports:
        predictions, references = [r["prediction"] for r in reports], [r["answer"] for r in reports]
        metrics.update(report_metrics(predictions, references, meteor, tokenization))
    return metrics


def _vqa_metrics(rows: Sequence[dict[str, Any]], protocol: str) -> dict[str, Any]:
    closed = [r for r in rows if r["answer_type"] == "closed"]
    open_ = [r for r in rows if r["answer_type"] == "open"]
    metrics: dict[str, Any] = {}
    if closed:
        scores = closed_scores(closed, protocol)
        metrics["closed_accuracy"] = _mean(scores)
        metrics.update(answer_breakdown(closed, scores))
    if open_:
        metrics.update({name: _mean(values) for name, values in open_scores(open_, protocol).items()})
    return metrics


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)
