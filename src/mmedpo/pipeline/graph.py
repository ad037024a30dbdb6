"""The stage graph of a run: each stage in order with what it reads and writes.

    samples ─> base ─> curate_text ──┐
                 └──> curate_visual ─┴> score ─> pairs:VARIANT ─> train:VARIANT ─> eval:VARIANT ─> report
                 └──> regions (visual dependence's, read by every eval) ───────> eval:base ──┘

`build_stages` lists each stage with the config it reads (what the resume engine
fingerprints), the stages it reads from, its outputs in the run folder
(`mmedpo.layout`) and its adapter in `mmedpo.pipeline.stages` (the evaluations'
in `pipeline.eval_stages`). Where the target model is served (`model.endpoint`, `eval.endpoints`) is no part of any
fingerprint: served or in process, the answers are the same.
"""

from __future__ import annotations

from mmedpo.config import RunConfig
from mmedpo.pipeline.engine import Sharding, Stage
from mmedpo.pipeline.eval_stages import (
    eval_shard_outputs,
    merge_eval,
    merge_regions,
    regions_shard_outputs,
    stage_eval,
    stage_regions,
)
from mmedpo.pipeline.stages import (
    PAIR_SETTINGS,
    VISUAL_FILES,
    curate_visual_shard_outputs,
    merge_curate_text,
    merge_curate_visual,
    merge_score,
    stage_base,
    stage_curate_text,
    stage_curate_visual,
    stage_pairs,
    stage_report,
    stage_samples,
    stage_score,
    stage_train,
)
from mmedpo.records import rejects_path
from mmedpo.shards import shard_path


def _with_rejects(path):
    return [path, rejects_path(path)]


def _section(name: str, exclude: tuple[str, ...] = ()):
    return lambda config: getattr(config, name).model_dump(mode="json", exclude=set(exclude))


def _pair_settings(variant: str):
    return lambda config: config.variant(variant).model_dump(mode="json", include=set(PAIR_SETTINGS))


def _train_settings(variant: str):
    return lambda config: config.variant(variant).model_dump(mode="json", exclude=set(PAIR_SETTINGS))


def build_stages(config: RunConfig) -> tuple[Stage, ...]:
    """The stages of a run in order: the fixed ones, then pairs, train and eval stages per variant."""
    stages = [
        Stage(
            "samples",
            _section("data"),
            (),
            lambda r: [*_with_rejects(r.samples), r.synthmed_images],
            stage_samples,
        ),
        # Where the model is served is not what it is: changing the endpoint re-runs nothing.
        Stage(
            "base",
            _section("model", exclude=("endpoint",)),
            ("samples",),
            lambda r: [r.model("tiny-init"), r.model("base")],
            stage_base,
        ),
        Stage(
            "curate_text",
            # Which generators may make no pair is checked after the stage, not what it makes: no rerun.
            _section("curate_text", exclude=("allow_empty_generators",)),
            ("samples", "base"),
            lambda r: _with_rejects(r.text_pairs),
            stage_curate_text,
            Sharding(
                stage_curate_text,
                lambda r, c, s: _with_rejects(shard_path(r.text_pairs, s)),
                merge_curate_text,
            ),
        ),
        Stage(
            "curate_visual",
            _section("curate_visual"),
            ("samples", "base"),
            lambda r: [
                *(p for key in VISUAL_FILES for p in (r.visual_pairs(*key), rejects_path(r.visual_pairs(*key)))),
                r.noised_images,
                r.curation_regions,
                r.preview,
                r.localizer_cnn,
            ],
            stage_curate_visual,
            Sharding(stage_curate_visual, curate_visual_shard_outputs, merge_curate_visual),
        ),
        Stage(
            "score",
            _section("score"),
            ("curate_text", "curate_visual"),
            lambda r: _with_rejects(r.scored_pairs),
            stage_score,
            Sharding(
                stage_score,
                lambda r, c, s: _with_rejects(shard_path(r.scored_pairs, s)),
                merge_score,
            ),
        ),
    ]
    if config.eval.visual_dependence:
        stages.append(
            Stage(
                "regions",
                _regions_settings,
                ("samples", "base"),
                lambda r: [r.eval_regions],
                lambda r, c, p: stage_regions(r, c),
                Sharding(lambda r, c, p, s: stage_regions(r, c, s), regions_shard_outputs, merge_regions),
            )
        )
    stages.append(_eval_stage("base", "base", config))

    for variant in config.variants:
        stages.append(
            Stage(
                f"pairs:{variant}",
                _pair_settings(variant),
                ("score",),
                lambda r, v=variant: [r.variant_pairs(v), r.heldout_pairs(v)],
                lambda r, c, p, v=variant: stage_pairs(r, c, v),
            )
        )
    for variant in config.variants:
        # Without its own max_steps a variant takes the shared step budget, which every variant's pairs decide.
        budget = (variant,) if config.variant(variant).max_steps else tuple(config.variants)
        stages.append(
            Stage(
                f"train:{variant}",
                _train_settings(variant),
                ("base", *(f"pairs:{name}" for name in budget)),
                lambda r, v=variant: [r.model(v)],
                lambda r, c, p, v=variant: stage_train(r, c, v, p),
            )
        )
        stages.append(_eval_stage(variant, f"train:{variant}", config))
    after = tuple(stage.name for stage in stages if stage.name.startswith("eval:"))
    stages.append(Stage("report", lambda c: None, after, lambda r: [r.report_dir], stage_report))
    return tuple(stages)


def absent_stage_reason(config: RunConfig, name: str) -> str | None:
    """Why `build_stages` leaves the stage `name` out of this config's run (the setting to change), or None."""
    if name == "regions" and not config.eval.visual_dependence:
        return (
            "the regions stage finds the regions visual dependence measures, and this config does not measure "
            "it (eval.visual_dependence is false); set it to true to find them"
        )
    return None


# What the regions stage reads of curate_visual: the run's localizer, used where the test split has no masks.
LOCALIZER_SETTINGS = {"localizer", "localizer_options", "classifier", "classifier_factory"}


def _regions_settings(config: RunConfig) -> dict:
    return {
        "split": config.eval.split,
        "localizer": config.curate_visual.model_dump(mode="json", include=LOCALIZER_SETTINGS),
    }


def _eval_stage(variant: str, model_stage: str, config: RunConfig) -> Stage:
    # With visual dependence every evaluation reads the regions stage's regions; without, no eval reads the
    # localizer, and changing it re-runs none. Where the model is served is not what it is: changing
    # eval.endpoints re-runs nothing.
    regions = ("regions",) if config.eval.visual_dependence else ()
    return Stage(
        f"eval:{variant}",
        lambda c: c.eval.model_dump(mode="json", exclude={"endpoints"}),
        ("samples", model_stage, *regions),
        lambda r: [r.eval(variant), r.eval_partial(variant)],
        lambda r, c, p: stage_eval(r, c, variant),
        Sharding(
            lambda r, c, p, s: stage_eval(r, c, variant, s),
            lambda r, c, s: eval_shard_outputs(r, variant, s),
            lambda r, c, n: merge_eval(r, c, variant, n),
        ),
    )
