"""The `mmedpo` command line: one command per stage, and `run` for all of them.

Every command is a thin layer over a library function; the stage commands take
`--config FILE` (default: the packaged demo config, the same in any folder) and
`-o section.key=value` overrides, which win over the file. `mmedpo config` prints
every setting with its help. Also `python -m mmedpo` (or `python -m mmedpo.cli`).
"""

from __future__ import annotations

import json
from functools import wraps
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from mmedpo import __version__
from mmedpo.config import load_config
from mmedpo.configs import DEMO
from mmedpo.errors import StageIncomplete
from mmedpo.layout import RunLayout
from mmedpo.pipeline import StageResult, run_pipeline
from mmedpo.progress import quiet_output_off_terminal

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
curate_app = typer.Typer(help="Make preference pairs from samples.", no_args_is_help=True)
app.add_typer(curate_app, name="curate")
console = Console(stderr=True)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config (default: the packaged demo, configs/demo.yaml)")
]
OverrideOption = Annotated[
    list[str] | None, typer.Option("--override", "-o", help="section.key=value, wins over the file")
]
ForceOption = Annotated[bool, typer.Option("--force", help="re-run the stage even if it finished")]


def _print_version(asked: bool) -> None:
    if asked:
        from importlib.metadata import PackageNotFoundError, version

        def installed(package: str) -> str:
            try:
                return version(package)
            except PackageNotFoundError:
                return "not installed"

        print(f"mmedpo {__version__}")
        print(", ".join(f"{package} {installed(package)}" for package in ("torch", "transformers", "trl", "peft")))
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="print the versions and exit")
    ] = False,
) -> None:
    # Before any command imports tqdm or transformers: no progress bars in a log file.
    quiet_output_off_terminal()


def friendly_errors(command):
    """Bad input ends with one clear line, not a traceback from deep inside a library."""

    @wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (ValueError, OSError, StageIncomplete) as error:
            console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def _load(config: Path | None, overrides: list[str] | None):
    return load_config(DEMO if config is None else config, overrides or [])


def _config(config: Path | None, overrides: list[str] | None):
    loaded = _load(config, overrides)
    for warning in loaded.warnings():
        console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False)
    if loaded.threads:
        import torch

        torch.set_num_threads(loaded.threads)
    return loaded


def _print_stage(result: StageResult, prefix: str = "") -> None:
    summary = {key: value for key, value in result.summary.items() if key != "notes"}
    console.print(
        f"{escape(prefix)}[bold]{result.name:<14}[/] {result.status:<8} {result.seconds:8.1f} s  "
        f"{escape(_short(summary))}"
    )
    for note in result.summary.get("notes") or []:  # what the user must know: a part skipped, a choice made
        console.print(f"{prefix}{'':<15}{note}", markup=False)


def _print_seed_stage(seed: int, result: StageResult) -> None:
    """A study's stage line; a top-level function, so that a seed's own process can call it (`--jobs`)."""
    _print_stage(result, f"seed {seed} ")


def _short(summary: dict) -> str:
    text = json.dumps(summary, default=str)
    return text if len(text) < 160 else text[:157] + "..."


def _run_stages(config, overrides, stages: list[str], force: bool) -> list[StageResult]:
    return run_pipeline(_config(config, overrides), only=stages, force=force, on_stage=_print_stage)


@app.command()
@friendly_errors
def run(
    config: ConfigOption = None,
    override: OverrideOption = None,
    force: ForceOption = False,
    only: Annotated[
        list[str] | None,
        typer.Option(help="run only this stage (repeatable; 'train' names every train:VARIANT), after what it reads"),
    ] = None,
) -> None:
    """Run every stage of the config (default: the SynthMed demo), skipping finished ones."""
    cfg = _config(config, override)
    results = run_pipeline(cfg, only=only, force=force, on_stage=_print_stage)
    if not only:
        print_results(RunLayout.of(cfg), results)


@app.command()
@friendly_errors
def study(
    config: ConfigOption = None,
    override: OverrideOption = None,
    seeds: Annotated[str, typer.Option(help="seeds to repeat the run over, e.g. 0,1,2 or 0-4")] = "0,1,2",
    readme: Annotated[Path | None, typer.Option(help="also write the results into this README's study block")] = None,
    jobs: Annotated[int, typer.Option(help="seeds run side by side, each in a process of its own")] = 1,
) -> None:
    """Repeat the run over seeds; write what holds across them (RUNS_DIR/NAME/results.md and report/)."""
    from mmedpo.pipeline.study import parse_seeds, run_study
    from mmedpo.report.study import write_readme_block

    cfg = _config(config, override)
    study_dir = run_study(cfg, parse_seeds(seeds), on_stage=_print_seed_stage, jobs=jobs)
    console.print((study_dir / "results.md").read_text(encoding="utf-8"), markup=False, highlight=False)
    if readme is not None:
        words = ["mmedpo study", *(["--config", str(config)] if config else []), f"--seeds {seeds}"]
        write_readme_block(readme, study_dir, " ".join(words + [f"-o {o}" for o in override or []]))
        console.print(f"wrote the results into {readme}")


@app.command()
@friendly_errors
def tune(
    plan: Annotated[Path, typer.Argument(help="a tuning file: run config, variants, validation metric, grid")],
    override: OverrideOption = None,
    out: Annotated[Path, typer.Option(help="where the table of what was tried goes")] = Path("docs/tuning.md"),
) -> None:
    """Choose training settings on the validation split: train the grid, write every point's scores and the best."""
    from mmedpo.pipeline.tune import read_plan, run_tuning, tuning_markdown

    tuning = read_plan(plan, override or [])
    result = run_tuning(tuning, on_stage=_print_stage)
    words = ["mmedpo tune", str(plan), *(f"-o {o}" for o in override or [])]
    out.write_text(tuning_markdown(tuning, result, " ".join(words)), encoding="utf-8")
    console.print(f"chosen on the validation split: {result['best']['settings']} (table in {out})")


ShardOption = Annotated[
    str | None, typer.Option(help="i/n: run only the i-th of n shards, e.g. one per machine (then --merge n)")
]
MergeOption = Annotated[
    int | None, typer.Option("--merge", help="n: join the n finished shards; `mmedpo run` then goes on from there")
]


def _run_stage(config, override, stage: str, force: bool, shard: str | None, merge: int | None) -> None:
    """Run one stage (after what it reads), or one shard of it, or merge its shards."""
    from mmedpo.pipeline import merge_shards, run_shard
    from mmedpo.shards import parse_shard

    if shard is not None and merge is not None:
        raise ValueError("--shard runs one shard, --merge joins them: give one of the two")
    if shard is not None:
        summary = run_shard(_config(config, override), stage, parse_shard(shard))
        console.print(f"{stage} shard {shard}: {_short(summary)}")
    elif merge is not None:
        summary = merge_shards(_config(config, override), stage, merge)
        console.print(f"{stage}: merged {merge} shards: {_short(summary)}")
    else:
        _run_stages(config, override, [stage], force)


@curate_app.command("text")
@friendly_errors
def curate_text(
    config: ConfigOption = None,
    override: OverrideOption = None,
    force: ForceOption = False,
    shard: ShardOption = None,
    merge: MergeOption = None,
) -> None:
    """Textual pairs: ground truth over model samples, chat-endpoint and clinical perturbations."""
    _run_stage(config, override, "curate_text", force, shard, merge)


@curate_app.command("visual")
@friendly_errors
def curate_visual(
    config: ConfigOption = None,
    override: OverrideOption = None,
    force: ForceOption = False,
    preview: Annotated[int | None, typer.Option(help="write panel PNGs for N images into RUN/preview")] = None,
    shard: ShardOption = None,
    merge: MergeOption = None,
) -> None:
    """Visual pairs: the model's answer on the lesion-noised image is rejected."""
    extra = [f"curate_visual.preview={preview}"] if preview is not None else []
    _run_stage(config, [*(override or []), *extra], "curate_visual", force, shard, merge)


@app.command()
@friendly_errors
def regions(
    config: ConfigOption = None,
    override: OverrideOption = None,
    force: ForceOption = False,
    shard: ShardOption = None,
    merge: MergeOption = None,
) -> None:
    """Visual dependence's region of every test image, found once for every evaluation (with --shard, a part)."""
    _run_stage(config, override, "regions", force, shard, merge)


@app.command()
@friendly_errors
def score(
    config: ConfigOption = None,
    override: OverrideOption = None,
    force: ForceOption = False,
    export_json: Annotated[
        Path | None,
        typer.Option(help="also write the scored pairs as MMedPO JSON (weighted_score: each pair's clinical score)"),
    ] = None,
    shard: ShardOption = None,
    merge: MergeOption = None,
) -> None:
    """Clinical relevance weights for every pair (judge panel, localizer confidence, normalisation)."""
    _run_stage(config, override, "score", force, shard, merge)
    if export_json is not None and shard is None:
        from mmedpo.data.convert import convert_pairs

        scored = RunLayout.of(_config(config, override)).scored_pairs
        summary = convert_pairs(scored, export_json, to="mmedpo")
        console.print(f"wrote {summary['accepted']} pairs to {export_json}")


@app.command()
@friendly_errors
def train(config: ConfigOption = None, override: OverrideOption = None, force: ForceOption = False) -> None:
    """Weighted multimodal DPO on the scored pairs."""
    _run_stages(config, override, ["train"], force)


@app.command("merge-lora")
@friendly_errors
def merge_lora(
    base_dir: Annotated[Path, typer.Argument(help="the base model the adapter was trained on")],
    adapter_dir: Annotated[Path, typer.Argument(help="the LoRA adapter (e.g. runs/NAME/models/VARIANT/adapter)")],
    out_dir: Annotated[Path, typer.Argument(help="where the merged model and processor go")],
) -> None:
    """Merge a LoRA adapter into its base model, saved as a plain HF checkpoint."""
    from mmedpo.training.lora import merge_adapter

    console.print(f"merged: {merge_adapter(base_dir, adapter_dir, out_dir)}")


