"""The run report: RUN/report/index.html, one page that works offline and from a copied folder.

    mmedpo report runs/demo

It shows the results table (a row per metric, a column per variant, with
confidence intervals), the share of test answers each variant changed against
the base and the SFT control, whether the run's claim ("MMedPO > DPO > base") holds
per metric, metric plots, each variant's training curves and held-out reward
accuracy (`report.training`), the pairs (`report.pairs`: the weight
distribution per pair kind, judge agreement, the localizer's IoU, a gallery of
pairs) and the stage timings. Images and
plots are copied or drawn into report/, no CDN, and every text is escaped. The
page fits a 1400-pixel window: plots shrink to the page's width, and only a
table too wide for it scrolls, inside its own box.
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from typing import Any

from mmedpo.evaluation.plots import metric_panels
from mmedpo.layout import RunLayout, read_run_config
from mmedpo.report.ablation import chain_verdict, control_of, verdict_lines
from mmedpo.report.pairs import pairs_section
from mmedpo.report.training import training_section

# The page's sections: anchor -> heading (and the link to it at the top).
SECTIONS = {
    "sec-results": "Results on the test split",
    "sec-training": "Training",
    "sec-pairs": "Preference pairs",
    "sec-stages": "Stages",
}
# The colour of a verdict: a step's (better, within noise, worse) or a chain's (holds, within noise, fails).
VERDICT_CLASS = {"better": "better", "holds": "better", "within noise": "noise", "worse": "worse", "fails": "worse"}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem auto; padding: 0 1.5rem; color: #222; max-width: 1320px;
       line-height: 1.4; }
nav a { margin-right: 1rem; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2.2rem; }
table { border-collapse: collapse; margin: 1rem 0; font-size: .85rem; }
th, td { border: 1px solid #ccc; padding: .3rem .5rem; text-align: right; vertical-align: top; }
th:first-child, td:first-child { text-align: left; }
tr.group th { background: #f2f2f2; text-align: left; }
td .value { white-space: nowrap; font-weight: 600; }
/* a table too wide for the page scrolls inside this box, never the page */
.scroll { overflow-x: auto; max-width: 100%; }
/* verdicts: better (interval above 0) / within noise / worse (interval below 0) */
.better { color: #176117; } .noise { color: #8a5a00; } .worse { color: #a11; }
.plots { display: flex; flex-wrap: wrap; gap: .5rem; align-items: flex-start; }
img.plot { max-width: 100%; height: auto; }
.note { color: #555; font-size: .85rem; }
#gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(370px, 1fr)); gap: .8rem; }
.pair { font-size: .85rem; border: 1px solid #ddd; padding: .4rem; }
.pair figure { display: inline-block; margin: 0 4px 0 0; text-align: center; }
.pair img { width: 110px; image-rendering: pixelated; display: block; }
.pair figcaption { font-size: .75rem; color: #555; }
"""


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _e(value: Any) -> str:
    return html.escape(str(value))


def _config(run_dir: Path) -> dict:
    return read_run_config(run_dir)


def load_results(run_dir: Path) -> dict[str, dict]:
    """Evaluation results by variant: base first, then the config's variants in their order, then any others."""
    layout = RunLayout(Path(run_dir))
    results = {p.stem: _load_json(p) for p in sorted(layout.eval_dir.glob("*.json"))}
    results = {name: result for name, result in results.items() if "metrics" in result}
    order = ["base", *layout.variant_names()]
    rank = {name: index for index, name in enumerate(order)}
    return dict(sorted(results.items(), key=lambda item: rank.get(item[0], len(order))))


def results_section(run_dir: Path, out_dir: Path) -> str:
    from mmedpo.evaluation.compare import compare_results
    from mmedpo.evaluation.plots import plot_comparison

    results = load_results(run_dir)
    if "base" not in results:
        return "<p>No evaluation yet.</p>"
    config = _config(run_dir)
    seed = config.get("seed", 0)
    comparison = compare_results(results, baseline="base", seed=seed)
    table = _comparison_table(comparison)
    chains = [config.get("claim") or [], *(config.get("ablations") or [])]
    verdict = "".join(_chain_section(results, chain, seed, is_claim=index == 0) for index, chain in enumerate(chains))
    plots = "".join(
        f"<img class='plot' src='{_e(p.name)}' alt='{_e(p.stem)}'>" for p in plot_comparison(comparison, out_dir)
    )
    return f"{table}{_changed_table(results, control_of(config))}{verdict}<div class='plots'>{plots}</div>"


