"""The preference-pairs section of the run report: weights, counts, judge agreement, localizer IoU, a gallery.

The weight histogram is of the first weighted variant's pairs file (the weights
it trains on), with a note where a kind's weights are all equal; the gallery
shows images, the noise region and the noised image beside each pair's texts,
every judge's score and its weight. Images are copied into report/img/.
"""

from __future__ import annotations

import html
import shutil
from pathlib import Path
from typing import Any

from mmedpo.data.images import ImageError, resolve_image
from mmedpo.layout import RunLayout, read_run_config
from mmedpo.records import PreferencePair, read_jsonl
from mmedpo.report.figures import equal_weight_notes, weight_histogram, weights_by_kind

GALLERY_SIZE = 12


def _e(value: Any) -> str:
    return html.escape(str(value))


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
