"""The command line's surface: the same defaults in any folder, `config`, `--version`,
`python -m`, one meaning per name, and logs without progress-bar carriage returns."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from collections import defaultdict
from pathlib import Path

import pytest
import typer.main
import yaml
from typer.testing import CliRunner

import mmedpo
from mmedpo.cli import app
from mmedpo.config import RunConfig, load_config
from mmedpo.progress import BARS_OFF, progress_bar

REPO_DEMO = Path(__file__).parent.parent / "configs" / "demo.yaml"


def mmedpo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mmedpo", *args]


def clean_environment() -> dict[str, str]:
    """This test process's environment, with the package importable and no progress-bar switches set."""
    environ = {name: value for name, value in os.environ.items() if name not in BARS_OFF}
    environ["PYTHONPATH"] = os.pathsep.join([str(Path(mmedpo.__file__).parent.parent), environ.get("PYTHONPATH", "")])
    return environ


def test_config_prints_the_packaged_demo_in_any_folder(tmp_path):
    """Run from a folder with no configs/: the printed config is the repository's demo, and loads back."""
    result = subprocess.run(
        mmedpo_command("config"), cwd=tmp_path, env=clean_environment(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    printed = RunConfig.model_validate(yaml.safe_load(result.stdout))
    assert printed == load_config(REPO_DEMO)
    assert printed.claim == ["mmedpo", "dpo-text-visual", "dpo-text", "sft", "base"] and printed.data.n_sft == 300
    assert not (tmp_path / "runs").exists()


def test_config_shows_every_setting_with_its_help_and_default():
    result = CliRunner().invoke(app, ["config", "-o", "train.beta=0.3", "-o", "data.n_test=7"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].endswith("demo.yaml -o train.beta=0.3 -o data.n_test=7")
    config = load_config(REPO_DEMO, ["train.beta=0.3", "data.n_test=7"])
    assert RunConfig.model_validate(yaml.safe_load(result.output)) == config
    # Each setting follows its help; a changed one also names its default.
    n_test = lines.index("  n_test: 7")
    assert lines[n_test - 1] == "  # SynthMed images in the test split [default: 150]"
    beta = lines.index("  beta: 0.3")
    assert lines[beta - 1].startswith("  # DPO temperature") and "[default: 0.1]" in lines[beta - 1]
    assert "  chat:" in lines and "    model: gpt-4o" in lines  # nested sections nest
    # Every field of every section is printed.
    for section in ("data", "model", "curate_text", "curate_visual", "score", "train", "eval"):
        for name in type(getattr(config, section)).model_fields:
            assert any(line.startswith(f"  {name}:") for line in lines), f"{section}.{name}"


def test_version_and_module_entry_points():
    for module in ("mmedpo", "mmedpo.cli"):
        result = subprocess.run(
            [sys.executable, "-m", module, "--version"], env=clean_environment(), capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[0] == f"mmedpo {mmedpo.__version__}"
        assert "transformers " in result.stdout and "trl 1.16.0" in result.stdout
    # `python -m mmedpo.cli train` dispatches (here: to train's help), it does not exit silently.
    result = subprocess.run(
        [sys.executable, "-m", "mmedpo.cli", "train", "--help"], env=clean_environment(), capture_output=True, text=True
    )
    assert result.returncode == 0 and "Weighted multimodal DPO" in result.stdout


def commands(group, prefix: str = "") -> dict:
    """Every command and group under `group` (click objects, as typer builds them), by its full name."""
    found = {}
    for name, command in group.commands.items():
        found[prefix + name] = command
        if hasattr(command, "commands"):
            found.update(commands(command, f"{prefix}{name} "))
    return found


def test_one_meaning_per_short_option_and_per_command_name():
    every = commands(typer.main.get_command(app))
    long_names = defaultdict(set)
    for command in every.values():
        for param in (param for param in command.params if param.param_type_name == "option"):
            longs = [opt for opt in param.opts if opt.startswith("--")]
            for short in (opt for opt in param.opts if not opt.startswith("--")):
                long_names[short].update(longs)
    assert {short: sorted(longs) for short, longs in long_names.items()} == {
        "-c": ["--config"],
        "-o": ["--override"],
    }
    leaf_names = [path.split()[-1] for path in every]
    assert sorted(name for name in set(leaf_names) if leaf_names.count(name) > 1) == []
    assert "merge-lora" in every and "merge" not in every and "curate merge" not in every  # shards: --merge n


def test_progress_is_a_line_per_tenth_off_a_terminal(capsys):
    with progress_bar("score", 25) as advance:
        for _ in range(25):
            advance(1)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "score: 3/25" and lines[-1] == "score: 25/25" and len(lines) == 10
    assert "\r" not in "".join(lines)


def test_the_command_line_imports_no_progress_bar_library_before_its_callback():
    """tqdm and huggingface_hub read their switches when imported: the callback must come first."""
    early = "{'tqdm', 'huggingface_hub', 'transformers', 'datasets'}"
    code = f"import sys, mmedpo.cli; print(sorted({early} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], env=clean_environment(), capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr


def test_a_command_logs_without_carriage_returns_or_the_bitsandbytes_warning(tiny_vlm_dir, tmp_path):
    """`merge-lora` loads and saves a model: transformers' bars on a terminal, none in a log file."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir, local_files_only=True)
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path / "adapter")

    log = tmp_path / "stderr.log"
    with log.open("wb") as stderr:
        done = subprocess.run(
            mmedpo_command("merge-lora", str(tiny_vlm_dir), str(tmp_path / "adapter"), str(tmp_path / "merged")),
            env=clean_environment(),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            timeout=300,
        )
    written = log.read_bytes()
    assert done.returncode == 0, written.decode()
    assert (tmp_path / "merged" / "model.safetensors").exists()
    assert b"\r" not in written and b"gemm_4bit" not in written

    # The same command with stderr on a terminal does draw bars: the check above can fail.
    drawn = stderr_on_a_terminal(
        mmedpo_command("merge-lora", str(tiny_vlm_dir), str(tmp_path / "adapter"), str(tmp_path / "again"))
    )
    assert b"Loading weights: 100%" in drawn and b"\rLoading weights" in drawn


def stderr_on_a_terminal(command: list[str]) -> bytes:
    """Run `command` with stderr on a pseudo-terminal; what it wrote there."""
    leader, follower = pty.openpty()
    # A new pseudo-terminal is 0 columns wide, and tqdm draws nothing in no columns: make it 80x24.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    process = subprocess.Popen(command, env=clean_environment(), stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    written = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the command closed its end
            break
        if not chunk:
            break
        written += chunk
    os.close(leader)
    assert process.wait(timeout=300) == 0, written.decode(errors="replace")
    return written


def test_the_accelerate_launch_in_ddp_yaml_reaches_the_command_line():
    """configs/accelerate/ddp.yaml says how to launch the train stage; that form dispatches (here on one CPU)."""
    ddp = Path(__file__).parent.parent / "configs" / "accelerate" / "ddp.yaml"
    assert "-m mmedpo train --config" in ddp.read_text(encoding="utf-8")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ddp)]
    launch += ["--num_processes", "1", "--mixed_precision", "no", "-m", "mmedpo", "train", "--help"]
    result = subprocess.run(launch, env=clean_environment(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Weighted multimodal DPO" in result.stdout


@pytest.mark.parametrize(
    "words", [["regions"], ["regions", "--shard", "1/2"], ["regions", "--merge", "2"], ["run", "--only", "regions"]]
)
def test_regions_without_visual_dependence_says_why(tmp_path, words):
    """The regions stage exists only when visual dependence is measured; asking for it otherwise names the setting."""
    result = CliRunner().invoke(
        app, [*words, "-o", "eval.visual_dependence=false", "-o", f"runs_dir={tmp_path}"], terminal_width=300
    )
    assert result.exit_code == 2
    assert "eval.visual_dependence is false" in result.output and "unknown stage" not in result.output
    assert not any(tmp_path.iterdir())
