"""Evaluation: VQA and report metrics, protocols, visual dependence, comparing variants."""

from mmedpo.evaluation.clinical import clinical_metrics
from mmedpo.evaluation.compare import (
    approximate_randomization,
    compare_results,
    compare_table,
    paired_bootstrap,
    render,
    visual_metrics,
)
from mmedpo.evaluation.evaluate import evaluate_model, render_prompt, rescore_file
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
    "approximate_randomization",
    "clinical_metrics",
    "closed_accuracy",
    "compare_results",
    "compare_table",
    "evaluate_model",
    "exact_match",
    "open_recall",
    "paired_bootstrap",
    "parse_yes_no",
    "render",
    "render_prompt",
    "report_metrics",
    "rescore_file",
    "score_predictions",
    "token_f1",
    "visual_metrics",
]
