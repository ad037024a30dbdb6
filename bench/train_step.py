"""One weighted-DPO training step on the same LLaVA and batch, against baselines in the same run.

Prints (tiny LLaVA on the CPU, the default):
  - step time of ours / upstream TRL DPOTrainer (live reference; goal <= 1.03): the trainers take
    turns step by step in a rotating order; medians, IQR, minima, and the median of the per-round
    paired ratios (the figure to read on a shared, noisy machine), with the load average
  - step time with the precomputed reference / with the live reference (goal <= 0.8)
  - collation time per batch: a batch of visual pairs (own rejected images) / a batch of text pairs of
    the same shape (goal <= 1.02), and ours / upstream's for text pairs
  - peak memory of a LoRA trainer step and of a full fine-tuning step (with TRL's reference copy), each
    against "one model": the same model doing the same forward and backward on the same batch, without
    the trainer (goal for LoRA <= 1.1); also as multiples of the weights alone. Each is measured in its own
    process (see `peak_memory`)

    .venv/bin/python bench/train_step.py [--steps 30] [--no-memory]

On a GPU, one command runs a 7B-shaped LLaVA-1.5 (random weights, bf16, LoRA on the seven
projections, activation checkpointing, live reference): step time, MFU and peak memory against
its weights and against one model doing the same forward and backward:

    .venv/bin/python bench/train_step.py --llava-7b [--pairs 4] [--peak-tflops 989]

(`--llava-7b --shape tiny` runs the same code on a CPU-sized model, to check it.)
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import re
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
from mmedpo.training.dpo import WeightedDPOTrainer  # noqa: E402
from mmedpo.training.dpo_config import WeightedDPOConfig  # noqa: E402
from mmedpo.training.lora import lora_config  # noqa: E402
from mmedpo.training.pairs import PAIR_BATCH_KEYS, pairs_to_dataset  # noqa: E402
from mmedpo.training.settings import DPOSettings  # noqa: E402

BATCH = 8
VISUAL = {"kind": "visual", "rejected_image": "noised.png"}  # the same pairs as visual ones, with their own x_l
MODEL = dict(image_size=64, text_hidden=256, layers=4, heads=4, vision_hidden=128)
# Bigger for memory, so that weights, not the Python runtime, dominate the peak (about 90M parameters).
MEMORY_MODEL = dict(image_size=64, text_hidden=1024, layers=8, heads=8, vision_hidden=128)
# With glibc's default thresholds freed blocks stay in the process, so a peak RSS would also count memory the
# allocator kept from earlier work; allocations from 64 KiB up are then mmap-ed and returned when freed.
MEASURE_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def pairs_for(work: Path, image_size: int = 64) -> list[PreferencePair]:
    image = Image.new("RGB", (image_size, image_size), (20, 20, 20))
    s = image_size / 64
    ImageDraw.Draw(image).ellipse((8 * s, 20 * s, 28 * s, 40 * s), fill=(240, 240, 240))
    image.save(work / "img.png")
    Image.new("RGB", (image_size, image_size), (200, 20, 20)).save(work / "noised.png")
    return [
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


def build(work: Path, sizes: dict = MODEL, name: str = "model") -> tuple[Path, list]:
    model_dir = work / name
    if not model_dir.exists():
        build_tiny_llava(CORPUS, model_dir, seed=0, **sizes)
    return model_dir, pairs_for(work)


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


def collate_seconds(collators: list[tuple], rounds: int = 30) -> list[list[float]]:
    """Wall times of each (collator, rows) turning the same rows into a batch, in turns (rows copied afresh each
    time: TRL's collator rewrites the messages in place)."""
    times = [[] for _ in collators]
    for _ in range(rounds):
        for (collate, rows), spent in zip(collators, times):
            fresh = copy.deepcopy(rows)
            start = time.perf_counter()
            collate(fresh)
            spent.append(time.perf_counter() - start)
    return times


def summary(spent: list[float]) -> str:
    q1, median, q3 = statistics.quantiles(spent, n=4)
    return f"{median * 1e3:7.1f} ms (IQR {q1 * 1e3:.1f}-{q3 * 1e3:.1f}, min {min(spent) * 1e3:.1f})"


# --- memory ------------------------------------------------------------------------------------------------------


def _kib(field: str) -> float:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def peak_memory(mode: str, work: Path) -> tuple[float, float]:
    """(MiB of the policy's weights, MiB of the peak above the process's memory after imports), in this process.

    `lora` and `full`: one step of the trainer (collate, loss with TRL's reference copy for `full` or the
    adapter-disabled policy for `lora`, backward, AdamW step). `lora-model` and `full-model`: "one model", the
    same (PEFT-wrapped) model doing the same forward and backward of the policy on the same batch, no trainer.
    The weights are made resident first (they are mmap-ed from the file and paged in on use), then the peak is
    reset (/proc/self/clear_refs), so the figure is the step's own high-water mark.
    """
    model_dir, pairs = build(work, MEMORY_MODEL, "memory_model")
    dataset = pairs_to_dataset(pairs, [work])
    rows = list(dataset)
    imported = _kib("VmRSS")
    model = AutoModelForImageTextToText.from_pretrained(model_dir, local_files_only=True)
    peft = lora_config(model, DPOSettings(use_peft=True, lora_r=16)) if mode.startswith("lora") else None
    trainer = WeightedDPOTrainer(
        model=model, args=config(WeightedDPOConfig, work, mode), train_dataset=dataset, peft_config=peft
    )
    if mode in ("lora", "full"):
        trainer.create_optimizer()
    else:
        trainer.ref_model = None  # one model: TRL's reference copy (full fine-tuning) is not part of it
        gc.collect()
    weights = sum(t.numel() * t.element_size() for t in [*trainer.model.parameters(), *trainer.model.buffers()])
    with torch.no_grad():
        for module in (trainer.model, trainer.ref_model):
            for tensor in [*module.parameters(), *module.buffers()] if module is not None else []:
                tensor.sum()  # page the mmap-ed weights in
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    batch = trainer.data_collator(rows)
    if mode in ("lora", "full"):
        trainer.compute_loss(trainer.model, batch).backward()
        trainer.optimizer.step()
    else:
        inputs = {k: v for k, v in batch.items() if k not in PAIR_BATCH_KEYS and k != "completion_mask"}
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        trainer.model(**inputs, labels=labels, fused_lm_head=True).log_probs.sum().backward()
    return weights / 2**20, _kib("VmHWM") - imported


def memory_report(work: Path) -> None:
    build(work, MEMORY_MODEL, "memory_model")
    measured = {}
    for mode in ("lora-model", "lora", "full-model", "full"):
        out = subprocess.run(
            [sys.executable, __file__, "--memory", mode, "--work", str(work)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, **MEASURE_ENV},
        )
        measured[mode] = [float(x) for x in out.stdout.strip().splitlines()[-1].split()]
    weights = measured["lora-model"][0]
    print(f"peak memory of one step (model {MEMORY_MODEL}, batch {BATCH} pairs, fp32, CPU; weights {weights:.0f} MiB)")
    for trainer, model, name in (("lora", "lora-model", "LoRA trainer"), ("full", "full-model", "full FT + ref copy")):
        peak, one = measured[trainer][1], measured[model][1]
        print(
            f"  {name:18s} {peak:6.0f} MiB | one model, same forward+backward {one:6.0f} MiB | "
            f"trainer/one model {peak / one:.2f}x | trainer/weights {peak / weights:.2f}x"
        )
    print("  (goal: LoRA trainer <= 1.1x one model)")


# --- a 7B-shaped LLaVA on a GPU ----------------------------------------------------------------------------------

SHAPES = {
    # LLaVA-1.5-7B: Llama-2-7B (Vicuna) + CLIP ViT-L/14 at 336 px, 576 image tokens (LLaVA-Med v1.5: Mistral-7B).
    "7b": dict(hidden=4096, intermediate=11008, layers=32, heads=32, vocab=32064, v_hidden=1024, v_layers=24,
               v_heads=16, v_intermediate=4096, image=336, patch=14),
    "tiny": dict(hidden=64, intermediate=128, layers=2, heads=4, vocab=1024, v_hidden=32, v_layers=2,
                 v_heads=2, v_intermediate=64, image=56, patch=14),
}  # fmt: skip


def build_llava(shape: dict, work: Path, device: str, dtype: torch.dtype):
    """A LLaVA-1.5-shaped model with random weights, built on `device`, and a processor for it."""
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from mmedpo.models.tiny import CHAT_TEMPLATE, IMAGE, train_tokenizer

    tokenizer = train_tokenizer(CORPUS)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": shape["image"]}, crop_size={"height": shape["image"], "width": shape["image"]}
        ),
        tokenizer=tokenizer,
        patch_size=shape["patch"],
        vision_feature_select_strategy="default",  # LLaVA-1.5: the patches without CLIP's class token
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE,
        num_additional_image_tokens=1,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=shape["v_hidden"],
            intermediate_size=shape["v_intermediate"],
            num_hidden_layers=shape["v_layers"],
            num_attention_heads=shape["v_heads"],
            image_size=shape["image"],
            patch_size=shape["patch"],
        ),
        text_config=LlamaConfig(
            vocab_size=shape["vocab"],
            hidden_size=shape["hidden"],
            intermediate_size=shape["intermediate"],
            num_hidden_layers=shape["layers"],
            num_attention_heads=shape["heads"],
            num_key_value_heads=shape["heads"],
            max_position_embeddings=4096,
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=(shape["image"] // shape["patch"]) ** 2,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    return model, processor


def llava_7b(shape_name: str, pairs: int, steps: int, peak_tflops: float) -> None:
    from trl.trainer.utils import compute_flops_per_token

    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    shape = SHAPES[shape_name]
    work = Path(tempfile.mkdtemp(prefix="bench-train-7b-"))
    model, processor = build_llava(shape, work, device, dtype)
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    rows_pairs = pairs_for(work, shape["image"])[:pairs]
    dataset = pairs_to_dataset(rows_pairs, [work])
    settings = DPOSettings(use_peft=True, lora_r=16, lora_alpha=32, activation_checkpointing=True)
    args = WeightedDPOConfig(
        output_dir=str(work / "out"),
        report_to="none",
        bf16=cuda,
        use_cpu=not cuda,
        activation_checkpointing=True,
        per_device_train_batch_size=pairs,
        learning_rate=5e-6,
    )
    trainer = WeightedDPOTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        peft_config=lora_config(model, settings),
    )
    trainer.model.train()
    trainer.model.activation_checkpointing_enable()  # as Trainer.train does, which this loop stands in for
    trainer.create_optimizer()
    batch = {k: v.to(device) for k, v in trainer.data_collator(list(dataset)).items()}
    tokens = int(batch["attention_mask"].sum())
    seq_len = batch["input_ids"].shape[1]

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def step(with_trainer: bool):
        if with_trainer:
            with trainer.compute_loss_context_manager():
                loss = trainer.compute_loss(trainer.model, batch)
            loss.backward()
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
        else:  # one model: the same forward and backward of the policy, no reference, no optimiser
            inputs = {k: v for k, v in batch.items() if k not in PAIR_BATCH_KEYS and k != "completion_mask"}
            labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
            with trainer.compute_loss_context_manager():
                log_probs = trainer.model(**inputs, labels=labels, fused_lm_head=True).log_probs
            log_probs.float().sum().backward()
            trainer.model.zero_grad(set_to_none=True)

    peaks = {}
    for with_trainer in (False, True):
        step(with_trainer)  # warm-up (and the optimiser's state)
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        step(with_trainer)
        sync()
        peaks[with_trainer] = torch.cuda.max_memory_allocated() if cuda else float("nan")
    times = []
    for _ in range(steps):
        sync()
        start = time.perf_counter()
        step(True)
        sync()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    # Model FLOPs of one DPO step with LoRA and a live reference: policy forward + backward (input gradients
    # only, the base is frozen) + reference forward = 3 forwards of the language model, as trl's training count
    # (compute_flops_per_token: 3 x forward per token); plus the vision tower's two forwards (policy, reference).
    text_flops = compute_flops_per_token(model.config.text_config, seq_len) * tokens
    vision_params = sum(p.numel() for p in model.model.vision_tower.parameters())
    images = batch["pixel_values"].shape[0]
    vision_flops = 2 * 2 * vision_params * images * (shape["image"] // shape["patch"]) ** 2
    achieved = (text_flops + vision_flops) / seconds
    print(f"7B-shaped LLaVA ({shape_name}: {shape}), {'bf16 on ' + torch.cuda.get_device_name() if cuda else 'CPU'}")
    print(f"  LoRA r16 on 7 projections, activation checkpointing, live reference; {pairs} pairs, {tokens} tokens")
    print(f"  step (loss, backward, AdamW): median {seconds * 1e3:.0f} ms of {steps}; {tokens / seconds:.0f} tokens/s")
    if cuda:
        print(f"  MFU {achieved / (peak_tflops * 1e12):.3f} ({achieved / 1e12:.1f} TFLOP/s of {peak_tflops:.0f})")
        print(
            f"  peak memory: trainer {peaks[True] / 2**30:.2f} GiB | weights {weights / 2**30:.2f} GiB "
            f"({peaks[True] / weights:.2f}x) | one model, same forward+backward {peaks[False] / 2**30:.2f} GiB "
            f"(trainer/one model {peaks[True] / peaks[False]:.2f}x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--no-memory", action="store_true", help="skip the (slow) memory measurements")
    parser.add_argument("--llava-7b", action="store_true", help="a 7B-shaped LLaVA (GPU)")
    parser.add_argument("--shape", default="7b", choices=sorted(SHAPES))
    parser.add_argument("--pairs", type=int, default=4, help="--llava-7b: pairs per batch")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak (H100/H200)")
    parser.add_argument("--memory", help=argparse.SUPPRESS)  # internal: measure one mode in this process
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.llava_7b:
        llava_7b(args.shape, args.pairs, min(args.steps, 10), args.peak_tflops)
        return
    torch.set_num_threads(1)  # a fair, quiet comparison on a shared machine
    if args.memory:
        print(*peak_memory(args.memory, Path(args.work)))
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
    c_theirs, c_text, c_visual = collate_seconds(
        [(theirs.data_collator, upstream_rows), (ours.data_collator, rows), (ours.data_collator, visual_rows)]
    )
    visual_paired = statistics.median(v / t for v, t in zip(c_visual, c_text))
    print(
        f"collate (per batch of {BATCH}): upstream {statistics.median(c_theirs) * 1e3:.1f} ms | ours, text pairs "
        f"{statistics.median(c_text) * 1e3:.1f} ms | ours, visual pairs {statistics.median(c_visual) * 1e3:.1f} ms"
    )
    print(
        f"visual/text batch: median of paired ratios {visual_paired:.3f} (goal <= 1.02) | ours/upstream, text "
        f"{statistics.median(t / u for t, u in zip(c_text, c_theirs)):.3f}"
    )
    if not args.no_memory:
        memory_report(work)


if __name__ == "__main__":
    main()
