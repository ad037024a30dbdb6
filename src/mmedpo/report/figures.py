"""Figures of the run report drawn from the run's records (matplotlib's Agg canvas, no display)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mmedpo.records import PreferencePair


def weight_histogram(pairs: list[PreferencePair], path: Path, title: str = "weight distribution") -> Path | None:
    """Histogram of the final weights, one series per pair kind; None when no pair has a weight."""
    by_kind: dict[str, list[float]] = {}
    for pair in pairs:
        if pair.weight is not None:
            by_kind.setdefault(pair.kind, []).append(pair.weight)
    if not by_kind:
        return None
    figure = Figure(figsize=(5, 3.2))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.hist(list(by_kind.values()), bins=20, label=[f"{k} ({len(v)})" for k, v in by_kind.items()], stacked=True)
    axes.set_xlabel("weight (normalised clinical relevance)")
    axes.set_ylabel("pairs")
    axes.set_title(f"{title}, per pair kind")
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path
