"""Evaluation: VQA and report metrics, protocols, baselines, intervals, power, visual dependence, comparisons."""

from mmedpo.evaluation.answers import closed_correct, exact_match, open_recall, parse_yes_no, token_f1
from mmedpo.evaluation.clinical import clinical_metrics
from mmedpo.evaluation.compare import compare_results, compare_table, render, visual_metrics
from mmedpo.evaluation.evaluate import evaluate_model, render_prompt, rescore_file
from mmedpo.evaluation.intervals import (
    approximate_randomization,
    difference_over_seeds,
    hierarchical_bootstrap,
    paired_bootstrap,
    paired_difference,
    verdict,
)
from mmedpo.evaluation.metrics import closed_accuracy, report_metrics, score_predictions
from mmedpo.evaluation.power import closed_items_needed, discordance, minimum_detectable_difference, seeds_needed

__all__ = [
    "approximate_randomization",
    "clinical_metrics",
    "closed_accuracy",
    "closed_correct",
    "closed_items_needed",
    "compare_results",
    "compare_table",
    "difference_over_seeds",
    "discordance",
    "evaluate_model",
    "exact_match",
    "hierarchical_bootstrap",
    "minimum_detectable_difference",
    "seeds_needed",
    "open_recall",
    "paired_bootstrap",
    "paired_difference",
    "parse_yes_no",
    "render",
    "render_prompt",
    "report_metrics",
    "rescore_file",
    "score_predictions",
    "token_f1",
    "verdict",
    "visual_metrics",
]
