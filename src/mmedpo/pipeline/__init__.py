"""Run the stages of a config in order, skipping the finished ones; or one stage as shards over many machines.

    from mmedpo.config import load_config
    from mmedpo.pipeline import merge_shards, run_pipeline, run_shard
    run_pipeline(load_config("configs/demo.yaml", ["train.beta=0.2"]))

    run_shard(config, "curate_visual", (2, 4))   # on each machine, i = 1..4
    merge_shards(config, "curate_visual", 4)     # once all four are done; run_pipeline goes on from there

The run folder's paths are `mmedpo.layout`; the stage graph is `pipeline.graph`,
their adapters `pipeline.stages`; fingerprints, resuming and the run lock are `pipeline.engine`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mmedpo.config import RunConfig, dump_config
from mmedpo.layout import RunLayout
from mmedpo.pipeline.checks import check_samples
from mmedpo.pipeline.engine import (
    RunLock,
    Stage,
    StageResult,
    fingerprints,
    is_done,
    read_state,
    run_stage,
    run_stages,
    shard_stage,
)
from mmedpo.pipeline.graph import absent_stage_reason, build_stages
from mmedpo.records import dump_json
from mmedpo.shards import Shard

__all__ = ["StageResult", "merge_shards", "run_pipeline", "run_shard", "shardable_stages"]


def run_pipeline(
    config: RunConfig,
    only: Sequence[str] | None = None,
    force: bool = False,
    show_progress: bool = True,
    on_stage: Callable[[StageResult], None] | None = None,
) -> list[StageResult]:
    """Run every stage (or `only` those named, after what they read that has not finished); returns what each did.

    `force` re-runs the selected stages from scratch even if they finished. The
    run folder is locked for the whole run: a second writer is refused. Once the
    samples are read, what the stages need of them is checked (`checks`) before
    any later stage runs.
    """
    _check_present(config, only or ())
    layout = RunLayout.of(config)
    gates = {"samples": lambda: check_samples(config, layout)}
    with RunLock(layout):
        dump_config(config, layout.config)
        return run_stages(layout, build_stages(config), config, only, force, show_progress, on_stage, gates)


def shardable_stages(config: RunConfig) -> list[str]:
    """The stages of this config that can run as shards: curate_text, curate_visual, score, regions, every eval."""
    return [stage.name for stage in build_stages(config) if stage.sharding is not None]


def _check_present(config: RunConfig, names: Sequence[str]) -> None:
    """A stage this config's run leaves out is named with the setting that leaves it out."""
    for name in names:
        reason = absent_stage_reason(config, name)
        if reason:
            raise ValueError(reason)


def _shardable(config: RunConfig, name: str) -> tuple[Stage, dict[str, str]]:
    _check_present(config, [name])
    stages = build_stages(config)
    stage = next((stage for stage in stages if stage.name == name), None)
    if stage is None or stage.sharding is None:
        raise ValueError(f"stage {name!r} cannot be sharded; shardable: {', '.join(shardable_stages(config))}")
    return stage, fingerprints(stages, config)


def run_shard(config: RunConfig, name: str, shard: Shard, show_progress: bool = True) -> dict:
    """Run shard (i, n) of stage `name`; many shards, on many machines sharing the run folder, may run at once.

    The stages it reads must have finished (run them first, e.g. with `mmedpo run`
    up to them). The shard resumes if it was stopped, and starts afresh if the
    config changed. Shard workers share the run folder's lock; each shard holds a
    lock of its own, so it never runs twice at once.
    """
    stage, prints = _shardable(config, name)
    layout = RunLayout.of(config)
    part = shard_stage(stage, shard, config)
    with RunLock(layout, shared=True), RunLock(layout, name=part.name):
        for before in stage.after:
            if not is_done(layout, before, prints[before]):
                raise ValueError(
                    f"stage {before} has not finished with this config: run it first (`mmedpo run --only {before}`)"
                )
        check_samples(config, layout)
        return run_stage(layout, part, config, prints[name], show_progress).summary


def merge_shards(config: RunConfig, name: str, count: int) -> dict:
    """Join the `count` finished shards of stage `name` into its outputs and record the stage as done.

    Every shard must be done with the current config; the merge is the same
    whichever shard finished first, and equal to what the whole stage writes.
    """
    stage, prints = _shardable(config, name)
    layout = RunLayout.of(config)
    with RunLock(layout):
        for index in range(1, count + 1):
            part = shard_stage(stage, (index, count), config).name
            if not is_done(layout, part, prints[name]):
                raise ValueError(
                    f"{name} shard {index}/{count} has not finished with this config: "
                    f"run it with --shard {index}/{count}"
                )
        summary = stage.sharding.merge(layout, config, count)
        # The stage's time is its shards' work, added up (they may have run side by side).
        parts = [read_state(layout, shard_stage(stage, (index, count), config).name) for index in range(1, count + 1)]
        seconds = round(sum(part.get("seconds", 0.0) for part in parts), 2)
        state = {"fingerprint": prints[name], "status": "done", "seconds": seconds, "summary": summary}
        dump_json(state, layout.stage_state(name))
        return summary
