"""Bar charts of the compared metrics per variant, written as PNG files.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so nothing
global is configured and no display is needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# One chart per group, and within it one panel per scale: CIDEr runs to 10, so it never shares an axis with the
# metrics in [0, 1] (beside it, BLEU's bars would be too short to read).
GROUPS = {
    "vqa": (("closed_accuracy", "closed_balanced_accuracy", "open_recall", "open_exact", "open_f1"),),
    "report": (("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "meteor"), ("cider",)),
    "clinical": (("clinical_precision", "clinical_recall", "clinical_f1"),),
    "visual": (("visual_changed_noised", "visual_drop_noised", "visual_drop_blank"),),
}


def metric_panels(metrics: Sequence[str]) -> dict[str, list[list[str]]]:
    """The given metrics by group and, within a group, by panel (one scale per panel); empty ones left out."""
    found = {}
    for group, panels in GROUPS.items():
        panels = [[name for name in panel if name in metrics] for panel in panels]
        if any(panels):
            found[group] = [panel for panel in panels if panel]
    return found


def plot_comparison(comparison: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Write `metrics_GROUP.png` for each group with a metric in the comparison; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for group, panels in metric_panels(comparison["metrics"]).items():
        path = out_dir / f"metrics_{group}.png"
        _bar_chart(comparison, panels, f"{group} metrics (protocol {comparison['protocol']})", path)
        written.append(path)
    return written


def _bar_chart(comparison: Mapping[str, Any], panels: Sequence[Sequence[str]], title: str, path: Path) -> None:
    """Grouped bars, a group per metric and a bar per variant; the legend below the panels, off the bars."""
    variants = comparison["variants"]
    width = 0.8 / len(variants)
    sizes = [len(panel) for panel in panels]
    figure = Figure(figsize=(max(5.0, 1.3 * sum(sizes) + 1.0), 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    for axes, metrics in zip(figure.subplots(1, len(panels), width_ratios=sizes, squeeze=False)[0], panels):
        positions = np.arange(len(metrics))
        for index, variant in enumerate(variants):
            values = [variant["metrics"][metric] for metric in metrics]
            heights = [np.nan if value is None else value for value in values]
            offset = (index - (len(variants) - 1) / 2) * width
            bars = axes.bar(positions + offset, heights, width, label=variant["name"], color=f"C{index % 10}")
            # Values upright inside the bar's column, so that neighbouring labels never overlap.
            axes.bar_label(bars, fmt="%.3f", fontsize=7, rotation=90, padding=2)
        axes.set_xticks(positions, metrics, rotation=20, ha="right")
        known = [v["metrics"][m] for v in variants for m in metrics if v["metrics"][m] is not None]
        low, high = min([0.0, *known]), max([0.0, *known])
        axes.set_ylim(1.25 * low, 1.25 * high if high > 0 else 1.0)  # from 0, with room above a bar for its label
        axes.grid(axis="y", alpha=0.3)
    figure.suptitle(title)
    legend_below(figure, *figure.axes[0].get_legend_handles_labels())
    figure.savefig(path, dpi=100)


def legend_below(figure: Figure, handles: Sequence, labels: Sequence[str]) -> None:
    """The figure's legend under its panels (never over the data), in as many columns as its width holds."""
    column_inches = 0.07 * max(len(label) for label in labels) + 0.6  # a label at 8 points, its handle and a gap
    columns = max(1, min(len(labels), int((figure.get_figwidth() - 0.2) // column_inches)))
    figure.legend(handles, labels, loc="outside lower center", ncols=columns, fontsize=8, frameon=False)