def _changed_table(results: dict, control: str | None) -> str:
    """Per trained variant, the share of test answers unlike the base's and unlike the SFT control's."""
    from mmedpo.evaluation.compare import changed_answers

    others = [name for name in ("base", control) if name in results]
    changed = changed_answers({name: [result] for name, result in results.items()}, control)
    rows = "".join(
        f"<tr><td>{_e(name)}</td>"
        + "".join(f"<td>{changed[name][f'vs_{other}']:.1%}</td>" if other != name else "<td>-</td>" for other in others)
        + "</tr>"
        for name in results
        if name != "base"
    )
    head = "".join(f"<th>vs {_e(other)}</th>" for other in others)
    return f"<table id='changed'><tr><th>test answers changed</th>{head}</tr>{rows}</table>"


def _chain_section(results: dict, chain: list[str], seed: int, is_claim: bool) -> str:
    """Whether one chain (the claim, or an ablation) holds, metric by metric; empty if under two were evaluated."""
    chain = [name for name in chain if name in results]
    if len(chain) < 2:
        return ""
    verdicts = chain_verdict(results, chain, seed=seed)
    items = "".join(
        f"<li class='{VERDICT_CLASS[v['status']]}'>{_e(line)}</li>"
        for v, line in zip(verdicts, verdict_lines(verdicts))
    )
    kind = "id='claim'" if is_claim else "class='ablation'"
    return f"<h3>Does {_e(' > '.join(chain))} hold?</h3><ul {kind}>{items}</ul>"


def _metric_groups(metrics: list[str]) -> list[tuple[str, list[str]]]:
    """The metrics by group (the plots' groups: vqa, report, clinical, visual), then any others, in order."""
    grouped = [(group, [m for panel in panels for m in panel]) for group, panels in metric_panels(metrics).items()]
    known = {m for _, members in grouped for m in members}
    others = [m for m in metrics if m not in known]
    return grouped + ([("other", others)] if others else [])


def _comparison_table(comparison: dict) -> str:
    """A row per metric (grouped), a column per variant, and the majority answer's column when there is one."""
    variants = comparison["variants"]
    majority = comparison["majority"]["metrics"]
    with_majority = any(value is not None for value in majority.values())
    head = "".join(f"<th>{_e(variant['name'])}</th>" for variant in variants)
    if with_majority:
        head += "<th>majority answer (test split)</th>"
    rows = []
    for group, metrics in _metric_groups(comparison["metrics"]):
        rows.append(f"<tr class='group'><th colspan='{len(variants) + 1 + with_majority}'>{_e(group)}</th></tr>")
        for metric in metrics:
            cells = "".join(f"<td>{_result_cell(comparison, variant, metric)}</td>" for variant in variants)
            if with_majority:
                cells += f"<td class='majority'>{'-' if majority[metric] is None else f'{majority[metric]:.4f}'}</td>"
            rows.append(f"<tr><td>{_e(metric)}</td>{cells}</tr>")
    note = (
        f"<p class='note'>Relative change against {_e(comparison['baseline'])}; Δ: paired difference with its "
        f"{comparison['confidence']:.0%} bootstrap interval on the same test questions, "
        "<span class='better'>better</span> when the interval lies above 0, "
        "<span class='worse'>worse</span> when below, else <span class='noise'>within noise</span>. "
        "MDE: the smallest closed-accuracy difference these questions can detect (80% power). "
        "Majority answer: the commonest gold answer of each question type, given to every question.</p>"
    )
    table = f"<table id='results'><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>"
    return f"<div class='scroll'>{table}</div>{note}"


