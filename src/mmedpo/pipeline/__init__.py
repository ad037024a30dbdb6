"""Run the stages of a config in order, skipping the finished ones.

    from mmedpo.config import load_config
    from mmedpo.pipeline import run_pipeline
    run_pipeline(load_config("configs/demo.yaml", ["train.beta=0.2"]))

The run folder's paths are `mmedpo.layout`; the stages and their adapters are
`pipeline.stages`; fingerprints, resuming and the run lock are `pipeline.engine`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mmedpo.config import RunConfig, dump_config
from mmedpo.layout import RunLayout
from mmedpo.pipeline.checks import check_samples
from mmedpo.pipeline.engine import RunLock, StageResult, fingerprints, is_done, run_stages
from mmedpo.pipeline.stages import build_stages, merge_curate_text, stage_curate_text
from mmedpo.records import dump_json

__all__ = ["StageResult", "curate_shard", "merge_curate_shards", "run_pipeline"]


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
    layout = RunLayout.of(config)
    gates = {"samples": lambda: check_samples(config, layout)}
    with RunLock(layout):
        dump_config(config, layout.config)
        return run_stages(layout, build_stages(config), config, only, force, show_progress, on_stage, gates)


def _require_done(config: RunConfig, layout: RunLayout, names: Sequence[str]) -> None:
    prints = fingerprints(build_stages(config), config)
    for name in names:
        if not is_done(layout, name, prints[name]):
            raise ValueError(f"stage {name} has not finished with this config: run `mmedpo run` up to it first")


def curate_shard(config: RunConfig, shard: tuple[int, int], show_progress: bool = True) -> dict:
    """Curate textual pairs for one shard (i, n) of the preference split; many shards may run at once."""
    layout = RunLayout.of(config)
    with RunLock(layout, shared=True):
        _require_done(config, layout, ["samples", "base"])
        check_samples(config, layout)
        return stage_curate_text(layout, config, show_progress, shard=shard)


def merge_curate_shards(config: RunConfig, shards: int) -> dict:
    """Join finished text-curation shards into pairs.text.jsonl and record the stage as done."""
    layout = RunLayout.of(config)
    with RunLock(layout):
        summary = merge_curate_text(layout, config, shards)
        prints = fingerprints(build_stages(config), config)
        state = {"fingerprint": prints["curate_text"], "status": "done", "seconds": 0.0, "summary": summary}
        dump_json(state, layout.stage_state("curate_text"))
        return summary
