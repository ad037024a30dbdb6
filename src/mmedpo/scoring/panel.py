"""Clinical relevance weights: a judge panel for textual pairs, the localizer for visual ones.

Run it:

    mmedpo score --config configs/demo.yaml

Each judge of the panel scores a textual pair in [0, 1]; the panel's scores are
aggregated (the mean, in our reading of the paper). A visual pair's raw score
is the localizer's confidence that a lesion is there. The raw scores of all
pairs are then normalised over the dataset (the paper's Z) into the weight the
trainer multiplies each pair's loss by. See docs/method.md.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mmedpo.config import ScoreConfig
from mmedpo.progress import progress_bar
from mmedpo.records import PreferencePair, write_jsonl
from mmedpo.scoring.judges import JUDGES
from mmedpo.scoring.normalise import normalise

AGGREGATES = {"mean": statistics.fmean, "median": statistics.median}


@dataclass
class ScoreSummary:
    pairs: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    mean_raw: float = 0.0
    mean_weight: float = 0.0

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def raw_score(pair: PreferencePair, judges: Sequence, aggregate) -> tuple[float, dict[str, float]]:
    """The pair's raw clinical relevance and every score it came from."""
    if pair.kind == "visual":
        confidence = float(pair.provenance.get("confidence", 1.0))
        return confidence, {"localizer": confidence}
    scores = {}
    for judge in judges:
        value, _reason = judge.score(pair.question, pair.chosen, pair.rejected)
        scores[judge.name] = float(value)
    return aggregate(list(scores.values())), scores


def score_pairs(
    pairs: Sequence[PreferencePair], out_path: Path, settings: ScoreConfig, show_progress: bool = True
) -> ScoreSummary:
    """Score and weight every pair; write them to `out_path`."""
    unknown = [name for name in settings.judges if name not in JUDGES]
    if unknown:
        raise ValueError(f"unknown judge(s) {unknown}; valid: {sorted(JUDGES)}")
    judges = [JUDGES[name]() for name in settings.judges]
    aggregate = AGGREGATES[settings.aggregate]
    raws, scored = [], []
    with progress_bar("score", len(pairs), show_progress) as advance:
        for pair in pairs:
            raw, scores = raw_score(pair, judges, aggregate)
            raws.append(raw)
            scored.append(pair.model_copy(update={"scores": scores}))
            advance(1)
    weights = normalise(raws, settings.normaliser) if raws else []
    scored = [pair.model_copy(update={"weight": float(w)}) for pair, w in zip(scored, weights)]
    write_jsonl(out_path, scored)
    kinds: dict[str, int] = {}
    for pair in scored:
        kinds[pair.kind] = kinds.get(pair.kind, 0) + 1
    return ScoreSummary(
        pairs=len(scored),
        by_kind=kinds,
        mean_raw=statistics.fmean(raws) if raws else 0.0,
        mean_weight=statistics.fmean(weights) if weights else 0.0,
    )
