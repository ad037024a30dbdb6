"""Clinical relevance scores: a judge panel for textual pairs, the localizer for visual ones.

Run it:

    mmedpo score --config configs/demo.yaml

Each judge of the panel scores a textual pair in [0, 1]; the panel's scores are
aggregated (the mean by default, in our reading of the paper; or the median, a
trimmed mean, a weighted mean). A visual pair's raw score is the localizer's
confidence that a lesion is there, or (`visual_mode: confidence+judges`) that
confidence aggregated with the judges' scores as one more panel member,
"localizer". The aggregate is the pair's `clinical_score` in [0, 1], written with
every member's score to `pairs.scored.jsonl`. The training weight is made per
variant from these stored scores (`scoring.variant_pairs`: the paper's
normalisation Z over the pairs that variant trains on). See docs/method.md.

A judge may not apply to a pair (the findings judge on a question about a
colour: `judges.not_applicable`). The pair is then scored by the members that
do apply, and those that do not are listed in its provenance
(`not_applicable`). A text pair no member applies to takes the mean clinical
score of the text pairs some member does apply to (0.5 when there are none):
no judge says it matters more or less than the others, so it weighs what an
average pair weighs. See docs/method.md.

Judges go through the judge cache (`cache.JudgeCache`), so scoring unchanged
pairs again asks no judge twice and a killed run resumes from what was paid for;
pairs that share (question, chosen, rejected) are asked about once. A pair that
some judge could not score, or a visual pair without a localizer confidence, is
left unscored: it goes to `pairs.scored.rejects.jsonl` with the reasons, never
into training with a made-up weight. A pair whose judge request FAILED (an HTTP
error, a refused connection: `Verdict.failure`) is different, since asking again
may work: the stage writes what it has, then raises `StageIncomplete` saying how
many failed and why, and the next run asks only about those (the cache holds
the rest). Read pairs = scored + unscored + failed.

The summary says how far the judges agree (`agreement`: Krippendorff's alpha of
the panel and of each pair of judges, Spearman's rho); a panel whose alpha is
<= 0 is flagged (`agreement.disagree`) and a warning is logged: its mean weights
pairs by the judges' disagreement. Visual pairs that repeat a textual pair are
marked (`scoring.duplicates`) and counted (`visual_duplicates`).

Panel members are judge names from the registry, or names of your own with
options naming the judge, so one judge class can sit on the panel twice:

    score:
      judges: [findings, gpt4o, biomistral]
      judge_options:
        gpt4o: {judge: chat, model: gpt-4o}
        biomistral: {judge: chat, model: BioMistral-7B, base_url: http://localhost:8000/v1}
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from scipy.stats import trim_mean

from mmedpo.config import ScoreConfig
from mmedpo.errors import StageIncomplete
from mmedpo.progress import progress_bar
from mmedpo.records import PreferencePair, Reject, describe_error, read_jsonl, rejects_path, write_jsonl
from mmedpo.registry import JUDGES
from mmedpo.scoring.agreement import panel_agreement
from mmedpo.scoring.cache import JudgeCache, cache_key
from mmedpo.scoring.duplicates import mark_duplicates
from mmedpo.scoring.judges import Judge, Verdict
from mmedpo.shards import Shard, shard_name, shard_path, take_shard

LOCALIZER = "localizer"
CACHE_FILE = "judge_cache.jsonl"
log = logging.getLogger(__name__)


@dataclass
class ScoreSummary:
    pairs: int = 0
    scored: int = 0
    unscored: int = 0
    failed: int = 0  # pairs left for the next run because a judge request failed
    failures: dict[str, int] = field(default_factory=dict)  # "member: why" -> pairs
    not_applicable: dict[str, int] = field(default_factory=dict)  # member -> pairs it does not apply to
    no_applicable_judge: int = 0  # text pairs no member applies to: scored as an average pair
    by_kind: dict[str, int] = field(default_factory=dict)
    mean_raw: float = 0.0
    judge_means: dict[str, float] = field(default_factory=dict)
    cache: dict[str, int] = field(default_factory=dict)
    agreement: dict = field(default_factory=dict)
    visual_duplicates: int = 0  # visual pairs repeating a textual pair's sample and rejected text

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def build_panel(settings: ScoreConfig) -> dict[str, Judge]:
    """Panel member name -> judge, built from the registry and `settings.judge_options`."""
    panel = {}
    for member in settings.judges:
        options = {key: value for key, value in settings.judge_options.get(member, {}).items() if key != "judge"}
        judge = JUDGES.load(settings.member_judge(member), f"panel member {member!r}")
        try:
            panel[member] = judge(**options)
        except TypeError as error:
            raise ValueError(f"panel member {member!r}: bad judge_options {options}: {error}") from None
        except ValueError as error:  # bad option values; a chat judge's key missing from the environment
            raise ValueError(f"panel member {member!r}: {describe_error(error)}") from None
    return panel


def aggregate(
    scores: Mapping[str, float], how: str, trim: float = 0.1, weights: Mapping[str, float] | None = None
) -> float:
    """Combine the panel's scores of one pair.

    >>> aggregate({"a": 0.2, "b": 0.4, "c": 0.9}, "median")
    0.4
    >>> round(aggregate({"a": 0.2, "b": 0.8}, "weighted", weights={"a": 3, "b": 1}), 6)  # (3 * 0.2 + 0.8) / 4
    0.35
    """
    values = list(scores.values())
    if how == "mean":
        return statistics.fmean(values)
    elif how == "median":
        return statistics.median(values)
    elif how == "trimmed-mean":
        # scipy cuts int(trim * n) scores from each end: with few judges, trim 0.1 cuts none.
        return float(trim_mean(values, trim))
    elif how == "weighted":
        weights = weights or {}
        missing = sorted(set(scores) - set(weights))
        if missing:
            raise ValueError(f"weighted aggregate: no weight for {missing}; set score.weights")
        total = sum(weights[name] for name in scores)
        if total <= 0:
            raise ValueError(f"weighted aggregate: the weights of {sorted(scores)} sum to {total}, need > 0")
        return sum(weights[name] * value for name, value in scores.items()) / total
    else:
        raise ValueError(f"unknown aggregate {how!r}; valid: mean, median, trimmed-mean, weighted")


def _checked(member: str, verdict: Verdict) -> Verdict:
    """The verdict, or an unscored one when its score is not a number in [0, 1]."""
    if not verdict.applicable:
        return verdict
    if verdict.score is None:
        return Verdict(None, f"{member}: {verdict.reason}", verdict.failure)
    if not (isinstance(verdict.score, (int, float)) and math.isfinite(verdict.score) and 0 <= verdict.score <= 1):
        return Verdict(None, f"{member}: score {verdict.score!r} is not in [0, 1] ({verdict.reason})")
    return Verdict(float(verdict.score), verdict.reason)


def judge_pairs(
    pairs: Sequence[PreferencePair], judge: Judge, member: str, cache: JudgeCache | None, advance
) -> list[Verdict]:
    """The judge's verdict on every pair, from the cache where it has one; each distinct item is asked once."""
    use_cache = cache is not None and judge.cached
    model = f"{judge.model}@{judge.weights}" if judge.weights else judge.model
    verdicts: list[Verdict | None] = [None] * len(pairs)
    todo: dict[tuple[str, str, str], list[int]] = {}  # item to ask about -> the pairs that share it
    keys: dict[tuple[str, str, str], str] = {}
    for index, pair in enumerate(pairs):
        item = judged_item(pair)
        if use_cache and item not in keys:
            keys[item] = cache_key(judge.name, judge.version, model, *item)
        hit = cache.get(keys[item]) if use_cache else None
        if hit is None:
            todo.setdefault(item, []).append(index)
        else:
            verdicts[index] = Verdict(*hit)
            advance(1)
    items = list(todo)
    for position, verdict in judge.score_many(items):
        verdict = _checked(member, verdict)
        # Only scores are cached: a failed request or an unparseable reply is asked again next run.
        if use_cache and verdict.score is not None:
            cache.put(keys[items[position]], verdict.score, verdict.reason)
        for index in todo[items[position]]:
            verdicts[index] = verdict
        advance(len(todo[items[position]]))
    return verdicts


