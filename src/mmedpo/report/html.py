"""The run report: RUN/report/index.html, one page that works offline and from a copied folder.

    mmedpo report runs/demo

It shows the results table (a row per metric, a column per variant, with
confidence intervals) and whether the run's claim ("MMedPO > DPO > base") holds
per metric, metric plots, each variant's training curves and held-out reward
accuracy (`report.training`), the weight distribution per pair kind, judge
agreement, the localizer's IoU, a gallery of pairs (image, region, noised
image, texts, every judge's score, weight) and the stage timings. Images and
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

from mmedpo.data.images import ImageError, resolve_image
from mmedpo.evaluation.plots import metric_panels
from mmedpo.layout import RunLayout, read_run_config
from mmedpo.records import PreferencePair, read_jsonl
from mmedpo.report.ablation import chain_verdict, verdict_lines
from mmedpo.report.figures import equal_weight_notes, weight_histogram, weights_by_kind
from mmedpo.report.training import training_section

GALLERY_SIZE = 12
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
    seed = _config(run_dir).get("seed", 0)
    comparison = compare_results(results, baseline="base", seed=seed)
    table = _comparison_table(comparison)
    config = _config(run_dir)
    chains = [config.get("claim") or [], *(config.get("ablations") or [])]
    verdict = "".join(_chain_section(results, chain, seed, is_claim=index == 0) for index, chain in enumerate(chains))
    plots = "".join(
        f"<img class='plot' src='{_e(p.name)}' alt='{_e(p.stem)}'>" for p in plot_comparison(comparison, out_dir)
    )
    return f"{table}{verdict}<div class='plots'>{plots}</div>"


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


def pairs_section(run_dir: Path, out_dir: Path, summaries: dict[str, dict]) -> str:
    layout = RunLayout.read(run_dir)
    if not layout.scored_pairs.exists():
        return "<p>No scored pairs yet.</p>"
    pairs = read_jsonl(layout.scored_pairs, PreferencePair)
    parts = []
    variant, weighted = _weighted_variant(layout)
    if weighted:
        histogram = weight_histogram(weighted, out_dir / "weights.png", title=f"weights of {variant}'s pairs")
        parts.append(f"<img class='plot' src='{_e(histogram.name)}' alt='weight distribution'>")
        parts += [f"<p class='note'>{_e(note)}</p>" for note in equal_weight_notes(weights_by_kind(weighted))]
    parts.append(pair_counts_table(pairs))
    agreement = summaries.get("score", {}).get("agreement")
    if agreement:
        parts.append(f"<h3>Judge agreement</h3>{_panel_warning(agreement)}{_agreement_table(agreement)}")
    iou = summaries.get("curate_visual", {}).get("localizer_iou")
    if iou:
        shown = f"<p id='iou'>{_e(iou)}</p>" if isinstance(iou, str) else _iou_table(iou)  # str: why not measured
        parts.append(f"<h3>Localizer IoU against the true lesion masks</h3>{shown}")
    weights = {pair.id: pair.weight for pair in weighted}
    parts.append(_gallery(pairs, weights, variant, layout.image_roots, out_dir))
    return "".join(parts)


def _agreement_table(agreement: dict) -> str:
    """The judges' Spearman correlations as a matrix, and Krippendorff's alpha over all of them."""
    spearman = agreement.get("spearman") or {}
    judges = list(dict.fromkeys(judge for key in spearman for judge in key.split(" vs ")))
    parts = []
    if judges:
        head = "".join(f"<th>{_e(judge)}</th>" for judge in judges)
        rows = "".join(
            f"<tr><td>{_e(a)}</td>" + "".join(f"<td>{_correlation(spearman, a, b)}</td>" for b in judges) + "</tr>"
            for a in judges
        )
        parts.append(f"<table id='agreement'><tr><th>Spearman ρ</th>{head}</tr>{rows}</table>")
    alpha = agreement.get("krippendorff_alpha")
    alpha_text = "not measurable" if alpha is None else f"{alpha:.3f}"
    parts.append(
        f"<p>Krippendorff's α (interval) over all judges: <b id='alpha'>{alpha_text}</b> "
        "<span class='note'>(1: full agreement, 0: chance; ρ: rank correlation of two judges' scores of the same "
        "pairs)</span></p>"
    )
    by_pair = agreement.get("krippendorff_alpha_by_pair") or {}
    if len(by_pair) > 1:
        each = ", ".join(f"{_e(pair)} {'-' if value is None else f'{value:.3f}'}" for pair, value in by_pair.items())
        parts.append(f"<p id='alpha-by-pair'>α of each pair of judges: {each}</p>")
    return "".join(parts)


def _panel_warning(agreement: dict) -> str:
    """The score stage's warning when the panel agrees no better than chance (alpha <= 0), else nothing."""
    warning = agreement.get("warning")
    return f"<p class='worse' id='panel-warning'>{_e(warning)}</p>" if warning else ""


def _correlation(spearman: dict, a: str, b: str) -> str:
    if a == b:
        return "1"
    value = spearman.get(f"{a} vs {b}", spearman.get(f"{b} vs {a}"))
    return "-" if value is None else f"{value:+.3f}"


