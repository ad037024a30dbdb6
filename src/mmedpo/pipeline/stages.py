"""The adapters of a run's stages: each reads files of the run folder, calls one library function, writes files.

An adapter decides nothing about the method: it names the inputs and outputs of
its library function in the run folder (`mmedpo.layout`) and passes the config
section on. The stages that ask a model or a judge (curate_text, curate_visual,
score, regions, every eval) are shardable: each adapter takes a shard and has a
merge beside it. The evaluation stages' adapters are `pipeline.eval_stages`.
Their order and what each reads is `mmedpo.pipeline.graph`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from mmedpo.config import RunConfig
from mmedpo.layout import RunLayout
from mmedpo.records import PreferencePair, Sample, read_jsonl, rejects_path, write_jsonl
from mmedpo.shards import Shard, shard_name, shard_path, take_shard

# The variant settings that choose and weight its pairs (the pairs:VARIANT stage); the rest train.
PAIR_SETTINGS = (
    "pair_kinds", "visual_region", "visual_rejected", "kind_balance", "judges", "pair_weighting", "heldout_pairs"
)  # fmt: skip
VISUAL_FILES = [(region, rejected) for region in ("lesion", "whole") for rejected in ("model-answer", "gold")]


# Preference pairs are made for these splits: pref's to train on, val's to measure held-out reward accuracy.
CURATED_SPLITS = ("pref", "val")


def split(layout: RunLayout, *names: str) -> list[Sample]:
    """The run's samples of the given pipeline splits (sft, pref, val, test), in file order."""
    return [sample for sample in read_jsonl(layout.samples, Sample) if sample.split in names]


def stage_samples(layout: RunLayout, config: RunConfig, show_progress: bool) -> dict:
    from mmedpo.data.sources import read_samples
    from mmedpo.data.splits import split_notes

    samples, rejects = read_samples(config.data, layout.images, config.seed)
    write_jsonl(layout.samples, samples)
    write_jsonl(rejects_path(layout.samples), rejects)
    return {
        "read": len(samples) + len(rejects),
        "samples": len(samples),
        "rejected": len(rejects),
        "by_split": dict(Counter(sample.split for sample in samples)),
        "notes": split_notes(samples),
    }


def stage_base(layout: RunLayout, config: RunConfig, show_progress: bool) -> dict:
    from mmedpo.models.base import make_base_model

    samples = read_jsonl(layout.samples, Sample)
    return make_base_model(
        config.model,
        samples,
        layout.image_roots,
        layout.model("tiny-init"),
        layout.model("base"),
        seed=config.seed,
        show_progress=show_progress,
    )


@contextmanager
def target_answerer(layout: RunLayout, endpoint, stage: str, shard: Shard | None = None):
    """The target model as served at `endpoint`, its answers cached in the run folder; None: loaded in process.

    A shard writes its answers to a cache file of its own (`mmedpo.jsonl_cache`).
    """
    if endpoint is None:
        yield None
        return
    from mmedpo.models.answerer import make_answerer

    writer = None if shard is None else f"{stage.replace(':', '.')}.{shard_name(shard)}"
    answerer = make_answerer(None, endpoint, layout.answer_cache, writer)
    try:
        yield answerer
    finally:
        answerer.close()


def stage_curate_text(layout: RunLayout, config: RunConfig, show_progress: bool, shard: Shard | None = None) -> dict:
    from mmedpo.curation.text import check_generators, curate_text

    with target_answerer(layout, config.model.endpoint, "curate_text", shard) as answerer:
        summary = curate_text(
            split(layout, *CURATED_SPLITS),
            layout.text_pairs,
            config.curate_text,
            layout.image_roots,
            seed=config.seed,
            model_dir=layout.model("base"),
            show_progress=show_progress,
            shard=shard,
            answerer=answerer,
        )
    if shard is None:  # a shard may rightly lack a generator's pairs; the merged file may not
        check_generators(layout.text_pairs, config.curate_text)
    return summary.as_dict()


def merge_curate_text(layout: RunLayout, config: RunConfig, shards: int) -> dict:
    from mmedpo.curation.merge import merge_curated
    from mmedpo.curation.text import check_generators

    merged = merge_curated(split(layout, *CURATED_SPLITS), layout.text_pairs, shards)
    check_generators(layout.text_pairs, config.curate_text)
    return merged


