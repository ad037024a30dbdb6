"""What a study found: every variant over seeds, and each chain's verdict from intervals.

    mmedpo study --seeds 0,1,2        # writes these into runs/NAME/
    runs/NAME/study.json              everything below, as data
    runs/NAME/results.md              the table and verdicts (the README's results block)
    runs/NAME/report/index.html       the same, coloured by verdict

For every metric and variant: the per-seed values, their mean and a 95%
interval over seeds and test items (a paired hierarchical bootstrap,
`evaluation.intervals`). For every chain (the claim and each ablation), each
step's mean difference with its interval and verdict: "better" (interval above
0), "within noise" or "worse" (below 0); a chain holds only when every step is
better. Beside them: the majority-answer baseline, how many test answers each
variant changes against the base and the SFT control, what each variant trained
on (pairs, optimizer steps) and its reward accuracy on held-out pairs, and the
smallest closed-accuracy difference the study can detect.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmedpo.evaluation.compare import changed_answers
from mmedpo.evaluation.intervals import difference_over_seeds
from mmedpo.evaluation.item_scores import ITEM_METRICS
from mmedpo.evaluation.power import closed_items_needed, discordance, minimum_detectable_difference, seeds_needed
from mmedpo.layout import RunLayout, read_run_config
from mmedpo.records import dump_json
from mmedpo.report.ablation import HEADLINE, chain_verdict_over_seeds, control_of, verdict_lines
from mmedpo.report.html import STYLE, VERDICT_CLASS, load_results


def seed_dir(study_dir: Path, seed: int) -> Path:
    return Path(study_dir) / f"seed-{seed}"


def load_study(study_dir: Path, seeds: Sequence[int]) -> dict[str, list[dict]]:
    """Evaluation results by variant, one per seed in seed order; only variants every seed evaluated."""
    per_seed = [load_results(seed_dir(study_dir, seed)) for seed in seeds]
    if not per_seed or not per_seed[0]:
        raise ValueError(f"{study_dir}: no evaluated seed run (expected {seed_dir(study_dir, seeds[0])}/eval/)")
    names = [name for name in per_seed[0] if all(name in results for results in per_seed)]
    return {name: [results[name] for results in per_seed] for name in names}


def summarize_study(study_dir: Path, seeds: Sequence[int], metrics: Sequence[str] = HEADLINE) -> dict[str, Any]:
    """The study's findings as JSON-able data (see the module docstring)."""
    results = load_study(study_dir, seeds)
    config = read_run_config(study_dir)
    metrics = [m for m in metrics if all(m in r["metrics"] for runs in results.values() for r in runs)]
    table = {
        metric: {name: _over_seeds(runs, metric) for name, runs in results.items() if metric in ITEM_METRICS}
        for metric in metrics
    }
    chains = []
    for index, chain in enumerate([config.get("claim") or [], *(config.get("ablations") or [])]):
        present = [name for name in chain if name in results]
        if len(present) >= 2:
            verdicts = chain_verdict_over_seeds(results, present, metrics, seed=min(seeds))
            chains.append({"chain": present, "is_claim": index == 0, "verdicts": verdicts})
    return {
        "seeds": list(seeds),
        "variants": list(results),
        "metrics": metrics,
        "table": table,
        "majority": _majority(results, metrics),
        "chains": chains,
        "control": control_of(config),
        "changed": changed_answers(results, control_of(config)),
        "training": _training(study_dir, seeds, list(results)),
        "power": _power(results, chains),
    }


def _over_seeds(runs: Sequence[Mapping[str, Any]], metric: str) -> dict[str, Any]:
    found = difference_over_seeds(runs, None, metric)
    return {key: found[key] for key in ("per_seed", "mean", "low", "high")}


def _majority(results: Mapping[str, Sequence[Mapping]], metrics: Sequence[str]) -> dict[str, float]:
    """The majority-answer baseline of the test split, averaged over seeds (the same for every variant)."""
    runs = next(iter(results.values()))
    majorities = [run["metrics"].get("majority") or {} for run in runs]
    return {m: float(np.mean([found[m] for found in majorities])) for m in metrics if all(m in f for f in majorities)}


