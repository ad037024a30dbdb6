"""The run configuration: validated on load, YAML in and out, command-line overrides win.

Each section belongs to one stage; a stage is re-run exactly when its section
(or a section before it) changes. Every field carries help text, shown by
`mmedpo run --help-config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mmedpo.records import describe_error


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Section):
    source: Literal["synthmed", "samples"] = Field(
        "synthmed", description="'synthmed' draws the embedded dataset; 'samples' reads a Sample JSONL file"
    )
    samples: str | None = Field(None, description="Sample JSONL file when source is 'samples'")
    image_root: str | None = Field(None, description="folder the samples' image paths are relative to")
    n_sft: int = Field(600, ge=1, description="SynthMed images in the SFT split (each gives several samples)")
    n_pref: int = Field(300, ge=1, description="SynthMed images in the preference-curation split")
    n_test: int = Field(150, ge=1, description="SynthMed images in the test split")
    image_size: int = Field(128, ge=32, description="SynthMed image side in pixels")


class BaseModelConfig(Section):
    path: str | None = Field(None, description="an HF VLM folder to start from; empty builds the tiny LLaVA")
    image_size: int = Field(64, ge=16, description="tiny LLaVA: side of the image its vision tower sees")
    text_hidden: int = Field(128, ge=16, description="tiny LLaVA: Llama hidden size")
    vision_hidden: int = Field(64, ge=16, description="tiny LLaVA: CLIP vision hidden size")
    layers: int = Field(2, ge=1, description="tiny LLaVA: layers of each tower")
    sft_epochs: int = Field(3, ge=0, description="supervised fine-tuning epochs on the SFT split (0: no SFT)")
    sft_learning_rate: float = Field(1e-3, gt=0, description="supervised fine-tuning learning rate")
    sft_batch_size: int = Field(16, ge=1, description="supervised fine-tuning batch size")


class CurateTextConfig(Section):
    generators: list[Literal["perturb", "target"]] = Field(
        ["perturb", "target"], description="hallucination generators: clinical perturbation, target-model sampling"
    )
    candidates: int = Field(4, ge=1, description="target model: sampled candidates per sample")
    temperature: float = Field(1.0, gt=0, description="target model: sampling temperature")
    pairs_per_sample: int = Field(1, ge=1, description="at most this many textual pairs per sample")
    max_length_ratio: float = Field(3.0, gt=0, description="drop rejected answers longer than this times the gold")


class CurateVisualConfig(Section):
    localizer: Literal["annotation"] = Field("annotation", description="where the lesion region comes from")
    timestep: int = Field(500, ge=0, le=999, description="DDPM forward-noise timestep (of 1000)")
    edge_sigma: float = Field(2.0, ge=0, description="soft edge of the noised region, in pixels")
    whole_image: bool = Field(False, description="noise the whole image instead of the lesion (paper's ablation)")


class ScoreConfig(Section):
    judges: list[str] = Field(["findings"], description="judge panel for textual pairs (names from the registry)")
    aggregate: Literal["mean", "median"] = Field("mean", description="how the panel's scores combine")
    normaliser: str = Field("mean-one", description="normalisation Z of the raw scores (see scoring.normalise)")


class TrainConfig(Section):
    beta: float = Field(0.1, gt=0, description="DPO temperature beta")
    loss_type: str = Field("sigmoid", description="DPO loss variant")
    weighted: bool = Field(True, description="multiply each pair's loss by its clinical weight (MMedPO)")
    pair_kinds: list[Literal["text", "visual"]] = Field(["text", "visual"], description="which pairs to train on")
    learning_rate: float = Field(5e-4, gt=0, description="learning rate")
    epochs: int = Field(2, ge=1, description="epochs over the pairs")
    batch_size: int = Field(8, ge=1, description="pairs per step")


class EvalConfig(Section):
    batch_size: int = Field(32, ge=1, description="generation batch size")
    max_new_tokens_vqa: int = Field(8, ge=1, description="generation length for VQA answers")
    max_new_tokens_report: int = Field(64, ge=1, description="generation length for reports")


class RunConfig(Section):
    name: str = Field("demo", description="run name: the run folder is RUNS_DIR/NAME")
    runs_dir: str = Field("runs", description="where run folders live")
    seed: int = Field(0, description="one seed for data, models and sampling")
    data: DataConfig = DataConfig()
    model: BaseModelConfig = BaseModelConfig()
    curate_text: CurateTextConfig = CurateTextConfig()
    curate_visual: CurateVisualConfig = CurateVisualConfig()
    score: ScoreConfig = ScoreConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings (value parsed as YAML) on top of a config dict."""
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep:
            raise ValueError(f"override {override!r} must look like section.key=value")
        node = data
        *parents, leaf = key.strip().split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {override!r}: {parent} is not a section")
        node[leaf] = yaml.safe_load(value)
    return data


def load_config(path: Path | str | None = None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML config (or the defaults), apply overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ValueError(f"cannot read config {path}: {error}") from None
        if not isinstance(data, dict):
            raise ValueError(f"config {path} must be a mapping of sections")
    data = apply_overrides(data, list(overrides))
    try:
        return RunConfig.model_validate(data)
    except ValidationError as error:
        raise ValueError(f"config {path or '(defaults)'}: {describe_error(error)}") from None


def dump_config(config: RunConfig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
