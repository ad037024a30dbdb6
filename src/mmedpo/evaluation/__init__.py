"""Evaluation: VQA and report metrics, evaluating a model, comparing variants."""

from mmedpo.evaluation.compare import compare_table, paired_bootstrap
from mmedpo.evaluation.evaluate import evaluate_model, rescore_file
from mmedpo.evaluation.metrics import (
    closed_accuracy,
    exact_match,
    open_recall,
    parse_yes_no,
    report_metrics,
    score_predictions,
    token_f1,
)

__all__ = [
    "closed_accuracy",
    "compare_table",
    "evaluate_model",
    "exact_match",
    "open_recall",
    "paired_bootstrap",
    "parse_yes_no",
    "report_metrics",
    "rescore_file",
    "score_predictions",
    "token_f1",
]