def _result_cell(comparison: dict, variant: dict, metric: str) -> str:
    """One variant's value of one metric, its change against the baseline and the paired difference's verdict."""
    value, relative = variant["metrics"].get(metric), variant["relative"].get(metric)
    if value is None:
        return "-"
    text = f"<span class='value'>{value:.4f}</span>"
    if relative is not None and variant["name"] != comparison["baseline"]:
        text += f" ({relative:+.1f}%)"
    stats = variant["paired"].get(metric)
    if stats:
        text += (
            f"<br><small class='{VERDICT_CLASS[stats['verdict']]}'>Δ {stats['difference']:+.3f} "
            f"[{stats['low']:+.3f}, {stats['high']:+.3f}] {_e(stats['verdict'])}</small>"
        )
        if stats.get("mde") is not None:
            text += f"<br><small>MDE {stats['mde']:.3f}</small>"
    return text


def stages_section(run_dir: Path) -> tuple[str, dict[str, dict]]:
    """The stage table, and each stage's summary by its state file's name (e.g. "train.mmedpo")."""
    paths = sorted(RunLayout(run_dir).stages_dir.glob("*.json"), key=lambda p: p.stat().st_mtime)
    states = {p.stem: _load_json(p) for p in paths}
    rows = "".join(_stage_row(name, state) for name, state in states.items() if name != "report")
    # The report stage is the one writing this page: its state file says "running" until the page is written.
    rows += "<tr><td>report</td><td>writing this page</td><td>-</td><td></td></tr>"
    table = f"<table id='timings'><tr><th>stage</th><th>status</th><th>seconds</th><th>notes</th></tr>{rows}</table>"
    return table, {name: state.get("summary", {}) for name, state in states.items()}


def _stage_row(file_stem: str, state: dict) -> str:
    name = file_stem.replace(".", ":", 1)  # the state file of stage "train:mmedpo" is train.mmedpo.json
    notes = "<br>".join(_e(note) for note in (state.get("summary") or {}).get("notes") or [])  # skipped parts, choices
    return (
        f"<tr><td>{_e(name)}</td><td>{_e(state.get('status'))}</td><td>{float(state.get('seconds', 0)):.1f}</td>"
        f"<td>{notes}</td></tr>"
    )


def write_report(run_dir: Path | str) -> Path:
    """Write RUN/report/index.html (and its images) from what the run folder holds."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir}: not a run folder")
    out_dir = RunLayout(run_dir).report_dir
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    timings, summaries = stages_section(run_dir)
    nav = "".join(f"<a href='#{anchor}'>{title}</a>" for anchor, title in SECTIONS.items())
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>mmedpo run {_e(run_dir.name)}</title>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<style>{STYLE}</style></head><body><h1>mmedpo run {_e(run_dir.name)}</h1><nav>{nav}</nav>"
        f"<h2 id='sec-results'>{SECTIONS['sec-results']}</h2>{results_section(run_dir, out_dir)}"
        f"<h2 id='sec-training'>{SECTIONS['sec-training']}</h2>{training_section(RunLayout(run_dir), out_dir)}"
        f"<h2 id='sec-pairs'>{SECTIONS['sec-pairs']}</h2>{pairs_section(run_dir, out_dir, summaries)}"
        f"<h2 id='sec-stages'>{SECTIONS['sec-stages']}</h2>{timings}</body></html>"
    )
    target = out_dir / "index.html"
    target.write_text(page, encoding="utf-8")
    return target


def collect_results(inputs: list[Path]) -> dict[str, dict]:
    """Evaluation results from run folders and eval JSON files, by name.

    A run folder gives each of its variants (base first, config order); with
    several inputs a run's variants are named RUN/VARIANT.
    """
    results = {}
    for path in inputs:
        if not path.is_dir():
            result = _load_json(path)
            if "metrics" not in result:
                raise ValueError(f"{path}: not an evaluation file (no metrics in it)")
            results[path.stem] = result
            continue
        found = load_results(path)
        if not found:
            raise ValueError(f"{path}: no eval/*.json in this folder")
        for variant, result in found.items():
            results[variant if len(inputs) == 1 else f"{path.name}/{variant}"] = result
    return results