def stage_curate_visual(layout: RunLayout, config: RunConfig, show_progress: bool, shard: Shard | None = None) -> dict:
    from mmedpo.curation.visual import curate_visual_regions

    with target_answerer(layout, config.model.endpoint, "curate_visual", shard) as answerer:
        return curate_visual_regions(
            split(layout, *CURATED_SPLITS),
            visual_files(layout, config),
            config.curate_visual,
            layout.image_roots,
            layout.images,
            layout.model("base"),
            seed=config.seed,
            show_progress=show_progress,
            sft_samples=split(layout, "sft"),
            classifier_path=layout.localizer_cnn,
            shard=shard,
            answerer=answerer,
            regions_dir=layout.curation_regions,
        )


def visual_files(layout: RunLayout, config: RunConfig) -> dict[tuple[str, str], Path]:
    """(noise region, rejected text) -> its pairs file, for every visual pairs file the config makes."""
    settings = config.curate_visual
    return {
        (region, rejected): layout.visual_pairs(region, rejected)
        for region in settings.regions
        for rejected in settings.rejected
    }


def curate_visual_shard_outputs(layout: RunLayout, config: RunConfig, shard: Shard) -> list[Path]:
    """A visual shard's pairs files, its regions (index and masks) and the noised images of its images (their
    names do not change with every setting, so a shard whose config changed must not reuse them)."""
    from mmedpo.curation.merge import image_of
    from mmedpo.curation.visual import noised_files
    from mmedpo.imaging.run_localizer import region_mask_name, regions_index

    samples = take_shard(split(layout, *CURATED_SPLITS), shard, key=image_of) if layout.samples.exists() else []
    paths = [shard_path(path, shard) for path in visual_files(layout, config).values()]
    return [
        *(p for path in paths for p in (path, rejects_path(path))),
        layout.curation_regions / regions_index(shard),
        *(layout.curation_regions / region_mask_name(image) for image in dict.fromkeys(image_of(s) for s in samples)),
        *noised_files(samples, config.curate_visual, layout.images),
    ]


def merge_curate_visual(layout: RunLayout, config: RunConfig, shards: int) -> dict:
    from mmedpo.curation.merge import merge_visual_shards

    return merge_visual_shards(split(layout, *CURATED_SPLITS), visual_files(layout, config), shards)


def _pairs_to_score(layout: RunLayout, config: RunConfig) -> list[PreferencePair]:
    pairs = read_jsonl(layout.text_pairs, PreferencePair)
    for path in visual_files(layout, config).values():
        pairs += read_jsonl(path, PreferencePair)
    return pairs


def stage_score(layout: RunLayout, config: RunConfig, show_progress: bool, shard: Shard | None = None) -> dict:
    from mmedpo.scoring.panel import score_pairs

    pairs = _pairs_to_score(layout, config)
    cache, writer = _judge_cache(layout, config)
    summary = score_pairs(
        pairs, layout.scored_pairs, config.score, show_progress, cache_path=cache, shard=shard, cache_writer=writer
    )
    return summary.as_dict()


def merge_score(layout: RunLayout, config: RunConfig, shards: int) -> dict:
    from mmedpo.scoring.panel import merge_scored_shards

    return merge_scored_shards(_pairs_to_score(layout, config), layout.scored_pairs, shards, config.score).as_dict()


def _judge_cache(layout: RunLayout, config: RunConfig) -> tuple[Path, str | None]:
    """The judge cache file, and the name of this run's own file beside it when the cache lies outside the
    run folder: other runs (a study's seeds, side by side) may share it at the same time, and no two
    processes append to one file (`mmedpo.jsonl_cache`). The name is the run folder's path from the cache's
    folder ("seed-0" in a study), else its name and a digest of where it is: two runs never share one."""
    if not config.score.cache_path:
        return layout.judge_cache, None
    path, run = Path(config.score.cache_path).resolve(), layout.dir.resolve()
    if path.is_relative_to(run):
        return path, None
    if run.is_relative_to(path.parent):
        return path, ".".join(run.relative_to(path.parent).parts)
    return path, f"{run.name}-{hashlib.sha256(str(run).encode()).hexdigest()[:8]}"


def stage_pairs(layout: RunLayout, config: RunConfig, variant: str) -> dict:
    from mmedpo.scoring.variant_pairs import write_variant_pairs

    train = config.variant(variant)
    try:
        return write_variant_pairs(
            layout.scored_pairs,
            layout.variant_pairs(variant),
            layout.heldout_pairs(variant),
            {sample.id for sample in split(layout, "val")},
            config.score,
            kinds=train.pair_kinds,
            visual_region=train.visual_region,
            judges=train.judges,
            weighted=train.pair_weighting,
            visual_rejected=train.visual_rejected,
            kind_balance=train.kind_balance,
            heldout_limit=train.heldout_pairs,
            seed=config.seed,
        )
    except ValueError as error:
        raise ValueError(f"variant {variant}: {error}") from None


def stage_train(layout: RunLayout, config: RunConfig, variant: str, show_progress: bool = True) -> dict:
    from mmedpo.training.dpo import train_weighted_dpo

    pairs = read_jsonl(layout.variant_pairs(variant), PreferencePair)
    heldout = read_jsonl(layout.heldout_pairs(variant), PreferencePair)
    settings = config.variant(variant).settings(config.seed)
    if settings.max_steps is None:
        settings = settings.model_copy(update={"max_steps": shared_steps(layout, config)})
    out = layout.model(variant)
    train_weighted_dpo(
        layout.model("base"),
        pairs,
        layout.image_roots,
        out,
        settings,
        heldout_pairs=heldout or None,
        data_description=pairs_description(config, variant),
        # Without progress bars (a study's seeds side by side), each logged entry says whose it is.
        log_label=None if show_progress else f"{config.name} {variant}",
    )
    log = json.loads(layout.train_log(variant).read_text(encoding="utf-8"))
    return {
        "pairs": len(pairs),
        "by_kind": dict(Counter(pair.kind for pair in pairs)),
        "steps": log["optimizer_steps"],
        "epochs": round(log["epochs"], 3),
        "heldout": log["heldout"],
    }


def shared_steps(layout: RunLayout, config: RunConfig) -> int:
    """Equal budgets: the optimizer steps of the variant with the most pairs, for every variant without max_steps.

    Every variant then takes as many steps with the same schedule; one with fewer
    pairs cycles through them more often. Comparing variants that differ in their
    pairs would otherwise also compare how long they trained.
    """
    steps = []
    for name in config.variants:
        train = config.variant(name)
        per_step = train.per_device_train_batch_size * train.gradient_accumulation_steps
        pairs = _count_lines(layout.variant_pairs(name))  # written: every train stage waits for every pairs stage
        steps.append(train.max_steps or math.ceil(pairs * train.num_train_epochs / per_step))
    return max(steps)


def _count_lines(path: Path) -> int:
    """The records of a JSONL file, without parsing them (a variant's pairs file may hold 100,000 pairs)."""
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


def pairs_description(config: RunConfig, variant: str) -> str:
    """Where a variant's pairs came from, in a sentence or two (for its model card)."""
    train = config.variant(variant)
    sources = {
        "synthmed": "SynthMed (synthetic chest images, docs/synthmed.md)",
        "dataset": f"the dataset read by {config.data.dataset!r}",
        "samples": f"the samples of {config.data.samples}",
    }
    kinds = []
    if "text" in train.pair_kinds:
        kinds.append(f"text pairs from the generators {', '.join(config.curate_text.generators)}")
    if "visual" in train.pair_kinds:
        kinds.append(
            f"visual pairs whose rejected image is noised on the {train.visual_region} region "
            f"(localizer {config.curate_visual.localizer!r})"
        )
    judges = train.judges or config.score.judges
    weights = (
        f"weighted by the clinical scores of the judges {', '.join(judges)} (normaliser {config.score.normaliser!r})"
        if train.pair_weighting
        else "unweighted (plain DPO)"
    )
    return (
        f"Preference pairs curated by mmedpo run {config.name!r} from {sources[config.data.source]}, preference "
        f"split: {'; '.join(kinds)}; {weights}."
    )


def stage_report(layout: RunLayout, config: RunConfig, show_progress: bool) -> dict:
    from mmedpo.report.html import write_report

    return {"report": str(write_report(layout.dir))}