def _iou_table(iou: dict) -> str:
    cells = [str(iou.get("n", "-")), *(f"{iou[k]:.3f}" if k in iou else "-" for k in ("median", "mean"))]
    cells.append(str(iou.get("refused", "-")))
    head = "".join(f"<th>{name}</th>" for name in ("images", "median IoU", "mean IoU", "refused"))
    row = "".join(f"<td>{cell}</td>" for cell in cells)
    return f"<table id='iou'><tr>{head}</tr><tr>{row}</tr></table>"


def pair_counts(pairs: list[PreferencePair]) -> dict[str, dict[str, int]]:
    """Per pairs file (text, visual, visual-whole, visual-gold...): how many pairs, how many of the visual ones
    show lesion neglect or were wrong on the clean image too, are on images where the localizer found no
    lesion, or repeat a textual pair; and the distinct pairs of the text and lesion visual files together
    (a visual pair repeating a textual one counted once)."""
    counts: dict[str, dict[str, int]] = {}
    for pair in pairs:
        name = "text" if pair.kind == "text" else _visual_file(pair)
        row = counts.setdefault(name, {"pairs": 0})
        row["pairs"] += 1
        provenance = pair.provenance
        for key, counted in (
            (provenance.get("error"), True),
            ("no lesion found", provenance.get("lesion_found") is False),
            ("repeats a text pair", bool(provenance.get("duplicates"))),
        ):
            if key and counted:
                row[key] = row.get(key, 0) + 1
    text, visual = counts.get("text", {}), counts.get("visual", {})
    if text and visual:
        counts["text + visual, distinct"] = {
            "pairs": text["pairs"] + visual["pairs"] - visual.get("repeats a text pair", 0)
        }
    return counts


def _visual_file(pair: PreferencePair) -> str:
    region = "" if (pair.region or "lesion") == "lesion" else f"-{pair.region}"
    return f"visual{region}{'-gold' if pair.rejected_text == 'gold' else ''}"


def pair_counts_table(pairs: list[PreferencePair]) -> str:
    counts = pair_counts(pairs)
    columns = ["pairs", "lesion-neglect", "wrong-on-clean", "no lesion found", "repeats a text pair"]
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    rows = []
    for name, row in counts.items():
        visual = name.startswith("visual")  # the classes are counted for visual pairs only
        cells = "".join(f"<td>{row.get(c, 0) if visual or c == 'pairs' else '-'}</td>" for c in columns)
        rows.append(f"<tr><td>{_e(name)}</td>{cells}</tr>")
    note = (
        "<p><small>Lesion-neglect: the model was right on the clean image and wrong on the noised one; "
        "wrong-on-clean: wrong on both. No lesion found: the localizer's region on an image where it sees no "
        "lesion. A visual pair repeating a text pair (same sample, same rejected answer) is counted once in the "
        "distinct total.</small></p>"
    )
    return f"<h3>Pairs</h3><table id='pair-counts'><tr><th>file</th>{head}</tr>{''.join(rows)}</table>{note}"


def _weighted_variant(layout: RunLayout) -> tuple[str | None, list[PreferencePair]]:
    """The first variant of the claim (else of the config) whose pairs file exists, and its pairs."""
    config = read_run_config(layout.dir)
    for variant in [*(config.get("claim") or []), *layout.variant_names()]:
        path = layout.variant_pairs(variant)
        if variant != "base" and path.exists():
            return variant, read_jsonl(path, PreferencePair)
    return None, []


def _gallery(
    pairs: list[PreferencePair], weights: dict[str, float | None], variant: str | None, roots: list[Path], out_dir: Path
) -> str:
    visual = [p for p in pairs if p.kind == "visual"][: GALLERY_SIZE // 2]
    picked = visual + [p for p in pairs if p.kind == "text"][: GALLERY_SIZE - len(visual)]
    cards = []
    for index, pair in enumerate(picked):
        names = [("image", pair.image), ("region", pair.provenance.get("mask")), ("noised", pair.rejected_image)]
        images = "".join(_copy_image(name, roots, out_dir, f"{index}-{label}", label) for label, name in names if name)
        scores = ", ".join(f"{_e(k)} {v:.2f}" for k, v in pair.scores.items())
        clinical = "-" if pair.clinical_score is None else f"{pair.clinical_score:.2f}"
        weight = weights.get(pair.id)
        weight_text = f" · weight in {_e(variant)} {weight:.2f}" if weight is not None else ""
        cards.append(
            f"<div class='pair'>{images}<p><b>{_e(pair.kind)}</b> · clinical score {clinical}{weight_text}"
            f" ({scores})</p><p>Q: {_e(pair.question)}</p><p>chosen: {_e(pair.chosen)}</p>"
            f"<p>rejected: {_e(pair.rejected)}</p></div>"
        )
    return f"<h3>Gallery</h3><div id='gallery'>{''.join(cards)}</div>"


# What each gallery image is: the pair's image, the region its noise covers, the noised image the rejected answer sees.
CAPTIONS = {"image": "image", "region": "noise region", "noised": "noised (rejected)"}


def _copy_image(name: str, roots: list[Path], out_dir: Path, stem: str, label: str) -> str:
    try:
        source = resolve_image(name, roots)
    except ImageError:
        return ""
    target = out_dir / "img" / f"{stem}{source.suffix}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return (
        f"<figure><img src='img/{_e(target.name)}' alt='{_e(stem)}'><figcaption>{CAPTIONS[label]}</figcaption></figure>"
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
