"""The training section of the run report: each variant's curves and what it trained on, from its train_log.json.

The curves are the trainer's logged entries (`log_history`): the loss, the reward
margin and the reward accuracy overall and by pair kind, and the mean clinical
weight, one figure per metric with a line per variant. The table gives each
variant's optimizer steps, pairs by kind and reward accuracy on held-out pairs.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, NamedTuple

from mmedpo.layout import RunLayout
from mmedpo.report.figures import training_curves


class Curve(NamedTuple):
    """One figure: its file stem, its title, its panels as (panel title, logged key), a fixed y range if any."""

    stem: str
    title: str
    panels: tuple[tuple[str, str], ...]
    ylim: tuple[float, float] | None = None


# The keys are WeightedDPOTrainer's logged metrics.
CURVES = (
    Curve(
        "curves_loss",
        "loss",
        (
            ("as optimised", "loss"),
            ("preference loss, weighted", "loss/weighted"),
            ("text pairs, unweighted", "loss/unweighted/text"),
            ("visual pairs, unweighted", "loss/unweighted/visual"),
        ),
    ),
    Curve(
        "curves_margin",
        "reward margin (chosen reward - rejected reward)",
        (
            ("all pairs", "rewards/margins"),
            ("text pairs", "rewards/margins/text"),
            ("visual pairs", "rewards/margins/visual"),
        ),
    ),
    Curve(
        "curves_accuracy",
        "reward accuracy (share of pairs whose chosen reward is higher)",
        (
            ("all pairs", "rewards/accuracies"),
            ("text pairs", "rewards/accuracies/text"),
            ("visual pairs", "rewards/accuracies/visual"),
        ),
        ylim=(-0.03, 1.03),
    ),
    Curve("curves_weight", "clinical weight and NLL", (("weight mean", "weight/mean"), ("chosen NLL", "nll/chosen"))),
)


def read_train_logs(layout: RunLayout) -> dict[str, dict[str, Any]]:
    """Each trained variant's train_log.json, in the config's order; variants not trained yet are left out."""
    logs = {}
    for variant in layout.variant_names():
        try:
            log = json.loads(layout.train_log(variant).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(log, dict):
            logs[variant] = log
    return logs


def variant_colors(layout: RunLayout) -> dict[str, str]:
    """One colour per variant, the same as in the metric charts (base first, then the config's order)."""
    return {name: f"C{index % 10}" for index, name in enumerate(["base", *layout.variant_names()])}


def training_section(layout: RunLayout, out_dir: Path) -> str:
    """The training table and curve figures (written into `out_dir`), as HTML."""
    logs = read_train_logs(layout)
    if not logs:
        return "<p>No variant trained yet.</p>"
    histories = {
        variant: [entry for entry in log.get("log_history", []) if "loss" in entry and "step" in entry]
        for variant, log in logs.items()
    }
    figures = []
    for curve in CURVES:
        path = out_dir / f"{curve.stem}.png"
        if training_curves(histories, curve.panels, curve.title, path, variant_colors(layout), curve.ylim):
            figures.append(f"<img class='plot' src='{path.name}' alt='{html.escape(curve.title)}'>")
    note = (
        "<p><small>Rewards are β times the policy's log-probability ratio to the reference; reward accuracy is the "
        "share of pairs whose chosen answer has the higher reward. Held out: pairs of the same kinds made on the "
        "validation split, never trained on, scored once training ends. Curves: one point per logged step "
        "(train.logging_steps), each the mean over the batches since the last.</small></p>"
    )
    return f"{_table(logs)}{note}<div class='plots'>{''.join(figures)}</div>"


def _table(logs: dict[str, dict[str, Any]]) -> str:
    head = "".join(
        f"<th>{name}</th>"
        for name in ("variant", "pairs trained on", "optimizer steps", "epochs", "held-out pairs",
                     "held-out reward accuracy", "of text pairs", "of visual pairs", "held-out reward margin")
    )  # fmt: skip
    rows = []
    for variant, log in logs.items():
        heldout = log.get("heldout") or {}
        cells = [
            html.escape(variant),
            _pairs(log),
            str(log.get("optimizer_steps", "-")),
            _number(log.get("epochs"), "{:.2f}"),
            str(heldout.get("pairs", "-")),
            _number(heldout.get("reward_accuracy"), "{:.3f}"),
            _number(heldout.get("reward_accuracy_text"), "{:.3f}"),
            _number(heldout.get("reward_accuracy_visual"), "{:.3f}"),
            _number(heldout.get("reward_margin"), "{:+.4f}"),
        ]
        rows.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    return f"<div class='scroll'><table id='training'><tr>{head}</tr>{''.join(rows)}</table></div>"


def _pairs(log: dict[str, Any]) -> str:
    by_kind = log.get("pairs_by_kind") or {}
    kinds = ", ".join(f"{html.escape(kind)} {count}" for kind, count in by_kind.items())
    return f"{log.get('pairs', '-')}" + (f" ({kinds})" if kinds else "")


def _number(value: float | None, form: str) -> str:
    return "-" if value is None else form.format(value)
