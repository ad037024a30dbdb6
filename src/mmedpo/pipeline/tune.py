"""Choose training settings on the validation split, never on the test split.

    mmedpo tune configs/tuning/demo-grid.yaml     # writes docs/tuning.md (or --out)

A tuning file names a run config, the variants to judge settings by, a
validation metric and a grid of `section.key` values:

    config: demo.yaml                      # relative to this file
    overrides: [eval.visual_dependence=false]   # optional, on top of that config
    variants: [dpo-text, dpo-text-visual, mmedpo]
    metric: closed_accuracy                # maximised; ties broken by tie_break
    tie_break: open_recall
    grid:
      train.beta: [0.1, 0.5]
      train.learning_rate: [1.0e-4, 3.0e-4]

Every grid point trains each named variant once, in ONE run folder whose
evaluation reads the validation split (`eval.split: val`): the samples, the base
model, the pairs and their scores are made once and shared by every point, and
only the `pairs`, `train` and `eval` stages run per point (variant names
VARIANT--gN). A point's score is the mean of the metric over its variants. The
grid, every point's validation metrics and the chosen point are written to a
markdown file, so what was tried is on record.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mmedpo.config import apply_overrides, load_config
from mmedpo.layout import RunLayout
from mmedpo.pipeline import run_pipeline


@dataclass(frozen=True)
class TuningPlan:
    config: Path
    variants: list[str]
    metric: str
    tie_break: str | None
    grid: dict[str, list[Any]]
    overrides: list[str]

    def points(self) -> list[dict[str, Any]]:
        """Every combination of the grid's values, in the grid's order."""
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.grid[k] for k in keys))]


def read_plan(path: Path | str, overrides: Sequence[str] = ()) -> TuningPlan:
    """The tuning file at `path`; `overrides` (section.key=value) apply to its run config."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"cannot read tuning file {path}: {error}") from None
    missing = [key for key in ("config", "variants", "metric", "grid") if not data.get(key)]
    if missing:
        raise ValueError(f"{path}: tuning file needs {', '.join(missing)}")
    keys = ("config", "name", "overrides", "variants", "metric", "tie_break", "grid")
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; valid: {', '.join(keys)}")
    grid = data["grid"]
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ValueError(f"{path}: grid must map section.key to a non-empty list of values")
    name = data.get("name", "tune")
    return TuningPlan(
        path.parent / data["config"], list(data["variants"]), data["metric"], data.get("tie_break"), grid,
        [f"name={name}", *data.get("overrides", []), "eval.split=val", *overrides],
    )  # fmt: skip


def point_name(variant: str, index: int) -> str:
    return f"{variant}--g{index}"


def tuning_config(plan: TuningPlan):
    """The one run every grid point trains in: the plan's variants once per point, evaluated on `val`."""
    base = load_config(plan.config, plan.overrides)
    unknown = [name for name in plan.variants if name not in base.variants]
    if unknown:
        raise ValueError(f"tuning variants {unknown} are not variants of {plan.config}: {', '.join(base.variants)}")
    if base.data.source == "synthmed" and base.data.n_val < 1:
        raise ValueError(f"{plan.config}: set data.n_val: tuning evaluates on the validation split")
    variants = {}
    for index, point in enumerate(plan.points()):
        for name in plan.variants:
            changes = apply_overrides({"train": dict(base.variants[name])}, _train_overrides(point))["train"]
            variants[point_name(name, index)] = changes
    data = base.model_dump(mode="json")
    data.update(variants=variants, claim=[], ablations=[])
    return type(base).model_validate(data)


def _train_overrides(point: Mapping[str, Any]) -> list[str]:
    """Grid keys are `train.X`: in a variant they become its own train setting X."""
    wrong = [key for key in point if not key.startswith("train.")]
    if wrong:
        raise ValueError(f"tuning grid keys must be train settings (train.KEY), got {wrong}")
    return [f"train.{key.removeprefix('train.')}={yaml.safe_dump(value).strip()}" for key, value in point.items()]


