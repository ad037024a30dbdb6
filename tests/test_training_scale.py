"""The scale paths of weighted DPO, run for real on CPU: activation checkpointing, bf16 autocast,
2-process data parallel (`accelerate launch`, gloo) and DeepSpeed ZeRO-2/3 on CPU.

The multi-process tests launch this file as their worker script (see `worker` at the bottom).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, TrainerCallback

from mmedpo.training.dpo import WeightedDPOTrainer, train_weighted_dpo
from mmedpo.training.dpo_config import to_trl_config
from mmedpo.training.lora import lora_config
from mmedpo.training.pairs import pairs_to_dataset
from mmedpo.training.settings import DPOSettings
from test_training import make_pair, perturb

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIGS = ROOT / "configs" / "accelerate"


@pytest.fixture
def image_root(tmp_path, tiny_images):
    for name, image in zip(["dark", "bright", "left", "right"], tiny_images):
        image.save(tmp_path / f"{name}.png")
    return tmp_path


class GradientsBeforeStep(TrainerCallback):
    """Keeps a copy of every gradient as the optimiser is about to step (after accumulation and clipping)."""

    grads: dict[str, torch.Tensor] | None = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def one_step(model_dir, image_root, out_dir, lora: bool, checkpointing_kwargs=None, **settings):
    """Loss and gradients of one real `Trainer.train()` step (config from `DPOSettings`, as the pipeline builds it).

    The policy is moved off the reference (the base weights, and under LoRA the adapter too) so the DPO
    log-ratios, the loss and every gradient are far from their trivial values at initialisation.
    Returns (logged loss, gradients, the trainer, how many attention forwards ran).
    """
    pairs = [make_pair(0, weight=0.5), make_pair(1, weight=2.0, rejected_image="right.png")]
    dataset = pairs_to_dataset(pairs, [image_root])
    model = AutoModelForImageTextToText.from_pretrained(model_dir, local_files_only=True)
    perturb(model)
    dpo = DPOSettings(
        per_device_train_batch_size=2,
        max_steps=1,
        logging_steps=1,
        use_peft=lora,
        lora_r=4,
        train_projector=lora,
        **settings,
    )
    grab = GradientsBeforeStep()
    args = to_trl_config(dpo, out_dir)
    args.activation_checkpointing_kwargs = checkpointing_kwargs
    trainer = WeightedDPOTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        peft_config=lora_config(model, dpo) if lora else None,
        callbacks=[grab],
    )
    if lora:
        perturb(trainer.model, seed=1, scale=0.1)  # all weights, the adapters' included (B starts at 0)
    base = trainer.model.get_base_model() if lora else trainer.model
    attention_calls = []
    for name, module in base.named_modules():
        if name.endswith("language_model.layers.0.self_attn"):
            module.register_forward_hook(lambda *_: attention_calls.append(1))
    trainer.train()
    return trainer.state.log_history[0]["loss"], grab.grads, trainer, len(attention_calls)


@pytest.mark.parametrize(
    "lora,kwargs",
    [(False, None), (True, None), (True, {"use_reentrant": True})],
    ids=["full", "lora", "lora-reentrant"],
)
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_vlm_dir, image_root, tmp_path, lora, kwargs):
    # Reentrant checkpointing (forced by TRL for PEFT under ZeRO-3) needs inputs that require grad: TRL's
    # enable_input_require_grads for PEFT + checkpointing provides them.
    loss, grads, _, calls = one_step(tiny_vlm_dir, image_root, tmp_path / "plain", lora)
    loss_ckpt, grads_ckpt, trainer, calls_ckpt = one_step(
        tiny_vlm_dir, image_root, tmp_path / "ckpt", lora, kwargs, activation_checkpointing=True
    )
    base = trainer.model.get_base_model() if lora else trainer.model
    assert base.is_activation_checkpointing
    # The checkpointed layer really recomputes its forward in the backward pass: one more attention forward.
    assert calls_ckpt == calls + 1
    assert abs(loss - 0.8664) > 1e-2  # not the trivial 1.25 * log 2 of a policy equal to its reference
    assert loss_ckpt == pytest.approx(loss, abs=1e-6)
    assert grads_ckpt.keys() == grads.keys() and len(grads) > 0
    assert max(g.abs().max() for g in grads.values()) > 1e-2
    if lora:
        assert all("lora_" in name or "modules_to_save" in name for name in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, atol=1e-5, rtol=0, msg=name)


def test_bf16_autocast_on_cpu_is_close_to_fp32(tiny_vlm_dir, image_root, tmp_path):
    loss, grads, _, _ = one_step(tiny_vlm_dir, image_root, tmp_path / "fp32", lora=True)
    dtypes = []

    def record_dtype(module, args, output):
        dtypes.append(output.dtype)

    loss_bf16, grads_bf16, trainer, _ = one_step(tiny_vlm_dir, image_root, tmp_path / "bf16", lora=True, bf16=True)
    assert trainer.accelerator.mixed_precision == "bf16" and trainer.args.use_cpu
    # Under autocast a linear layer's output is bf16 (the weights stay fp32): measure it on one forward.
    layer = next(m for n, m in trainer.model.named_modules() if n.endswith("layers.0.mlp.down_proj.base_layer"))
    layer.register_forward_hook(record_dtype)
    trainer.compute_loss(trainer.model, trainer.data_collator(list(trainer.train_dataset)))
    assert dtypes and all(dtype == torch.bfloat16 for dtype in dtypes)

    assert torch.isfinite(torch.tensor(loss_bf16))
    assert loss_bf16 != loss  # bf16 really changed the arithmetic
    assert loss_bf16 == pytest.approx(loss, abs=2e-2)
    flat = torch.cat([grads[name].flatten() for name in sorted(grads)])
    flat_bf16 = torch.cat([grads_bf16[name].flatten() for name in sorted(grads)])
    assert flat_bf16.dtype == torch.float32  # master weights and gradients stay fp32
    # bf16 keeps ~3 significant digits: the direction of the whole gradient agrees (0.977 measured), not each entry.
    assert torch.nn.functional.cosine_similarity(flat, flat_bf16, dim=0) > 0.95


def test_qlora_loads_4bit_nf4_and_trains(tiny_vlm_dir, image_root, tmp_path):
    bnb = pytest.importorskip("bitsandbytes")
    seen = {}

    class Inspect(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            modules = dict(model.get_base_model().named_modules())
            seen["4bit"] = sorted(n for n, m in modules.items() if isinstance(m, bnb.nn.Linear4bit))
            seen["quant_type"] = {m.weight.quant_type for m in modules.values() if isinstance(m, bnb.nn.Linear4bit)}
            seen["trainable"] = [n for n, p in model.named_parameters() if p.requires_grad]

    pairs = [make_pair(i, weight=0.5 + i, rejected_image="right.png" if i % 2 else None) for i in range(4)]
    settings = DPOSettings(
        use_peft=True,
        load_in_4bit=True,
        lora_r=4,
        train_projector=True,
        per_device_train_batch_size=2,
        learning_rate=5e-2,
        logging_steps=1,
    )
    out = train_weighted_dpo(tiny_vlm_dir, pairs, [image_root], tmp_path / "q", settings, [Inspect()])

    # Every adapted projection of the language model is 4-bit NF4; the image side and the LM head are not.
    assert seen["4bit"] and all("language_model" in name for name in seen["4bit"])
    assert len(seen["4bit"]) == 7 * 2 and seen["quant_type"] == {"nf4"}  # 7 projections x 2 layers
    assert all("lora_" in n or "multi_modal_projector.modules_to_save" in n for n in seen["trainable"])
    log = [entry for entry in json.loads((out / "train_log.json").read_text())["log_history"] if "loss" in entry]
    assert len(log) == 2 and all(torch.isfinite(torch.tensor(entry["loss"])) for entry in log)
    assert log[0]["loss"] == pytest.approx(1.0 * torch.log(torch.tensor(2.0)).item(), abs=1e-3)  # adapter B = 0
    assert log[1]["rewards/margins"] != 0.0  # the adapter moved the policy off the reference
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    assert any("lora_B" in key and value.abs().max() > 0 for key, value in adapter.items())
    assert (out / "model.safetensors").exists()  # merged onto the full-precision base


# --- several processes: this file is also the worker script that `accelerate launch` starts ---------------------

PAIRS = 8  # 2 optimiser steps of a global batch of 4 pairs: 4 on one process, or 2 on each of 2


def scale_pairs():
    return [make_pair(i, weight=0.25 + 0.25 * i, rejected_image="right.png" if i % 2 else None) for i in range(PAIRS)]


def scale_settings(**changes) -> dict:
    return {"per_device_train_batch_size": 4, "learning_rate": 1e-2, "logging_steps": 1, "seed": 0, **changes}


def losses(out_dir: Path) -> list[float]:
    return [
        entry["loss"]
        for entry in json.loads((out_dir / "train_log.json").read_text())["log_history"]
        if "loss" in entry
    ]


@pytest.fixture(scope="module")
def one_process_run(tiny_vlm_dir, tmp_path_factory):
    """The reference: the same pairs trained in this process, one process, the same global batch of 4."""
    root = tmp_path_factory.mktemp("scale")
    for name, x in (("left", 4), ("right", 28)):
        image = Image.new("RGB", (48, 48), (20, 20, 20))
        ImageDraw.Draw(image).ellipse((x, 16, x + 16, 32), fill=(240, 240, 240))
        image.save(root / f"{name}.png")
    out = train_weighted_dpo(tiny_vlm_dir, scale_pairs(), [root], root / "one", DPOSettings(**scale_settings()))
    return root, out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(work: Path, model_dir, image_root, settings: dict, *launch_args, timeout=240, env=None) -> list[dict]:
    """`accelerate launch --num_processes 2 <launch_args> <this file>`: train into `work/out`.

    Returns what each rank saw (rank, world size, distributed type, ZeRO stage, optimiser class, files written).
    """
    work.mkdir(parents=True, exist_ok=True)
    spec = work / "spec.json"
    spec.write_text(
        json.dumps({"model": str(model_dir), "images": str(image_root), "out": str(work / "out"), **settings})
    )
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2"]
    command += ["--main_process_port", str(free_port()), *launch_args, __file__, str(spec)]
    # The workers import this checkout's sources (as the test process does), and this file's helpers.
    paths = os.pathsep.join([str(ROOT / "src"), str(Path(__file__).parent)])
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": paths, **(env or {})}
    # Its own process group, so a hung launch is killed with every worker it started.
    process = subprocess.Popen(
        command, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"accelerate launch did not finish in {timeout} s:\n{output[-6000:]}")
    assert process.returncode == 0, output[-8000:]
    return [json.loads((work / f"writes-rank{rank}.json").read_text()) for rank in (0, 1)]


def assert_same_training(one_process_run, work: Path, ranks: list[dict], distributed_type: str):
    root, one = one_process_run
    assert [(r["rank"], r["world_size"], r["distributed_type"]) for r in ranks] == [
        (0, 2, distributed_type),
        (1, 2, distributed_type),
    ]
    out = work / "out"
    # Rank 0 alone writes the model, the processor and the log; rank 1 writes nothing there.
    assert ranks[1]["writes"] == []
    assert {Path(p).name for p in ranks[0]["writes"]} >= {"model.safetensors", "config.json", "train_log.json"}
    # The same two optimiser steps as one process with the same global batch.
    expected = losses(one)
    assert len(expected) == 2 and losses(out) == pytest.approx(expected, abs=1e-5)
    after_one = load_file(one / "model.safetensors")
    after_two = load_file(out / "model.safetensors")
    assert after_two.keys() == after_one.keys()
    for key, value in after_one.items():
        # Adam's first steps divide by the gradient's size, so 1e-7 differences in tiny gradients show as ~1e-4.
        torch.testing.assert_close(after_two[key].float(), value, atol=1e-3, rtol=0, msg=key)


@pytest.mark.slow
def test_two_processes_data_parallel_match_one_process(tiny_vlm_dir, one_process_run, tmp_path):
    # The shipped multi-GPU file, on CPU: torchrun starts 2 processes, which join with gloo (MULTI_CPU).
    ranks = launch_shipped(tmp_path, tiny_vlm_dir, one_process_run[0], "ddp")
    assert_same_training(one_process_run, tmp_path, ranks, "MULTI_CPU")


def launch_shipped(tmp_path, tiny_vlm_dir, root, config: str, **kwargs) -> list[dict]:
    """Two ranks launched with the shipped accelerate file `config` (fp32, as the 1-process run)."""
    return launch(
        tmp_path,
        tiny_vlm_dir,
        root,
        scale_settings(per_device_train_batch_size=2),
        "--config_file",
        str(ACCELERATE_CONFIGS / f"{config}.yaml"),
        "--mixed_precision",
        "no",
        **kwargs,
    )


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_on_cpu_matches_one_process(tiny_vlm_dir, one_process_run, tmp_path, stage):
    pytest.importorskip("deepspeed")
    # DeepSpeed's CPU backend JIT-compiles a small C++ op (shared-memory comm) on its first use on a machine
    # (~2 min on 2 cores, cached in ~/.cache/torch_extensions): hence the long timeout.
    ranks = launch_shipped(
        tmp_path, tiny_vlm_dir, one_process_run[0], f"zero{stage}", timeout=600, env={"DS_ACCELERATOR": "cpu"}
    )
    assert_same_training(one_process_run, tmp_path, ranks, "DEEPSPEED")
    assert [r["zero_stage"] for r in ranks] == [stage, stage]
    # The model is loaded whole on each process, then partitioned by DeepSpeed (see train_weighted_dpo).
    assert [r["loaded_sharded"] for r in ranks] == [False, False]
    optimizer = {2: "DeepSpeedZeroOptimizer", 3: "DeepSpeedZeroOptimizer_Stage3"}[stage]
    assert [r["optimizer"] for r in ranks] == [optimizer, optimizer]


def worker(spec_path: str) -> None:
    """One rank: train through the public entry, and record every file this process wrote under the output folder."""
    import builtins
    import io

    import safetensors.torch
    import transformers.modeling_utils

    from mmedpo.training import dpo

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(1)
    out_dir = Path(spec.pop("out"))
    writes = []

    def noting(function, path_arg=0):
        def wrapper(*args, **kwargs):
            path = args[path_arg] if len(args) > path_arg else kwargs.get("filename") or kwargs.get("file")
            mode = args[1] if function is builtins.open and len(args) > 1 else kwargs.get("mode", "w")
            if isinstance(path, (str, os.PathLike)) and any(c in str(mode) for c in "wax+"):
                writes.append(str(Path(path).resolve()))
            return function(*args, **kwargs)

        return wrapper

    builtins.open = io.open = noting(builtins.open)
    safetensors.torch.save_file = noting(safetensors.torch.save_file, 1)
    transformers.modeling_utils.safe_save_file = noting(transformers.modeling_utils.safe_save_file, 1)
    torch.save = noting(torch.save, 1)
    seen = {}

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            from accelerate.state import AcceleratorState

            plugin = AcceleratorState().deepspeed_plugin
            seen.update(
                rank=args.process_index,
                world_size=args.world_size,
                distributed_type=str(AcceleratorState().distributed_type).split(".")[-1],
                zero_stage=plugin.zero_stage if plugin else None,
                optimizer=type(getattr(optimizer, "optimizer", optimizer)).__name__,
            )

    load_policy = dpo.load_policy

    def load_and_note(*args, **kwargs):
        # Under ZeRO-3, zero.Init creates each parameter already partitioned (a `ds_id`, and empty locally).
        model = load_policy(*args, **kwargs)
        seen["loaded_sharded"] = all(hasattr(p, "ds_id") and p.numel() == 0 for p in model.parameters())
        return model

    dpo.load_policy = load_and_note
    model, images = spec.pop("model"), spec.pop("images")
    train_weighted_dpo(Path(model), scale_pairs(), [Path(images)], out_dir, DPOSettings(**spec), [Record()])
    seen["writes"] = sorted({p for p in writes if Path(p).is_relative_to(out_dir.resolve())})
    Path(spec_path).with_name(f"writes-rank{seen['rank']}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    worker(sys.argv[1])