def _localizer_confidence(pair: PreferencePair) -> Verdict:
    confidence = pair.provenance.get("confidence")
    if confidence is None:
        return Verdict(None, f"{LOCALIZER}: the visual pair has no confidence in its provenance")
    return _checked(LOCALIZER, Verdict(confidence, "localizer confidence"))


def score_pairs(
    pairs: Sequence[PreferencePair],
    out_path: Path,
    settings: ScoreConfig,
    show_progress: bool = True,
    cache_path: Path | None = None,
    shard: Shard | None = None,
    cache_writer: str | None = None,
) -> ScoreSummary:
    """Score and weight every pair; write the scored ones to `out_path`, the rest to its rejects file.

    The judge cache is `cache_path`, else `settings.cache_path`, else judge_cache.jsonl
    beside `out_path`; `settings.cache = False` uses none. `shard=(i, n)` scores one
    shard of the pairs (pairs that share a judged text stay together, so each is asked
    once) into `out_path`'s shard file, its verdicts into a cache file of its own
    beside the shared one; `merge_scored_shards` joins the shards. `cache_writer`
    names this process's own cache file when other runs share the cache at the
    same time (a study's seeds run side by side).
    """
    pairs = mark_duplicates(pairs)  # over all pairs: a visual pair's textual twin may be in another shard
    writer = cache_writer
    if shard is not None:
        pairs, out_path = take_shard(pairs, shard, key=judged_item), shard_path(out_path, shard)
        writer = ".".join(part for part in (cache_writer, f"score.{shard_name(shard)}") if part)
    panel = build_panel(settings)
    cache = None
    if settings.cache:
        cache = JudgeCache(cache_path or settings.cache_path or Path(out_path).with_name(CACHE_FILE), writer)
    judge_visual = settings.visual_mode == "confidence+judges"
    judged = [index for index, pair in enumerate(pairs) if pair.kind == "text" or judge_visual]
    verdicts: list[dict[str, Verdict]] = [{} for _ in pairs]  # per pair: member -> verdict
    try:
        with progress_bar("score", len(judged) * len(panel), show_progress) as advance:
            for member, judge in panel.items():
                member_verdicts = judge_pairs([pairs[i] for i in judged], judge, member, cache, advance)
                for index, verdict in zip(judged, member_verdicts):
                    verdicts[index][member] = verdict
    finally:
        if cache is not None:
            cache.close()
    scored, rejects, failures = [], [], []
    for pair, pair_verdicts in zip(pairs, verdicts):
        if pair.kind == "visual":
            pair_verdicts[LOCALIZER] = _localizer_confidence(pair)
        unscored = [v.reason for v in pair_verdicts.values() if v.score is None and v.applicable]
        if unscored:
            rejects.append(Reject(id=pair.id, source=f"{pair.kind} pair {pair.id}", reason="; ".join(unscored)))
            failed = {member: v for member, v in pair_verdicts.items() if v.failure}
            if failed:
                failures.append(failed)
            continue
        scores = {member: v.score for member, v in pair_verdicts.items() if v.applicable}
        raw = aggregate(scores, settings.aggregate, settings.trim, settings.weights) if scores else None
        provenance = {**pair.provenance, "score_reasons": {member: v.reason for member, v in pair_verdicts.items()}}
        outside = [member for member, v in pair_verdicts.items() if not v.applicable]
        if outside:
            provenance["not_applicable"] = outside
        update = {"scores": scores, "clinical_score": raw, "weight": None, "provenance": provenance}
        scored.append(pair.model_copy(update=update))
    if shard is None:  # a shard's pairs no judge applies to get the average of all pairs, at the merge
        scored = fill_unjudged(scored)
    write_jsonl(out_path, scored)
    write_jsonl(rejects_path(Path(out_path)), rejects)
    summary = _summary(pairs, scored, [pair.clinical_score for pair in scored], list(panel), cache, failures)
    if summary.agreement.get("warning"):
        log.warning("score: %s", summary.agreement["warning"])
    if summary.failed:
        raise StageIncomplete(_incomplete_message(summary, failures), summary.as_dict())
    return summary


