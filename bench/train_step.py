"""One weighted-DPO training step on the same tiny LLaVA and batch, against baselines in the same run.

Prints:
  - step time of ours / upstream TRL DPOTrainer (live reference; goal <= 1.03): the trainers take
    turns step by step in a rotating order; medians, IQR, minima, and the median of the per-round
    paired ratios (the figure to read on a shared, noisy machine), with the load average
  - collation time per batch, upstream / ours / ours with visual pairs (own rejected images)
  - step time with the precomputed reference / with the live reference (goal <= 0.8)
  - peak memory of a LoRA trainer and of a full fine-tuning trainer against one model
    doing the same forward and backward (each measured in its own process, CPU RSS
    above the same process's baseline after imports)

    .venv/bin/python bench/train_step.py [--steps 30] [--no-memory]
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from transformers import AutoModelForImageTextToText  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

from conftest import CORPUS  # noqa: E402
from mmedpo.models.tiny import build_tiny_llava  # noqa: E402
from mmedpo.records import PreferencePair  # noqa: E402
from mmedpo.training.dpo import (  # noqa: E402
    PAIR_BATCH_KEYS,  # noqa: E402
    WeightedDPOTrainer,
    pairs_to_dataset,
)
from mmedpo.training.dpo_config import WeightedDPOConfig  # noqa: E402
from mmedpo.training.lora import lora_config  # noqa: E402
from mmedpo.training.settings import DPOSettings  # noqa: E402

BATCH = 8
VISUAL = {"kind": "visual", "rejected_image": "noised.png"}  # the same pairs as visual ones, with their own x_l
MODEL = dict(image_size=64, text_hidden=256, layers=4, heads=4, vision_hidden=128)
# Bigger for memory, so that weights, not the Python runtime, dominate the peak (about 110M parameters).
MEMORY_MODEL = dict(image_size=64, text_hidden=1024, layers=8, heads=8, vision_hidden=128)


def build(work: Path, sizes: dict = MODEL, name: str = "model") -> tuple[Path, list]:
    model_dir = work / name
    if not model_dir.exists():
        build_tiny_llava(CORPUS, model_dir, seed=0, **sizes)
    image = Image.new("RGB", (64, 64), (20, 20, 20))
    ImageDraw.Draw(image).ellipse((8, 20, 28, 40), fill=(240, 240, 240))
    image.save(work / "img.png")
    Image.new("RGB", (64, 64), (200, 20, 20)).save(work / "noised.png")
    pairs = [
        PreferencePair(
            id=f"p{i}",
            sample_id=f"s{i}",
            task="vqa",
            kind="text",
            image="img.png",
            question=CORPUS[i % 12],
            chosen=CORPUS[26 + i % 12],
            rejected=CORPUS[27 + i % 11],
            weight=1.0,
        )
        for i in range(BATCH)
    ]
    return model_dir, pairs


def config(cls, work: Path, name: str, **extra):
    return cls(output_dir=str(work / name), report_to="none", bf16=False, activation_checkpointing=False, **extra)


def step_seconds(runs: list[tuple], steps: int) -> list[list[float]]:
    """Wall times of loss + backward on the same batch, for each (trainer, rows): `steps` each, after 2 warm-ups.

    The trainers take turns step by step, and the turn order rotates every round, so a change in the
    machine's load, or a cache warmed by the previous trainer, hits all alike.
    """
    batches = [trainer.data_collator(rows) for trainer, rows in runs]
    times = [[] for _ in runs]
    for round_ in range(steps + 2):  # two warm-up rounds
        order = [(round_ + k) % len(runs) for k in range(len(runs))]
        for index in order:
            trainer, batch = runs[index][0], batches[index]
            trainer.model.zero_grad()
            start = time.perf_counter()
            trainer.compute_loss(trainer.model, batch).backward()
            times[index].append(time.perf_counter() - start)
    return [spent[2:] for spent in times]


def collate_seconds(collators: list[tuple], rounds: int = 20) -> list[float]:
    """Median wall time of each (collator, rows) turning the same rows into a batch (rows copied afresh each time:
    TRL's collator rewrites the messages in place)."""
    times = [[] for _ in collators]
    for _ in range(rounds):
        for (collate, rows), spent in zip(collators, times):
            fresh = copy.deepcopy(rows)
            start = time.perf_counter()
            collate(fresh)
            spent.append(time.perf_counter() - start)
    return [statistics.median(spent) for spent in times]


def summary(spent: list[float]) -> str:
    q1, median, q3 = statistics.quantiles(spent, n=4)
    return f"{median * 1e3:7.1f} ms (IQR {q1 * 1e3:.1f}-{q3 * 1e3:.1f}, min {min(spent) * 1e3:.1f})"


def peak_memory(mode: str, work: Path) -> float:
    """MiB of peak RSS above the baseline of a process that only imported everything (run in a fresh process)."""
    model_dir, pairs = build(work, MEMORY_MODEL, "memory_model")
    dataset = pairs_to_dataset(pairs, [work])
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if mode == "single":
        model = AutoModelForImageTextToText.from_pretrained(model_dir, local_files_only=True)
        trainer = WeightedDPOTrainer(
            model=model, args=config(WeightedDPOConfig, work, "s", precompute_ref_log_probs=True), train_dataset=dataset
        )
        batch = {
            k: v for k, v in trainer.data_collator(list(trainer.train_dataset)).items() if k not in PAIR_BATCH_KEYS
        }
        model_kwargs = {
            k: v for k, v in batch.items() if k not in ("completion_mask", "ref_chosen_logps", "ref_rejected_logps")
        }
        model(**model_kwargs).logits.float().logsumexp(-1).mean().backward()  # one model, one forward and backward
    else:
        model = AutoModelForImageTextToText.from_pretrained(model_dir, local_files_only=True)
        peft = lora_config(model, DPOSettings(lora=True, lora_r=16)) if mode == "lora" else None
        trainer = WeightedDPOTrainer(
            model=model, args=config(WeightedDPOConfig, work, mode), train_dataset=dataset, peft_config=peft
        )
        trainer.compute_loss(trainer.model, trainer.data_collator(list(dataset))).backward()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--no-memory", action="store_true", help="skip the (slow) memory measurements")
    parser.add_argument("--memory", help=argparse.SUPPRESS)  # internal: measure one mode in this process
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a fair, quiet comparison on a shared machine
    if args.memory:
        print(peak_memory(args.memory, Path(args.work)))
        return

    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    work = Path(tempfile.mkdtemp(prefix="bench-train-step-"))
    model_dir, pairs = build(work)
    dataset = pairs_to_dataset(pairs, [work])
    rows = list(dataset)
    upstream_rows = [{k: row[k] for k in ("prompt", "chosen", "rejected", "images")} for row in rows]

    theirs = DPOTrainer(model=str(model_dir), args=config(DPOConfig, work, "theirs"), train_dataset=dataset)
    ours = WeightedDPOTrainer(model=str(model_dir), args=config(WeightedDPOConfig, work, "ours"), train_dataset=dataset)
    cached = WeightedDPOTrainer(
        model=str(model_dir),
        args=config(WeightedDPOConfig, work, "cached", precompute_ref_log_probs=True),
        train_dataset=dataset,
    )
    s_theirs, s_ours, s_cached = step_seconds(
        [(theirs, upstream_rows), (ours, rows), (cached, list(cached.train_dataset))], args.steps
    )
    t_theirs, t_ours, t_cached = (statistics.median(spent) for spent in (s_theirs, s_ours, s_cached))
    # Per round, ours / upstream of the two steps run next to each other: its median resists load drifts.
    paired = statistics.median(o / t for o, t in zip(s_ours, s_theirs))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"model: tiny LLaVA {MODEL}, batch {BATCH} pairs, {args.steps} interleaved steps (loss + backward), 1 thread")
    print(f"load average before: {load_before} | after: {load}  (on {os.cpu_count()} CPUs)")
    print(f"step time  upstream TRL {summary(s_theirs)}")
    print(f"step time  ours         {summary(s_ours)}")
    print(
        f"ours/upstream: ratio of medians {t_ours / t_theirs:.3f}, median of paired ratios {paired:.3f}, "
        f"ratio of minima {min(s_ours) / min(s_theirs):.3f}  (goal <= 1.03)"
    )
    print(
        f"step time  precomputed reference {summary(s_cached)} | precomputed/live {t_cached / t_ours:.3f}  "
        "(goal <= 0.8)"
    )
    visual_rows = list(pairs_to_dataset([p.model_copy(update=VISUAL) for p in pairs], [work]))
    rows = list(dataset)  # fresh: collating rewrote the earlier rows' messages in place
    upstream_rows = [{k: row[k] for k in ("prompt", "chosen", "rejected", "images")} for row in rows]
    c_theirs, c_ours, c_visual = collate_seconds(
        [(theirs.data_collator, upstream_rows), (ours.data_collator, rows), (ours.data_collator, visual_rows)]
    )
    print(
        f"collate (per batch, outside the step above): upstream {c_theirs * 1e3:.1f} ms | ours, text pairs "
        f"{c_ours * 1e3:.1f} ms | ours, visual pairs (own rejected image) {c_visual * 1e3:.1f} ms"
    )

    if args.no_memory:
        return
    build(work, MEMORY_MODEL, "memory_model")
    memory = {}
    for mode in ("single", "lora", "full"):
        out = subprocess.run(
            [sys.executable, __file__, "--memory", mode, "--work", str(work)],
            capture_output=True,
            text=True,
            check=True,
        )
        memory[mode] = float(out.stdout.strip().splitlines()[-1])
    print(
        f"peak memory above baseline (model {MEMORY_MODEL}):\n  one model {memory['single']:.0f} MiB | "
        f"LoRA trainer {memory['lora']:.0f} MiB "
        f"({memory['lora'] / memory['single']:.2f}x) | full FT + reference copy {memory['full']:.0f} MiB "
        f"({memory['full'] / memory['single']:.2f}x)"
    )


if __name__ == "__main__":
    main()
