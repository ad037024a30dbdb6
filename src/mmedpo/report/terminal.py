"""What `mmedpo run` prints at the end: the results table, whether each chain holds, the stage times.

Renderables (rich tables and plain lines) built from a run folder; the command
line prints them.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from rich.text import Text

from mmedpo.layout import RunLayout, read_run_config
from mmedpo.report.ablation import chain_verdict, verdict_lines
from mmedpo.report.html import load_results


def results_table(layout: RunLayout) -> Table | None:
    """Every evaluated variant's metrics on the test split, base first; None before any evaluation."""
    results = load_results(layout.dir)
    if not results:
        return None
    table = Table(title=f"{layout.dir}: the base model and the trained variants on the test split")
    table.add_column("metric")
    for variant in results:
        table.add_column(variant, justify="right")
    metrics = next(iter(results.values()))["metrics"]
    for name in [key for key, value in metrics.items() if isinstance(value, (int, float))]:
        table.add_row(name, *(_number(result["metrics"].get(name)) for result in results.values()))
    return table


# A chain's status in the terminal: the HTML report's colours.
STATUS_STYLE = {"holds": "green", "within noise": "yellow", "fails": "red"}


def chain_reports(layout: RunLayout) -> list[tuple[str, list[Text]]]:
    """For the claim and each ablation: its question and one verdict line per metric, coloured by its status."""
    results = load_results(layout.dir)
    config = read_run_config(layout.dir)
    chains = [config.get("claim") or [], *(config.get("ablations") or [])]
    reports = []
    for chain in chains:
        chain = [name for name in chain if name in results]
        if len(chain) >= 2:
            verdicts = chain_verdict(results, chain, seed=config.get("seed", 0))
            lines = [Text(line, style=STATUS_STYLE[v["status"]]) for v, line in zip(verdicts, verdict_lines(verdicts))]
            reports.append((f"Does {' > '.join(chain)} hold on the test split?", lines))
    return reports


def timings_table(results: Sequence) -> Table:
    """The wall time of each stage this command ran or skipped (`pipeline.StageResult`s)."""
    table = Table(title="stage wall time")
    table.add_column("stage")
    table.add_column("status")
    table.add_column("seconds", justify="right")
    for result in results:
        table.add_row(result.name, result.status, f"{result.seconds:.1f}")
    table.add_row("total", "", f"{sum(r.seconds for r in results if r.status == 'ran'):.1f}")
    return table


def _number(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
