"""One weighted-DPO training step on the same tiny LLaVA and batch, against baselines in the same run.

Prints:
  - step time of ours / upstream TRL DPOTrainer (live reference; goal <= 1.03)
  - step time with the precomputed reference / with the live reference (goal <= 0.8)
  - peak memory of a LoRA trainer and of a full fine-tuning trainer against one model
    doing the same forward and backward (each measured in its own process, CPU RSS
    above the same process's baseline after imports)

    .venv/bin/python bench/train_step.py [--steps 10]
"""

from __future__ import annotations

import argparse
import resource
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


def step_seconds(runs: list[tuple], steps: int) -> list[float]:
    """Median wall time of loss + backward on the same batch, for each (trainer, rows).

    The trainers take turns step by step, so a change in the machine's load hits all alike.
    """
    batches = [trainer.data_collator(rows) for trainer, rows in runs]
    times = [[] for _ in runs]
    for _ in range(steps + 2):  # two warm-up rounds
        for (trainer, _rows), batch, spent in zip(runs, batches, times):
            trainer.model.zero_grad()
            start = time.perf_counter()
            trainer.compute_loss(trainer.model, batch).backward()
            spent.append(time.perf_counter() - start)
    return [sorted(spent[2:])[len(spent[2:]) // 2] for spent in times]


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
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--memory", help=argparse.SUPPRESS)  # internal: measure one mode in this process
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a fair, quiet comparison on a shared machine
    if args.memory:
        print(peak_memory(args.memory, Path(args.work)))
        return

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
    t_theirs, t_ours, t_cached = step_seconds(
        [(theirs, upstream_rows), (ours, rows), (cached, list(cached.train_dataset))], args.steps
    )
    print(f"model: tiny LLaVA {MODEL}, batch {BATCH} pairs, median of {args.steps} steps (loss + backward), 1 thread")
    print(
        f"step time  upstream TRL {t_theirs * 1e3:7.1f} ms | ours {t_ours * 1e3:7.1f} ms | "
        f"ours/upstream {t_ours / t_theirs:.3f}  (goal <= 1.03)"
    )
    print(
        f"step time  live reference {t_ours * 1e3:7.1f} ms | precomputed {t_cached * 1e3:7.1f} ms | "
        f"precomputed/live {t_cached / t_ours:.3f}  (goal <= 0.8)"
    )

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
