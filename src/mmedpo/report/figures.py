"""Figures of the run report drawn from the run's records (matplotlib's Agg canvas, no display)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mmedpo.evaluation.plots import legend_below
from mmedpo.records import PreferencePair


def weights_by_kind(pairs: Sequence[PreferencePair]) -> dict[str, list[float]]:
    """The final weights of the pairs that have one, per pair kind."""
    by_kind: dict[str, list[float]] = {}
    for pair in pairs:
        if pair.weight is not None:
            by_kind.setdefault(pair.kind, []).append(pair.weight)
    return by_kind


def equal_weight_notes(by_kind: Mapping[str, Sequence[float]]) -> list[str]:
    """A sentence for each kind whose weights are all the same (its histogram is then one bar, or none at all)."""
    return [
        f"All {len(weights)} {kind} pairs weigh {weights[0]:.3g}: their weights do not tell them apart."
        for kind, weights in by_kind.items()
        if len(weights) > 1 and min(weights) == max(weights)
    ]


def weight_histogram(pairs: list[PreferencePair], path: Path, title: str = "weight distribution") -> Path | None:
    """Histogram of the final weights, one series per pair kind; None when no pair has a weight."""
    by_kind = weights_by_kind(pairs)
    if not by_kind:
        return None
    equal = {kind for kind, weights in by_kind.items() if min(weights) == max(weights)}
    labels = [f"{kind} ({len(w)}{f', all {w[0]:.3g}' if kind in equal else ''})" for kind, w in by_kind.items()]
    figure = Figure(figsize=(6, 3.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.hist(list(by_kind.values()), bins=20, label=labels, stacked=True)
    axes.set_xlabel("weight (normalised clinical relevance)")
    axes.set_ylabel("pairs")
    axes.set_title(f"{title}, per pair kind")
    figure.legend(loc="outside right upper", fontsize=8, frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def training_curves(
    histories: Mapping[str, Sequence[Mapping[str, float]]],
    panels: Sequence[tuple[str, str]],
    title: str,
    path: Path,
    colors: Mapping[str, str],
    ylim: tuple[float, float] | None = None,
) -> Path | None:
    """Small multiples of one training metric: a panel per (title, logged key), a line per variant against the step.

    `histories` are Trainer log histories (entries with "step"); panels no variant logged are left out, and None is
    returned when none is left. The legend sits below the panels, outside them; `ylim` fixes every panel's y range.
    """
    panels = [(name, key) for name, key in panels if any(key in entry for h in histories.values() for entry in h)]
    if not panels:
        return None
    figure = Figure(figsize=(min(3.4 * len(panels), 13.0), 3.4), layout="constrained")
    FigureCanvasAgg(figure)
    for axes, (name, key) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        for variant, history in histories.items():
            points = [(entry["step"], entry[key]) for entry in history if key in entry]
            if points:
                steps, values = zip(*points)
                axes.plot(steps, values, label=variant, color=colors.get(variant), linewidth=1.4)
        axes.set_title(name, fontsize=10)
        axes.set_xlabel("optimizer step")
        axes.grid(alpha=0.3)
        if ylim is not None:
            axes.set_ylim(*ylim)
    figure.suptitle(title)
    handles: dict[str, object] = {}
    for axes in figure.axes:  # every variant once, even one that logged only some panels
        for handle, label in zip(*axes.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    legend_below(figure, list(handles.values()), list(handles))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path