def fill_unjudged(pairs: Sequence[PreferencePair]) -> list[PreferencePair]:
    """The pairs, those without a clinical score (no judge applies) given the mean of the text pairs that have one.

    0.5 when no text pair has one: every text pair then weighs the same.
    """
    judged = [pair.clinical_score for pair in pairs if pair.kind == "text" and pair.clinical_score is not None]
    fallback = statistics.fmean(judged) if judged else 0.5
    return [pair if pair.clinical_score is not None else _as_average(pair, fallback) for pair in pairs]


def _as_average(pair: PreferencePair, score: float) -> PreferencePair:
    provenance = {**pair.provenance, "no_applicable_judge": True}
    return pair.model_copy(update={"clinical_score": score, "provenance": provenance})


def judged_item(pair: PreferencePair) -> tuple[str, str, str]:
    """What a judge is asked about a pair; pairs that share it are judged once, and score shards keep them together."""
    return pair.question, pair.chosen, pair.rejected


def merge_scored_shards(
    pairs: Sequence[PreferencePair], out_path: Path, count: int, settings: ScoreConfig
) -> ScoreSummary:
    """Join the `count` finished score shards of `out_path` into it and its rejects, in the order of `pairs`.

    The result is the file one unsharded run writes. A missing shard, or one that
    does not account for every pair of its shard, is an error naming it.
    """
    pairs = mark_duplicates(pairs)
    order = {pair.id: position for position, pair in enumerate(pairs)}
    scored: list[PreferencePair] = []
    rejects: list[Reject] = []
    for index in range(1, count + 1):
        path = shard_path(Path(out_path), (index, count))
        if not path.exists():
            raise ValueError(f"shard {index}/{count} is missing: {path}")
        shard_scored, shard_rejects = read_jsonl(path, PreferencePair), read_jsonl(rejects_path(path), Reject)
        expected = {pair.id for pair in take_shard(pairs, (index, count), key=judged_item)}
        if {pair.id for pair in shard_scored} | {reject.id for reject in shard_rejects} != expected:
            raise ValueError(f"{path} does not hold the pairs of shard {index}/{count}: run it again")
        scored += shard_scored
        rejects += shard_rejects
    scored.sort(key=lambda pair: order[pair.id])
    rejects.sort(key=lambda reject: order[reject.id])
    scored = fill_unjudged(scored)
    write_jsonl(out_path, scored)
    write_jsonl(rejects_path(Path(out_path)), rejects)
    summary = _summary(pairs, scored, [pair.clinical_score for pair in scored], list(settings.judges), None, [])
    if summary.agreement.get("warning"):  # over all pairs: a shard's agreement was over its own only
        log.warning("score: %s", summary.agreement["warning"])
    return summary


