"""A study: the same run repeated over seeds, and what holds across them.

    mmedpo study --seeds 0,1,2                     # the demo config, three seeds
    from mmedpo.pipeline.study import run_study
    run_study(load_config("configs/demo.yaml"), seeds=[0, 1, 2])

Each seed is a whole run (data draw, initialisation, order) in its own run
folder, RUNS_DIR/NAME/seed-S/, made by `run_pipeline`; a finished seed is
skipped stage by stage as any run is. What does not depend on the seed is
reused: the judge cache is shared by every seed (a judge's verdict on the same
texts is the same), so an identical pair is never judged twice. The study folder
then holds the combined result (`report.study`): per metric and variant the
per-seed values, their mean and a 95% interval over seeds and test items, and
each chain's verdict step by step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from mmedpo.config import RunConfig, dump_config
from mmedpo.layout import RunLayout
from mmedpo.pipeline import run_pipeline
from mmedpo.pipeline.engine import RunLock, StageResult


def seed_config(config: RunConfig, seed: int) -> RunConfig:
    """The run of one seed: RUNS_DIR/NAME/seed-S, with the study's shared judge cache."""
    study_dir = Path(config.run_dir)
    cache = config.score.cache_path or str(study_dir / "judge_cache.jsonl")
    return config.model_copy(
        update={
            "runs_dir": str(study_dir),
            "name": f"seed-{seed}",
            "seed": seed,
            "score": config.score.model_copy(update={"cache_path": cache}),
        }
    )


def run_study(
    config: RunConfig,
    seeds: Sequence[int],
    show_progress: bool = True,
    on_stage: Callable[[int, StageResult], None] | None = None,
) -> Path:
    """Run `config` once per seed, then write the study's combined table and report; returns the study folder."""
    from mmedpo.report.study import write_study

    if len(set(seeds)) < len(seeds) or not seeds:
        raise ValueError(f"a study needs distinct seeds, got {list(seeds)}")
    study_dir = Path(config.run_dir)
    with RunLock(RunLayout(study_dir)):
        dump_config(config, study_dir / "config.yaml")
        for seed in seeds:
            report = (lambda result, s=seed: on_stage(s, result)) if on_stage else None
            run_pipeline(seed_config(config, seed), show_progress=show_progress, on_stage=report)
        write_study(study_dir, list(seeds))
    return study_dir


def parse_seeds(text: str) -> list[int]:
    """ "0,1,2" -> [0, 1, 2]; "0-4" -> [0, 1, 2, 3, 4]."""
    seeds: list[int] = []
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"seeds must look like 0,1,2 or 0-4; got {text!r}")
        seeds.extend(range(int(first), int(last) + 1) if dash else [int(first)])
    return seeds