@app.command("eval")
@friendly_errors
def evaluate(
    config: ConfigOption = None,
    override: OverrideOption = None,
    force: ForceOption = False,
    variant: Annotated[
        str | None, typer.Option(help="evaluate only this variant (or base); needed with --shard and --merge")
    ] = None,
    shard: ShardOption = None,
    merge: MergeOption = None,
) -> None:
    """Evaluate the base and the trained models on the test split."""
    if variant is None and (shard is not None or merge is not None):
        raise ValueError("--shard and --merge evaluate one model: name it with --variant (base, or a variant)")
    _run_stage(config, override, "eval" if variant is None else f"eval:{variant}", force, shard, merge)


@app.command()
@friendly_errors
def report(run_dir: Annotated[Path, typer.Argument(help="a run folder, e.g. runs/demo")]) -> None:
    """Write RUN/report/index.html."""
    from mmedpo.report.html import write_report

    console.print(f"report: {write_report(run_dir)}")


@app.command("config")
@friendly_errors
def show_config(config: ConfigOption = None, override: OverrideOption = None) -> None:
    """Print the resolved config as YAML: every setting, its help, and its default where the value differs."""
    from mmedpo.config_help import annotated_yaml

    print(f"# {DEMO if config is None else config}" + "".join(f" -o {o}" for o in override or []))
    print(annotated_yaml(_load(config, override)), end="")


@app.command()
@friendly_errors
def compare(
    inputs: Annotated[list[Path], typer.Argument(help="run folders or eval JSON files")],
    baseline: Annotated[str, typer.Option(help="variant the others are compared with")] = "base",
    format: Annotated[str, typer.Option("--format", help="md | json | csv")] = "md",
    plot: Annotated[Path | None, typer.Option(help="write metric plots (PNG) into this folder")] = None,
    seed: Annotated[int, typer.Option(help="seed of the bootstrap and randomisation tests")] = 0,
    resamples: Annotated[int, typer.Option(help="bootstrap resamples")] = 1000,
    permutations: Annotated[int, typer.Option(help="approximate-randomisation shuffles")] = 10000,
    output: Annotated[Path | None, typer.Option("--output", help="write the table to this file")] = None,
) -> None:
    """Variants side by side: relative improvements, paired bootstrap intervals and p-values."""
    from mmedpo.evaluation.compare import compare_results, render
    from mmedpo.evaluation.plots import plot_comparison
    from mmedpo.report.html import collect_results

    results = collect_results(inputs)
    comparison = compare_results(results, baseline, seed=seed, n_resamples=resamples, n_permutations=permutations)
    text = render(comparison, format)
    if output:
        output.write_text(text, encoding="utf-8")
    else:
        print(text, end="")
    if plot:
        for path in plot_comparison(comparison, plot):
            console.print(f"plot: {path}")


@app.command()
@friendly_errors
def convert(
    source: Annotated[Path, typer.Argument(help="pairs: .jsonl, MMedPO .json, .parquet, .trl.parquet, HF folder")],
    target: Annotated[
        Path,
        typer.Argument(
            help="output: .jsonl, .json (MMedPO), .parquet, .hf (or no suffix), .trl, .trl.parquet, "
            ".ms-swift, .llama-factory; another suffix needs --to"
        ),
    ],
    to: Annotated[
        str | None,
        typer.Option(help="jsonl | mmedpo | parquet | hf | trl | trl-parquet | ms-swift | llama-factory"),
    ] = None,
    image_root: Annotated[
        list[Path] | None,
        typer.Option(help="image folder(s): check every image decodes; TRL, ms-swift, LLaMA-Factory need them"),
    ] = None,
) -> None:
    """Convert preference pairs between our JSONL, the MMedPO JSON, HF datasets, TRL, ms-swift and LLaMA-Factory."""
    import warnings

    from mmedpo.data.convert import ExportWarning, convert_pairs

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ExportWarning)
        summary = convert_pairs(source, target, to, image_root or ())
    identical = f"; {summary['identical']} with the same answer twice" if summary["identical"] else ""
    console.print(
        f"read {summary['read']} = accepted {summary['accepted']} + rejected {summary['rejected']}"
        + (f" (reasons in {summary['rejects']}{identical})" if summary["rejected"] else ""),
        soft_wrap=True,
    )
    for warning in caught:
        if issubclass(warning.category, ExportWarning):
            console.print(f"[bold yellow]warning:[/] {escape(str(warning.message))}", highlight=False, soft_wrap=True)
        else:  # not ours: shown as Python would have
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)


def print_results(layout: RunLayout, results: list[StageResult]) -> None:
    """The base vs trained table, whether each chain holds, then the wall time of each stage."""
    from mmedpo.report.terminal import chain_reports, results_table, timings_table

    table = results_table(layout)
    if table is not None:
        Console().print(table)
    for question, lines in chain_reports(layout):
        console.print(f"[bold]{escape(question)}[/]")
        for line in lines:
            console.print(Text("  ") + line, highlight=False)
    Console().print(timings_table(results))


if __name__ == "__main__":  # python -m mmedpo.cli
    app()
