"""Report metrics from the `RadEval` package (RadGraph F1, F1-CheXbert, RaTEScore, GREEN...), when installed.

RadEval is optional: it is not a dependency of mmedpo and its metrics need
model weights that it fetches or finds in the Hugging Face cache. Without the
package `radeval_metrics` raises `RadEvalUnavailable` with what to install;
`radeval_available()` tells beforehand. Scores come back under `radeval_`
names, nested results flattened with underscores
(`{"chexbert": {"micro_f1": 0.5}}` -> `radeval_chexbert_micro_f1`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from typing import Any

# RadEval's switches are `do_NAME` keyword arguments.
METRICS = (
    "radgraph",
    "chexbert",
    "ratescore",
    "radcliq",
    "green",
    "bertscore",
    "radeval_bertscore",
    "srr_bert",
    "temporal",
    "bleu",
    "rouge",
)


class RadEvalUnavailable(RuntimeError):
    """The RadEval package is not installed."""


def radeval_available() -> bool:
    return importlib.util.find_spec("RadEval") is not None


def radeval_metrics(
    predictions: Sequence[str], references: Sequence[str], metrics: Sequence[str] = ("radgraph", "chexbert")
) -> dict[str, float]:
    """RadEval's scores of generated reports against references, as `radeval_*` floats."""
    unknown = [name for name in metrics if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown RadEval metric(s) {', '.join(unknown)}; valid: {', '.join(METRICS)}")
    if len(predictions) != len(references) or not references:
        raise ValueError(f"RadEval needs equally many reports, got {len(predictions)}/{len(references)}")
    if not radeval_available():
        raise RadEvalUnavailable("RadEval metrics need the RadEval package (`pip install RadEval`) and its models")
    from RadEval import RadEval

    evaluator = RadEval(**{f"do_{name}": True for name in metrics})
    return _flatten("radeval", evaluator(refs=list(references), hyps=list(predictions)))


def _flatten(prefix: str, scores: Mapping[str, Any]) -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in scores.items():
        name = f"{prefix}_{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(name, value))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat
