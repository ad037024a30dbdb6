"""The adapters of the evaluation stages: visual dependence's regions (found once per run) and each
variant's evaluation, whole, in shards and merged; the model card gets the test metrics.

Like `pipeline.stages`, each adapter reads its inputs from the run folder (`mmedpo.layout`) and
calls the library; `pipeline.graph` lists them with what they read.
"""

from __future__ import annotations

from pathlib import Path

from mmedpo.config import RunConfig
from mmedpo.layout import RunLayout
from mmedpo.pipeline.stages import split, target_answerer
from mmedpo.shards import Shard, take_shard


def eval_endpoint(config: RunConfig, variant: str):
    """Where the model of `variant` is served: `eval.endpoints`, else `model.endpoint` for base; None: in process."""
    return config.eval.endpoints.get(variant, config.model.endpoint if variant == "base" else None)


def stage_regions(layout: RunLayout, config: RunConfig, shard: Shard | None = None) -> dict:
    """Visual dependence's region of every image of the evaluated split, found once for every evaluation (the
    attribution localizer explains the base model, so every variant is measured on the same regions).
    `shard=(i, n)` localizes every n-th image from the i-th; `merge_regions` joins the shards."""
    from mmedpo.curation.merge import image_of
    from mmedpo.imaging.run_localizer import evaluation_localizer, regions_index, save_regions

    test = split(layout, config.eval.split)
    localizer, note = evaluation_localizer(
        config.curate_visual,
        test,
        split(layout, "sft"),
        layout.image_roots,
        layout.localizer_cnn,
        layout.model("base"),
        seed=config.seed,
    )
    samples = test if shard is None else take_shard(test, shard, key=image_of)
    summary = save_regions(localizer, samples, layout.image_roots, layout.eval_regions, note, regions_index(shard))
    return {**summary, "notes": [note]}


def regions_shard_outputs(layout: RunLayout, config: RunConfig, shard: Shard) -> list[Path]:
    """A regions shard's index and the masks of its images."""
    from mmedpo.curation.merge import image_of
    from mmedpo.imaging.run_localizer import region_mask_name, regions_index

    images = {image_of(s) for s in take_shard(split(layout, config.eval.split), shard, key=image_of)}
    masks = [layout.eval_regions / region_mask_name(image) for image in sorted(images)]
    return [layout.eval_regions / regions_index(shard), *masks]


def merge_regions(layout: RunLayout, config: RunConfig, shards: int) -> dict:
    from mmedpo.imaging.run_localizer import SavedRegions, merge_region_shards, regions_index

    indexes = [regions_index((index, shards)) for index in range(1, shards + 1)]
    summary = merge_region_shards(layout.eval_regions, indexes)
    return {**summary, "notes": [SavedRegions(layout.eval_regions).note]}


def stage_eval(layout: RunLayout, config: RunConfig, variant: str, shard: Shard | None = None) -> dict:
    from mmedpo.evaluation.suite import evaluate_run_model

    test, localizer, note = split(layout, config.eval.split), None, None
    if config.eval.visual_dependence:
        from mmedpo.imaging.run_localizer import SavedRegions

        localizer = SavedRegions(layout.eval_regions)
        note = localizer.note
    with target_answerer(layout, eval_endpoint(config, variant), f"eval:{variant}", shard) as answerer:
        result = evaluate_run_model(
            layout.model(variant),
            test,
            layout.image_roots,
            layout.eval(variant),
            config.eval,
            config.seed,
            localizer,
            answerer=answerer,
            shard=shard,
        )
    if shard is None:
        _refresh_model_card(layout, config, variant, result["metrics"])
    return _eval_summary(result, note)


def eval_shard_outputs(layout: RunLayout, variant: str, shard: Shard) -> list[Path]:
    from mmedpo.evaluation.evaluate import partial_path
    from mmedpo.evaluation.suite import eval_shard_path

    path = eval_shard_path(layout.eval(variant), shard)
    return [path, partial_path(path)]


def merge_eval(layout: RunLayout, config: RunConfig, variant: str, shards: int) -> dict:
    from mmedpo.evaluation.suite import merge_eval_shards

    result = merge_eval_shards(split(layout, config.eval.split), layout.eval(variant), shards, config.eval)
    _refresh_model_card(layout, config, variant, result["metrics"])
    note = None
    if "visual_dependence" in result:
        from mmedpo.imaging.run_localizer import SavedRegions

        note = SavedRegions(layout.eval_regions).note
    return _eval_summary(result, note)


def _eval_summary(result: dict, note: str | None) -> dict:
    """What an evaluation (whole, shard or merged) records: its metrics, and with visual dependence where the
    regions came from (`note`) and how many samples it measured."""
    from mmedpo.evaluation.visual_dependence import measured_line

    if "visual_dependence" not in result:
        return result["metrics"]
    return {**result["metrics"], "notes": [note, measured_line(result["visual_dependence"])]}


def _refresh_model_card(layout: RunLayout, config: RunConfig, variant: str, metrics: dict) -> None:
    """A variant trained here: its model card gets the test metrics, on the Hub too if training pushed it
    there (before these metrics existed)."""
    from mmedpo.training.model_card import push_cards, write_model_card

    if not layout.train_log(variant).exists():
        return
    dataset = "SynthMed" if config.data.source == "synthmed" else (config.data.dataset or config.data.samples)
    cards = write_model_card(layout.model(variant), metrics, dataset=dataset, split=config.eval.split)
    settings = config.variant(variant)
    if settings.push_to_hub:
        push_cards(layout.model(variant), cards, settings.hub_model_id)
