"""A study: the same run repeated over seeds, and what holds across them.

    mmedpo study --seeds 0,1,2                     # the demo config, three seeds
    mmedpo study --seeds 0-5 --jobs 2              # six seeds, two at a time
    from mmedpo.pipeline.study import run_study
    run_study(load_config("configs/demo.yaml"), seeds=[0, 1, 2])

Each seed is a whole run (data draw, initialisation, order) in its own run
folder, RUNS_DIR/NAME/seed-S/, made by `run_pipeline`; a finished seed is
skipped stage by stage as any run is. With `jobs` above 1 that many seeds run
side by side, each in a process of its own: the runs share nothing but the judge
cache, so this is the same study, sooner where cores are free (a tiny model on
one thread leaves the other cores idle). What does not depend on the seed is
reused: the judge cache is shared by every seed (a judge's verdict on the same
texts is the same), so an identical pair is never judged twice; each seed
appends to a file of its own beside it and reads them all. The study folder
then holds the combined result (`report.study`): per metric and variant the
per-seed values, their mean and a 95% interval over seeds and test items, and
each chain's verdict step by step.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
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
    jobs: int = 1,
) -> Path:
    """Run `config` once per seed, `jobs` seeds at a time, then write the study's combined table and report;
    returns the study folder.

    With `jobs` above 1, `on_stage` is called in the seed's process, so it must
    be a function that can be pickled (defined at a module's top level), and
    progress bars are off. A seed that fails does not stop the others; the study
    is written only when every seed has finished, else the error names the seeds
    that failed (rerun to resume them).
    """
    from mmedpo.report.study import write_study

    if len(set(seeds)) < len(seeds) or not seeds:
        raise ValueError(f"a study needs distinct seeds, got {list(seeds)}")
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    study_dir = Path(config.run_dir)
    with RunLock(RunLayout(study_dir)):
        dump_config(config, study_dir / "config.yaml")
        if jobs == 1:
            for seed in seeds:
                _run_seed(config, seed, show_progress, on_stage)
        else:
            _run_seeds_side_by_side(config, seeds, on_stage, jobs)
        write_study(study_dir, list(seeds))
    return study_dir


def _run_seed(
    config: RunConfig, seed: int, show_progress: bool, on_stage: Callable[[int, StageResult], None] | None
) -> None:
    report = (lambda result: on_stage(seed, result)) if on_stage else None
    run_pipeline(seed_config(config, seed), show_progress=show_progress, on_stage=report)


def _run_seeds_side_by_side(
    config: RunConfig, seeds: Sequence[int], on_stage: Callable[[int, StageResult], None] | None, jobs: int
) -> None:
    # Without a thread count, each process would take torch's default (every core) and they would fight; with
    # one, the study uses jobs x threads.
    threads = config.threads or max(1, (os.cpu_count() or 1) // min(jobs, len(seeds)))
    # spawn, not fork: a forked torch process can hang on the parent's thread pools.
    context = get_context("spawn")
    failed: list[str] = []
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker, initargs=(threads,)) as pool:
        futures = {pool.submit(_run_seed, config, seed, False, on_stage): seed for seed in seeds}
        for future in as_completed(futures):
            error = future.exception()
            if error is not None:
                failed.append(f"seed {futures[future]}: {error}")
    if failed:
        raise ValueError(f"{len(failed)} of {len(seeds)} seeds failed, the study was not written: {'; '.join(failed)}")


def _start_worker(threads: int) -> None:
    """A seed's process: the command line's quiet output (no progress bars to interleave) and its thread count."""
    from mmedpo.progress import quiet_libraries

    quiet_libraries()
    import torch

    torch.set_num_threads(threads)


def parse_seeds(text: str) -> list[int]:
    """ "0,1,2" -> [0, 1, 2]; "0-4" -> [0, 1, 2, 3, 4]."""
    seeds: list[int] = []
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"seeds must look like 0,1,2 or 0-4; got {text!r}")
        seeds.extend(range(int(first), int(last) + 1) if dash else [int(first)])
    return seeds