def _training(study_dir: Path, seeds: Sequence[int], variants: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per trained variant, from each seed's train stage: pairs by kind, optimizer steps, held-out reward accuracy."""
    found: dict[str, dict[str, Any]] = {}
    for name in variants:
        summaries = [_stage_summary(seed_dir(study_dir, seed), f"train:{name}") for seed in seeds]
        if not all(summaries):
            continue
        entry = {"pairs": [s.get("pairs") for s in summaries], "steps": [s.get("steps") for s in summaries]}
        accuracies = [s.get("heldout", {}).get("reward_accuracy") for s in summaries]
        if all(a is not None for a in accuracies):
            entry["heldout_reward_accuracy"] = accuracies
        found[name] = entry
    return found


def _stage_summary(run_dir: Path, stage: str) -> dict:
    path = RunLayout(run_dir).stage_state(stage)
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state.get("summary", {}) if state.get("status") == "done" else {}


def _power(results: Mapping[str, Sequence[Mapping]], chains: Sequence[Mapping]) -> dict[str, Any]:
    """The smallest closed-accuracy difference each claim step can detect (95% level, 80% power) over these seeds."""
    claim = next((chain["chain"] for chain in chains if chain["is_claim"]), None)
    if not claim or "closed_accuracy" not in next(iter(results.values()))[0]["metrics"]:
        return {}
    steps = {}
    for upper, lower in zip(claim, claim[1:]):
        runs = list(zip(results[upper], results[lower]))
        psis = [discordance(a, b) for a, b in runs]
        psi = float(np.mean(psis))
        differences = [a["metrics"]["closed_accuracy"] - b["metrics"]["closed_accuracy"] for a, b in runs]
        n_items = int(np.mean([a["metrics"]["n_closed"] for a, _ in runs]))
        # Seeds that draw their own test items (SynthMed) each add item noise (about psi/n) to their
        # difference: what is left of the spread over seeds is the seeds' own variance (method of moments,
        # never below 0). Seeds that share one test split (a real dataset) share its item noise instead; the
        # items are compared by what they ask, since SynthMed names every seed's items alike.
        shared = len({_test_items(a) for a, _ in runs}) == 1
        item_variance = (
            0.0 if shared else float(np.mean([p / a["metrics"]["n_closed"] for p, (a, _) in zip(psis, runs)]))
        )
        tau2 = max(0.0, float(np.var(differences, ddof=1)) - item_variance) if len(runs) > 1 else 0.0
        mde = minimum_detectable_difference(n_items, psi, len(runs), tau2, shared_items=shared) if psi > 0 else None
        steps[f"{upper} - {lower}"] = {
            "n_items": n_items,
            "shared_items": shared,
            "discordance": psi,
            "seed_variance": tau2,
            "mde": mde,
            **_to_reach(TARGET_MDE, n_items, psi, len(runs), tau2, shared),
        }
    return steps


TARGET_MDE = 0.05  # the closed-accuracy difference a study should be able to detect (issue 13)


def _to_reach(target: float, n_items: int, psi: float, n_seeds: int, tau2: float, shared: bool) -> dict[str, Any]:
    """What detecting `target` would take: closed items per seed with these seeds (None: no number of items
    is enough, the seeds vary too much), and seeds with these items (None: not within 1000 seeds)."""
    if not 0 < target <= psi:
        return {"target": target, "items_needed": None, "seeds_needed": None}
    try:
        items = closed_items_needed(target, psi, n_seeds, tau2, shared_items=shared)
    except ValueError:  # the seeds alone leave more than the target
        items = None
    seeds = seeds_needed(target, n_items, psi, tau2, shared_items=shared)
    return {"target": target, "items_needed": items, "seeds_needed": seeds}


TRAINING_HEADER = ["variant", "pairs (per seed)", "optimizer steps", "held-out reward accuracy",
                   "answers changed vs base"]  # fmt: skip


def training_header(summary: Mapping[str, Any]) -> list[str]:
    """The training table's columns: a last one against the SFT control where the study has one."""
    control = summary.get("control")
    return TRAINING_HEADER + ([f"vs {control}"] if control else [])


def training_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    """Per variant: what it trained on, its held-out reward accuracy, and how many test answers it changed."""
    rows = []
    for name in summary["variants"]:
        training, changed = summary["training"].get(name, {}), summary["changed"].get(name, {})
        rows.append(
            [
                name,
                _list(training.get("pairs")),
                _list(training.get("steps")),
                _list(training.get("heldout_reward_accuracy"), "{:.3f}"),
                _share(changed.get("vs_base")),
                *([_share(changed.get(f"vs_{summary['control']}"))] if summary.get("control") else []),
            ]
        )
    return rows


def power_lines(summary: Mapping[str, Any]) -> list[str]:
    lines = []
    for step, power in summary["power"].items():
        mde = "nothing detectable" if power["mde"] is None else f"{power['mde']:.3f}"
        lines.append(
            f"Smallest closed-accuracy difference detectable for {step} (95% level, 80% power): {mde} "
            f"({power['n_items']} closed items per seed, discordance {power['discordance']:.3f}, "
            f"seed variance {power['seed_variance']:.5f}). {_reach_line(power)}"
        )
    return lines


def _reach_line(power: Mapping[str, Any]) -> str:
    """What detecting the target difference would take, in words."""
    if power["mde"] is not None and power["mde"] <= power["target"]:
        return f"It detects {power['target']}."
    items, seeds = power["items_needed"], power["seeds_needed"]
    with_items = f"{items} closed items per seed with these seeds" if items else "no number of items with these seeds"
    shared = " (the seeds share them)" if power.get("shared_items") else ""
    with_seeds = (
        f"{seeds} seeds of {power['n_items']} items{shared}"
        if seeds
        else f"no number of seeds of these {power['n_items']} items{shared}"
    )
    return f"Detecting {power['target']} would take {with_items}, or {with_seeds}."


def study_markdown(summary: Mapping[str, Any]) -> str:
    """The study as markdown: the table over seeds, each chain's verdicts, training and power notes."""
    variants = summary["variants"]
    lines = [
        f"Seeds {', '.join(map(str, summary['seeds']))}; mean over seeds with a 95% interval over seeds and test "
        "items (paired hierarchical bootstrap).",
        "",
        "| metric | " + " | ".join(variants) + " | majority answer |",
        "|---|" + "---|" * (len(variants) + 1),
    ]
    for metric in summary["metrics"]:
        row = summary["table"].get(metric, {})
        majority = summary["majority"].get(metric)
        cells = [_cell(row.get(name)) for name in variants] + ["-" if majority is None else f"{majority:.3f}"]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    for chain in summary["chains"]:
        lines += ["", f"**{'Claim' if chain['is_claim'] else 'Ablation'}: {' > '.join(chain['chain'])}**", ""]
        lines += [f"- {line}" for line in verdict_lines(chain["verdicts"])]
    header = training_header(summary)
    lines += ["", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in training_rows(summary)]
    lines += ["", *power_lines(summary)]
    return "\n".join(lines) + "\n"


def _cell(entry: Mapping[str, Any] | None) -> str:
    if not entry:
        return "-"
    return f"{entry['mean']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"


LISTED_SEEDS = 5  # up to this many seeds a training cell lists each seed's value; past it, their range and mean


def _list(values, form: str = "{}") -> str:
    if not values or any(v is None for v in values):
        return "-"
    if len(values) <= LISTED_SEEDS:
        return ", ".join(form.format(v) for v in values)
    if len(set(values)) == 1:
        return f"{form.format(values[0])} in every seed"
    mean = float(np.mean(values))
    mean = round(mean) if all(isinstance(v, int) for v in values) else mean
    return f"{form.format(min(values))} to {form.format(max(values))} (mean {form.format(mean)})"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def study_html(summary: Mapping[str, Any], title: str) -> str:
    """The study report page: the same content as the markdown, verdicts in colour, every text escaped."""
    e = html.escape
    variants = summary["variants"]

    def table(header: Sequence[str], rows: Sequence[Sequence[str]], table_id: str) -> str:
        head = "".join(f"<th>{e(cell)}</th>" for cell in header)
        body = "".join("<tr>" + "".join(f"<td>{e(cell)}</td>" for cell in row) + "</tr>" for row in rows)
        return f"<table id='{table_id}'><tr>{head}</tr>{body}</table>"

    metric_rows = [
        [metric, *(_cell(summary["table"].get(metric, {}).get(name)) for name in variants)]
        for metric in summary["metrics"]
    ]
    parts = [table(["metric", *variants], metric_rows, "study")]
    for chain in summary["chains"]:
        items = "".join(
            f"<li class='{VERDICT_CLASS[verdict['status']]}'>{e(line)}</li>"
            for verdict, line in zip(chain["verdicts"], verdict_lines(chain["verdicts"]))
        )
        kind = "Claim" if chain["is_claim"] else "Ablation"
        parts.append(f"<h3>{kind}: {e(' > '.join(chain['chain']))}</h3><ul>{items}</ul>")
    parts.append("<h3>What each variant trained on and changed</h3>")
    parts.append(table(training_header(summary), training_rows(summary), "training"))
    parts += [f"<p>{e(line)}</p>" for line in power_lines(summary)]
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{STYLE}</style></head>"
        f"<body><h1>{e(title)}</h1><p>Seeds {e(', '.join(map(str, summary['seeds'])))}: mean over seeds with a 95% "
        f"interval over seeds and test items.</p>{''.join(parts)}</body></html>"
    )


