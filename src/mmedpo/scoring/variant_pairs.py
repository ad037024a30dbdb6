"""The pairs one variant trains on, with the weights it trains with: RUN/pairs.VARIANT.jsonl.

A variant of the ablation picks pairs by kind (text, visual) and, for visual
pairs, by where the noise went (`region`: lesion, or whole image), and may weight
its textual pairs by some panel members only (the one-judge ablation). From the
scores the score stage stored on every pair, nothing judged again:

    clinical_score = aggregate of the chosen members' scores (visual pairs: the localizer's confidence)
    weight         = normalise(clinical_score over this variant's pairs)     (the paper's Z)

An unweighted variant (plain DPO) gets weight 1 on every pair, so the file holds
exactly what the trainer multiplies each loss by. Normalising over the variant's
own pairs means variants that train on different pairs, or weight by different
judges, are weighted the same way. See docs/method.md.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from mmedpo.config import ScoreConfig
from mmedpo.records import PreferencePair, read_jsonl, write_jsonl
from mmedpo.scoring.normalise import normalise
from mmedpo.scoring.panel import LOCALIZER, aggregate


def select_pairs(pairs: Sequence[PreferencePair], kinds: Sequence[str], visual_region: str) -> list[PreferencePair]:
    """The pairs of the given kinds; visual pairs only where their noise covers `visual_region`."""
    return [
        pair
        for pair in pairs
        if pair.kind in kinds and (pair.kind == "text" or (pair.region or "lesion") == visual_region)
    ]


def reweight(
    pairs: Sequence[PreferencePair], settings: ScoreConfig, members: Sequence[str] | None = None
) -> list[PreferencePair]:
    """The pairs with clinical scores and weights remade from their stored scores, normalised over these pairs.

    `members` keeps only those panel members' scores (the single-judge ablation);
    None keeps the whole panel. Visual pairs keep the localizer's score, and the
    members' too under `visual_mode: confidence+judges`. Nothing is judged again.
    A pair without a score of a kept member raises a ValueError naming it.
    """
    members = list(settings.judges if members is None else members)
    unknown = sorted(set(members) - set(settings.judges))
    if unknown or not members:
        raise ValueError(f"judges {unknown or members} are not members of the panel {settings.judges}")
    raws = []
    for pair in pairs:
        kept = members if pair.kind == "text" or settings.visual_mode == "confidence+judges" else []
        kept = kept + ([LOCALIZER] if pair.kind == "visual" else [])
        missing = [member for member in kept if member not in pair.scores]
        if missing:
            raise ValueError(f"pair {pair.id}: no score from {missing}; score it first (mmedpo score)")
        raws.append(aggregate({m: pair.scores[m] for m in kept}, settings.aggregate, settings.trim, settings.weights))
    weights = normalise(raws, settings.normaliser)
    return [
        pair.model_copy(update={"clinical_score": raw, "weight": float(weight)})
        for pair, raw, weight in zip(pairs, raws, weights)
    ]


def variant_pairs(
    pairs: Sequence[PreferencePair],
    settings: ScoreConfig,
    kinds: Sequence[str],
    visual_region: str = "lesion",
    judges: Sequence[str] | None = None,
    weighted: bool = True,
) -> list[PreferencePair]:
    """What a variant trains on: its pairs with their clinical scores and weights (1 when unweighted)."""
    chosen = reweight(select_pairs(pairs, kinds, visual_region), settings, judges)
    if not weighted:
        chosen = [pair.model_copy(update={"weight": 1.0}) for pair in chosen]
    return chosen


def write_variant_pairs(
    scored_path: Path,
    out_path: Path,
    heldout_path: Path,
    heldout_samples: set[str],
    settings: ScoreConfig,
    kinds: Sequence[str],
    visual_region: str = "lesion",
    judges: Sequence[str] | None = None,
    weighted: bool = True,
) -> dict:
    """Write one variant's pairs file, and its held-out pairs (those of `heldout_samples`) beside it.

    The held-out pairs are selected and weighted the same way (over themselves) and
    never trained on: the trainer measures its reward accuracy on them. Returns
    counts and weight figures per kind. Raises ValueError when a pair kind the
    variant trains on has no pair: a variant configured for text and visual pairs
    never trains on one kind alone.
    """
    scored = read_jsonl(scored_path, PreferencePair)
    heldout = [pair for pair in scored if pair.sample_id in heldout_samples]
    train = [pair for pair in scored if pair.sample_id not in heldout_samples]
    pairs = variant_pairs(train, settings, kinds, visual_region, judges, weighted)
    by_kind = Counter(pair.kind for pair in pairs)
    missing = [kind for kind in kinds if not by_kind[kind]]
    if missing:
        region = f" (visual_region {visual_region})" if "visual" in missing else ""
        raise ValueError(f"no {'/'.join(missing)} pairs{region} in {scored_path}: the variant trains on {list(kinds)}")
    write_jsonl(out_path, pairs)
    selected = select_pairs(heldout, kinds, visual_region)
    write_jsonl(
        heldout_path, variant_pairs(selected, settings, kinds, visual_region, judges, weighted) if selected else []
    )
    return {
        "pairs": len(pairs),
        "by_kind": dict(by_kind),
        "weights": _weight_figures(pairs),
        "heldout_pairs": len(selected),
    }


def _weight_figures(pairs: Sequence[PreferencePair]) -> dict[str, dict[str, float]]:
    """Per kind: mean, min and max weight and the kind's share of the total weight."""
    total = sum(pair.weight for pair in pairs) or 1.0
    figures = {}
    for kind in sorted({pair.kind for pair in pairs}):
        weights = [pair.weight for pair in pairs if pair.kind == kind]
        figures[kind] = {
            "mean": round(sum(weights) / len(weights), 4),
            "min": round(min(weights), 4),
            "max": round(max(weights), 4),
            "share": round(sum(weights) / total, 4),
        }
    return figures
