"""The pairs one variant trains on, with the weights it trains with: RUN/pairs.VARIANT.jsonl.

A variant of the ablation picks pairs by kind (text, visual) and, for visual
pairs, by where the noise went (`region`: lesion, or whole image) and whose text
is rejected (`rejected_text`: the model's answer, or the gold one), and may weight
its textual pairs by some panel members only (the one-judge ablation). From the
scores the score stage stored on every pair, nothing judged again:

    clinical_score = aggregate of the chosen members' scores (visual pairs: the localizer's confidence)
    weight         = normalise(clinical_score over this variant's pairs OF THE SAME KIND)   (the paper's Z)
                     x the kind's balance factor (`kind_balance`)

Text and visual scores come from different instruments (a judge panel, a
localizer), so each kind is normalised on its own: normalised together, the kind
whose instrument scores higher would outweigh the other, and "weighted vs
unweighted" would compare kind shares, not clinical relevance. How much each kind
weighs in all is a separate setting: `kind_balance` "pairs" (the default) leaves
each kind's normalised weights as they are (with mean-one, each kind carries its
share of the pairs, as in plain DPO), "equal" gives each kind the same share of
the total weight, a mapping gives relative shares; the total weight is kept.

An unweighted variant (plain DPO) gets weight 1 on every pair before the kind
balance, so the file holds exactly what the trainer multiplies each loss by.
See docs/method.md.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from mmedpo.config import ScoreConfig
from mmedpo.records import PreferencePair, read_jsonl, write_jsonl
from mmedpo.scoring.normalise import normalise
from mmedpo.scoring.panel import LOCALIZER, aggregate, fill_unjudged


def select_pairs(
    pairs: Sequence[PreferencePair], kinds: Sequence[str], visual_region: str, visual_rejected: str = "model-answer"
) -> list[PreferencePair]:
    """The pairs of the given kinds; visual pairs only where their noise covers `visual_region` and their
    rejected text is `visual_rejected`."""

    def wanted(pair: PreferencePair) -> bool:
        if pair.kind == "text":
            return True
        return (pair.region or "lesion") == visual_region and (pair.rejected_text or "model-answer") == visual_rejected

    return [pair for pair in pairs if pair.kind in kinds and wanted(pair)]


def normalise_by_kind(
    pairs: Sequence[PreferencePair], scores: Sequence[float], method: str, balance: str | Mapping[str, float] = "pairs"
) -> list[float]:
    """The weights of `pairs` from their `scores`: normalised within each kind, then balanced between kinds.

    >>> from types import SimpleNamespace as P
    >>> pairs = [P(kind="text"), P(kind="text"), P(kind="visual")]
    >>> [round(w, 6) for w in normalise_by_kind(pairs, [0.2, 0.6, 0.9], "mean-one")]           # each kind: mean 1
    [0.5, 1.5, 1.0]
    >>> [round(w, 6) for w in normalise_by_kind(pairs, [0.2, 0.6, 0.9], "mean-one", "equal")]  # each: half of 3
    [0.375, 1.125, 1.5]
    """
    weights = [0.0] * len(pairs)
    kinds = sorted({pair.kind for pair in pairs})
    for kind in kinds:
        indices = [index for index, pair in enumerate(pairs) if pair.kind == kind]
        for index, weight in zip(indices, normalise([scores[i] for i in indices], method)):
            weights[index] = float(weight)
    if balance == "pairs":
        return weights
    shares = {kind: 1.0 for kind in kinds} if balance == "equal" else {kind: balance[kind] for kind in kinds}
    total, kind_totals = sum(weights), {kind: 0.0 for kind in kinds}
    for pair, weight in zip(pairs, weights):
        kind_totals[pair.kind] += weight
    factors = {
        kind: shares[kind] / sum(shares.values()) * total / kind_totals[kind] if kind_totals[kind] > 0 else 1.0
        for kind in kinds
    }
    return [weight * factors[pair.kind] for pair, weight in zip(pairs, weights)]


def reweight(
    pairs: Sequence[PreferencePair],
    settings: ScoreConfig,
    members: Sequence[str] | None = None,
    kind_balance: str | Mapping[str, float] = "pairs",
) -> list[PreferencePair]:
    """The pairs with clinical scores and weights remade from their stored scores, normalised within each kind
    of these pairs and balanced between the kinds (`normalise_by_kind`).

    `members` keeps only those panel members' scores (the single-judge ablation);
    None keeps the whole panel. Visual pairs keep the localizer's score, and the
    members' too under `visual_mode: confidence+judges`. Members that do not apply
    to a pair (its provenance's `not_applicable`) are left out of its aggregate; a
    text pair none of the kept members applies to scores as an average pair
    (`panel.fill_unjudged`). Nothing is judged again. A pair without a score of a
    kept member that applies raises a ValueError naming it.
    """
    members = list(settings.judges if members is None else members)
    unknown = sorted(set(members) - set(settings.judges))
    if unknown or not members:
        raise ValueError(f"judges {unknown or members} are not members of the panel {settings.judges}")
    rescored = []
    for pair in pairs:
        kept = members if pair.kind == "text" or settings.visual_mode == "confidence+judges" else []
        kept = [m for m in kept if m not in pair.provenance.get("not_applicable", [])]
        kept = kept + ([LOCALIZER] if pair.kind == "visual" else [])
        missing = [member for member in kept if member not in pair.scores]
        if missing:
            raise ValueError(f"pair {pair.id}: no score from {missing}; score it first (mmedpo score)")
        scores = {m: pair.scores[m] for m in kept}
        raw = aggregate(scores, settings.aggregate, settings.trim, settings.weights) if scores else None
        rescored.append(pair.model_copy(update={"clinical_score": raw}))
    rescored = fill_unjudged(rescored)
    weights = normalise_by_kind(rescored, [pair.clinical_score for pair in rescored], settings.normaliser, kind_balance)
    return [pair.model_copy(update={"weight": float(weight)}) for pair, weight in zip(rescored, weights)]


def variant_pairs(
    pairs: Sequence[PreferencePair],
    settings: ScoreConfig,
    kinds: Sequence[str],
    visual_region: str = "lesion",
    judges: Sequence[str] | None = None,
    weighted: bool = True,
    visual_rejected: str = "model-answer",
    kind_balance: str | Mapping[str, float] = "pairs",
) -> list[PreferencePair]:
    """What a variant trains on: its pairs with their clinical scores and weights (unweighted: 1 before the
    kind balance)."""
    chosen = reweight(select_pairs(pairs, kinds, visual_region, visual_rejected), settings, judges, kind_balance)
    if not weighted:
        ones = normalise_by_kind(chosen, [1.0] * len(chosen), "mean-one", kind_balance)
        chosen = [pair.model_copy(update={"weight": weight}) for pair, weight in zip(chosen, ones)]
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
    visual_rejected: str = "model-answer",
    kind_balance: str | Mapping[str, float] = "pairs",
    heldout_limit: int | None = None,
    seed: int = 0,
) -> dict:
    """Write one variant's pairs file, and its held-out pairs (those of `heldout_samples`) beside it.

    The held-out pairs are selected and weighted the same way (over themselves) and
    never trained on: the trainer measures its reward accuracy on them. At most
    `heldout_limit` of them are kept (`sample_pairs`: each kind its share, the same
    pairs for every variant that selects them). Returns
    counts and weight figures per kind. Raises ValueError when a pair kind the
    variant trains on has no pair: a variant configured for text and visual pairs
    never trains on one kind alone.
    """
    scored = read_jsonl(scored_path, PreferencePair)
    heldout = [pair for pair in scored if pair.sample_id in heldout_samples]
    train = [pair for pair in scored if pair.sample_id not in heldout_samples]
    pairs = variant_pairs(train, settings, kinds, visual_region, judges, weighted, visual_rejected, kind_balance)
    by_kind = Counter(pair.kind for pair in pairs)
    missing = [kind for kind in kinds if not by_kind[kind]]
    if missing:
        region = f" (visual_region {visual_region}, visual_rejected {visual_rejected})" if "visual" in missing else ""
        raise ValueError(f"no {'/'.join(missing)} pairs{region} in {scored_path}: the variant trains on {list(kinds)}")
    write_jsonl(out_path, pairs)
    selected = sample_pairs(select_pairs(heldout, kinds, visual_region, visual_rejected), heldout_limit, seed)
    args = (settings, kinds, visual_region, judges, weighted, visual_rejected, kind_balance)
    write_jsonl(heldout_path, variant_pairs(selected, *args) if selected else [])
    return {
        "pairs": len(pairs),
        "by_kind": dict(by_kind),
        "weights": _weight_figures(pairs),
        "heldout_pairs": len(selected),
    }


def sample_pairs(pairs: Sequence[PreferencePair], limit: int | None, seed: int) -> list[PreferencePair]:
    """At most `limit` of the pairs, each kind keeping its share; which ones depends on the seed and the ids only.

    A pair is ranked by a hash of (seed, id), so two variants that select the same
    pairs keep the same ones, whatever their order.
    """
    if limit is None or len(pairs) <= limit:
        return list(pairs)
    kept: set[str] = set()
    for kind in sorted({pair.kind for pair in pairs}):
        of_kind = [pair for pair in pairs if pair.kind == kind]
        quota = max(1, round(limit * len(of_kind) / len(pairs)))
        ranked = sorted(of_kind, key=lambda pair: hashlib.sha1(f"{seed}:{pair.id}".encode()).hexdigest())
        kept.update(pair.id for pair in ranked[:quota])
    return [pair for pair in pairs if pair.id in kept]


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