def run_tuning(plan: TuningPlan, show_progress: bool = True, on_stage=None) -> dict[str, Any]:
    """Train and evaluate every grid point on the validation split; returns every point's metrics and the best."""
    config = tuning_config(plan)
    run_pipeline(config, show_progress=show_progress, on_stage=on_stage)
    layout = RunLayout.of(config)
    rows = []
    for index, point in enumerate(plan.points()):
        per_variant = {name: _metrics(layout, point_name(name, index)) for name in plan.variants}
        score = _mean(per_variant, plan.metric)
        tie = _mean(per_variant, plan.tie_break) if plan.tie_break else 0.0
        rows.append({"point": index, "settings": point, "score": score, "tie_break": tie, "variants": per_variant})
    best = max(rows, key=lambda row: (row["score"], row["tie_break"]))
    return {
        "run": str(layout.dir),
        "validation": validation_split(config.data),
        "metric": plan.metric,
        "tie_break": plan.tie_break,
        "rows": rows,
        "best": best,
    }


def validation_split(data) -> str:
    """Where the validation split's items come from, in words, for the record of what was tuned on."""
    if data.source == "synthmed":
        return f"{data.n_val} SynthMed images drawn from its test distribution, images of their own"
    parts = []
    for name, target in data.split_map.items():
        if target == "val":
            parts.append(f"the '{name}' split")
        elif isinstance(target, dict) and "val" in target:
            parts.append(f"a {100 * target['val']:g}% cut by image of the '{name}' split")
    where = f"read by reader {data.dataset}" if data.source == "dataset" else f"read from {data.samples}"
    return f"{' and '.join(parts) or 'the split named val'} of the data {where} (data.split_map)"


def _metrics(layout: RunLayout, variant: str) -> dict[str, float]:
    metrics = json.loads(layout.eval(variant).read_text(encoding="utf-8"))["metrics"]
    return {key: value for key, value in metrics.items() if isinstance(value, float)}


def _mean(per_variant: Mapping[str, Mapping[str, float]], metric: str) -> float:
    values = [metrics[metric] for metrics in per_variant.values() if metric in metrics]
    if not values:
        raise ValueError(f"validation metric {metric!r} was not measured")
    return sum(values) / len(values)


def tuning_markdown(plan: TuningPlan, result: Mapping[str, Any], command: str) -> str:
    """What was tried on the validation split, each point's scores, and the chosen point."""
    keys = list(plan.grid)
    lines = [
        "# Training settings chosen on the validation split",
        "",
        f"Made by `{command}` (run folder `{result['run']}`). Every point trained "
        f"{', '.join(plan.variants)} on the same pairs and was evaluated on the validation split "
        f"({result['validation']}); the test split was not looked at. "
        f"A point's score is the mean {plan.metric} over those variants"
        + (f", ties broken by the mean {plan.tie_break}." if plan.tie_break else "."),
        "",
        "| point | " + " | ".join(keys) + f" | mean {plan.metric} | "
        + " | ".join(f"{name} {plan.metric}" for name in plan.variants)
        + (f" | mean {plan.tie_break} |" if plan.tie_break else " |"),
        "|---" * (len(keys) + len(plan.variants) + 2 + bool(plan.tie_break)) + "|",
    ]  # fmt: skip
    for row in result["rows"]:
        chosen = " (chosen)" if row["point"] == result["best"]["point"] else ""
        cells = [f"g{row['point']}{chosen}", *(str(row["settings"][key]) for key in keys), f"{row['score']:.4f}"]
        cells += [f"{row['variants'][name].get(plan.metric, float('nan')):.4f}" for name in plan.variants]
        if plan.tie_break:
            cells.append(f"{row['tie_break']:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    chosen = ", ".join(f"{key} = {value}" for key, value in result["best"]["settings"].items())
    lines += ["", f"Chosen: g{result['best']['point']}: {chosen}."]
    return "\n".join(lines) + "\n"