def _incomplete_message(summary: ScoreSummary, failures: list[dict[str, Verdict]]) -> str:
    """One line: how many pairs wait for a retry, grouped by why, with the first failure's text."""
    grouped = ", ".join(f"{why}: {count}" for why, count in summary.failures.items())
    first = next(verdict.reason for failed in failures for verdict in failed.values())
    return (
        f"score: {summary.failed} of {summary.pairs} pairs not scored because judge requests failed ({grouped}); "
        f"first: {first[:200]}. The verdicts that came back are in the judge cache: run again to retry the rest"
    )


def _summary(pairs, scored, raws, members, cache, failures) -> ScoreSummary:
    """`failures` holds, per pair with a failed request, member -> its failed verdict."""
    why = Counter(f"{member}: {verdict.failure}" for failed in failures for member, verdict in failed.items())
    kinds: dict[str, int] = {}
    for pair in scored:
        kinds[pair.kind] = kinds.get(pair.kind, 0) + 1
    judged = [pair for pair in scored if all(member in pair.scores for member in members)]
    columns = {member: [pair.scores[member] for pair in judged] for member in members}
    outside = Counter(member for pair in scored for member in pair.provenance.get("not_applicable", []))
    return ScoreSummary(
        pairs=len(pairs),
        scored=len(scored),
        unscored=len(pairs) - len(scored) - len(failures),
        failed=len(failures),
        failures=dict(why),
        not_applicable=dict(outside),
        no_applicable_judge=sum(bool(pair.provenance.get("no_applicable_judge")) for pair in scored),
        by_kind=kinds,
        mean_raw=statistics.fmean(raws) if raws else 0.0,
        judge_means={member: statistics.fmean(values) for member, values in columns.items() if values},
        cache={"hits": cache.hits, "misses": cache.misses} if cache else {},
        agreement={"pairs": len(judged), **panel_agreement(columns)},
        visual_duplicates=sum(1 for pair in pairs if pair.provenance.get("duplicates")),
    )
