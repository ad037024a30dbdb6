"""A study's seeds side by side (`--jobs 2`) against one at a time, in the same run.

Runs the same small study (the demo config, shrunk; every variant and control) twice from
scratch, seeds one at a time and then two at a time, and prints both wall times, their ratio
(goal: about 1 / min(jobs, cores) where the cores are free) and whether the two studies wrote
the same results. It measures the whole study, process start-up included.

    .venv/bin/python bench/study_jobs.py [--seeds 4] [--jobs 2] [--full]

`--full` runs the demo config itself (minutes per seed); the default shrinks the data.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from mmedpo.config import load_config
from mmedpo.configs import DEMO
from mmedpo.layout import RunLayout
from mmedpo.pipeline.study import run_study

SMALLER = [
    "data.n_sft=120",
    "data.n_pref=40",
    "data.n_test=20",
    "data.n_val=16",
    "model.vision_pretrain_epochs=10",
    "model.sft_epochs=4",
    "train.max_steps=20",
]


def study_seconds(runs_dir: Path, overrides: list[str], seeds: list[int], jobs: int) -> tuple[float, Path]:
    config = load_config(DEMO, [*overrides, f"runs_dir={runs_dir}", "name=study", "threads=1"])
    start = time.perf_counter()
    folder = run_study(config, seeds, show_progress=False, jobs=jobs)
    return time.perf_counter() - start, folder


def evaluations(folder: Path, seeds: list[int]) -> dict:
    """Every seed's evaluations, as the study read them: metrics and predictions."""
    found = {}
    for seed in seeds:
        layout = RunLayout.read(folder / f"seed-{seed}")
        for path in sorted(layout.eval_dir.glob("*.json")):
            result = json.loads(path.read_text())
            found[(seed, path.stem)] = (result["metrics"], result["predictions"])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="the demo config as shipped")
    args = parser.parse_args()
    seeds, overrides = list(range(args.seeds)), [] if args.full else SMALLER
    print(f"{args.seeds} seeds, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        serial, one = study_seconds(Path(tmp) / "serial", overrides, seeds, jobs=1)
        print(f"one at a time: {serial:.1f} s")
        parallel, both = study_seconds(Path(tmp) / "parallel", overrides, seeds, jobs=args.jobs)
        print(f"{args.jobs} at a time:  {parallel:.1f} s")
        same = (
            evaluations(one, seeds) == evaluations(both, seeds)
            and (one / "results.md").read_text() == (both / "results.md").read_text()
        )
    print(f"side by side / one at a time: {parallel / serial:.3f}; the same results: {same}")


if __name__ == "__main__":
    main()
