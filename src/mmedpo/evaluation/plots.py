"""Bar charts of the compared metrics per variant, written as PNG files.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so nothing
global is configured and no display is needed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# One chart per group, so metrics of similar scale share an axis (CIDEr runs past 1).
GROUPS = {
    "vqa": ("closed_accuracy", "closed_balanced_accuracy", "open_recall", "open_exact", "open_f1"),
    "report": ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "meteor", "cider"),
    "clinical": ("clinical_precision", "clinical_recall", "clinical_f1"),
    "visual": ("visual_changed_noised", "visual_drop_noised", "visual_drop_blank"),
}


def plot_comparison(comparison: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Write `metrics_GROUP.png` for each group with a metric in the comparison; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for group, names in GROUPS.items():
        metrics = [name for name in names if name in comparison["metrics"]]
        if metrics:
            path = out_dir / f"metrics_{group}.png"
            _bar_chart(comparison, metrics, f"{group} metrics (protocol {comparison['protocol']})", path)
            written.append(path)
    return written


def _bar_chart(comparison: Mapping[str, Any], metrics: list[str], title: str, path: Path) -> None:
    variants = comparison["variants"]
    width = 0.8 / len(variants)
    positions = np.arange(len(metrics))
    figure = Figure(figsize=(max(4.0, 1.4 * len(metrics) + 1.5), 3.6))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for index, variant in enumerate(variants):
        values = [variant["metrics"][metric] for metric in metrics]
        heights = [np.nan if value is None else value for value in values]
        bars = axes.bar(positions + (index - (len(variants) - 1) / 2) * width, heights, width, label=variant["name"])
        axes.bar_label(bars, fmt="%.3f", fontsize=7)
    axes.set_xticks(positions, metrics, rotation=20, ha="right")
    axes.set_title(title)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
