"""The run report: RUN/report/index.html, one self-contained page (no CDN, works from a copy).

    mmedpo report runs/demo

It shows the results table, the stage timings and the pair counts, and a small
gallery of pairs with their images copied beside the page. All text is escaped.
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import yaml

from mmedpo.data.images import ImageError, resolve_image
from mmedpo.records import PreferencePair, read_jsonl

GALLERY_SIZE = 12

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: .3rem .6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.pair { display: inline-block; vertical-align: top; width: 300px; margin: .5rem; font-size: .85rem; }
.pair img { width: 140px; image-rendering: pixelated; }
"""


def _load_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def results_table(run_dir: Path) -> str:
    evaluations = {p.stem: _load_json(p).get("metrics", {}) for p in sorted((run_dir / "eval").glob("*.json"))}
    if not evaluations:
        return "<p>No evaluation yet.</p>"
    names = sorted({k for m in evaluations.values() for k, v in m.items() if isinstance(v, (int, float))})
    head = "".join(f"<th>{html.escape(v)}</th>" for v in evaluations)
    rows = []
    for name in names:
        cells = "".join(
            f"<td>{evaluations[v][name]:.4f}</td>" if isinstance(evaluations[v].get(name), float)
            else f"<td>{html.escape(str(evaluations[v].get(name, '-')))}</td>"
            for v in evaluations
        )
        rows.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
    return f'<table id="results"><tr><th>metric</th>{head}</tr>{"".join(rows)}</table>'


def timings_table(run_dir: Path) -> str:
    rows = []
    for path in sorted((run_dir / "stages").glob("*.json"), key=lambda p: p.stat().st_mtime):
        state = _load_json(path)
        rows.append(
            f"<tr><td>{html.escape(path.stem)}</td><td>{html.escape(str(state.get('status')))}</td>"
            f"<td>{float(state.get('seconds', 0)):.1f}</td></tr>"
        )
    return f'<table id="timings"><tr><th>stage</th><th>status</th><th>seconds</th></tr>{"".join(rows)}</table>'


def gallery(run_dir: Path, out_dir: Path) -> str:
    """A few text and visual pairs, with their images copied next to the page."""
    path = run_dir / "pairs.scored.jsonl"
    if not path.exists():
        return "<p>No scored pairs yet.</p>"
    pairs = read_jsonl(path, PreferencePair)
    roots = image_roots(run_dir)
    picked = [p for p in pairs if p.kind == "visual"][: GALLERY_SIZE // 2]
    picked += [p for p in pairs if p.kind == "text"][: GALLERY_SIZE - len(picked)]
    cards = []
    for index, pair in enumerate(picked):
        images = "".join(
            _copy_image(name, roots, out_dir, f"{index}-{label}")
            for label, name in (("image", pair.image), ("rejected", pair.rejected_image))
            if name
        )
        scores = ", ".join(f"{html.escape(k)} {v:.2f}" for k, v in pair.scores.items())
        cards.append(
            f'<div class="pair">{images}<p><b>{html.escape(pair.kind)}</b> · '
            f"weight {pair.weight or 0:.2f} ({scores})</p>"
            f"<p>Q: {html.escape(pair.question)}</p><p>chosen: {html.escape(pair.chosen)}</p>"
            f"<p>rejected: {html.escape(pair.rejected)}</p></div>"
        )
    return f'<div id="gallery">{"".join(cards)}</div>'


def image_roots(run_dir: Path) -> list[Path]:
    """The run's image folder, and the dataset's image root from the run's config."""
    config_path = run_dir / "config.yaml"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) if config_path.exists() else None
    root = (config or {}).get("data", {}).get("image_root")
    return [run_dir / "images"] + ([Path(root)] if root else [])


def _copy_image(name: str, roots: list[Path], out_dir: Path, stem: str) -> str:
    try:
        source = resolve_image(name, roots)
    except ImageError:
        return ""
    target = out_dir / "img" / f"{stem}{source.suffix}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return f'<img src="img/{html.escape(target.name)}" alt="{html.escape(stem)}">'


def write_report(run_dir: Path | str) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir}: not a run folder")
    out_dir = run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>mmedpo run {html.escape(run_dir.name)}</title>"
        f"<style>{STYLE}</style></head><body><h1>mmedpo run {html.escape(run_dir.name)}</h1>"
        f"<h2>Results on the test split</h2>{results_table(run_dir)}"
        f"<h2>Stages</h2>{timings_table(run_dir)}"
        f"<h2>Preference pairs</h2>{gallery(run_dir, out_dir)}</body></html>"
    )
    target = out_dir / "index.html"
    target.write_text(page, encoding="utf-8")
    return target