def write_study(study_dir: Path | str, seeds: Sequence[int]) -> Path:
    """Write study.json, results.md and report/index.html into the study folder; returns the report page."""
    study_dir = Path(study_dir)
    summary = summarize_study(study_dir, seeds)
    dump_json(summary, study_dir / "study.json")
    (study_dir / "results.md").write_text(study_markdown(summary), encoding="utf-8")
    page = study_dir / "report" / "index.html"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(study_html(summary, f"mmedpo study {study_dir.name}"), encoding="utf-8")
    return page


README_BEGIN = "<!-- study results: written by `mmedpo study --readme README.md`; do not edit by hand -->"
README_END = "<!-- end of study results -->"


def write_readme_block(readme: Path, study_dir: Path, command: str) -> None:
    """Replace the README's study block (between its two markers) with the study's results.md."""
    text = Path(readme).read_text(encoding="utf-8")
    if README_BEGIN not in text or README_END not in text:
        raise ValueError(f"{readme}: no study block; add the lines {README_BEGIN!r} and {README_END!r}")
    results = (Path(study_dir) / "results.md").read_text(encoding="utf-8")
    before, rest = text.split(README_BEGIN, 1)
    after = rest.split(README_END, 1)[1]
    block = f"{README_BEGIN}\nMade by `{command}`.\n\n{results}{README_END}"
    Path(readme).write_text(before + block + after, encoding="utf-8")


def _test_items(result: Mapping[str, Any]) -> tuple:
    """What a result's test items are: each one's id, image, question and gold answer."""
    return tuple(sorted((row["id"], row["image"], row["question"], row["answer"]) for row in result["predictions"]))
