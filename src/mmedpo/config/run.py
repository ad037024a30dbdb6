"""The run configuration: validated on load, YAML in and out, command-line overrides win.

Each section belongs to one stage; a stage is re-run exactly when its section
(or a section before it) changes. Every field carries help text, shown by
`mmedpo config`. Every name a user types (a dataset, generator,
localizer, judge, normaliser, protocol, prompt task) is checked against
`mmedpo.registry` on load, so a typo fails before the first stage runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from mmedpo.config.sections import (
    AUTO,
    BaseModelConfig,
    CurateTextConfig,
    CurateVisualConfig,
    DataConfig,
    EvalConfig,
    ScoreConfig,
    Section,
    TrainConfig,
)
from mmedpo.layout import RESERVED_PAIR_NAMES
from mmedpo.records import Task, describe_error
from mmedpo.registry import (
    ANNOTATING_READERS,
    GENERATORS,
    JUDGES,
    LOCALIZERS,
    NORMALISERS,
    PROTOCOLS,
    READERS,
    unknown_name,
)
from mmedpo.training.settings import unknown_setting


class RunConfig(Section):
    name: str = Field("demo", description="run name: the run folder is RUNS_DIR/NAME")
    runs_dir: str = Field("runs", description="where run folders live")
    seed: int = Field(0, description="one seed for data, models and sampling")
    threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads for torch (the command line applies it); empty: torch's default. A tiny model "
        "runs faster on one thread: its matrices are too small to repay splitting work between threads",
    )
    data: DataConfig = DataConfig()
    model: BaseModelConfig = BaseModelConfig()
    curate_text: CurateTextConfig = CurateTextConfig()
    curate_visual: CurateVisualConfig = CurateVisualConfig()
    score: ScoreConfig = ScoreConfig()
    train: TrainConfig = TrainConfig()
    variants: dict[str, dict[str, Any]] = Field(
        {"mmedpo": {}},
        description="trained variants: name -> train settings that differ from the train section",
    )
    eval: EvalConfig = EvalConfig()
    claim: list[str] = Field(
        ["mmedpo", "base"],
        description="the paper's claim as a chain of variants, best first; the run says whether it holds per metric",
    )

    ablations: list[list[str]] = Field(
        [],
        description="further chains checked like the claim, e.g. [[mmedpo, mmedpo-one-judge]]: "
        "the judge panel over one judge, lesion over whole-image noise",
    )

    @field_validator("variants")
    @classmethod
    def _valid_variants(cls, variants: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if not variants:
            raise ValueError("at least one variant must be trained")
        for name, changes in variants.items():
            if name in ("base", *RESERVED_PAIR_NAMES) or not name.replace("-", "").replace("_", "").isalnum():
                raise ValueError(
                    f"variant name {name!r} must be letters, digits, - or _, and none of base, "
                    f"{', '.join(RESERVED_PAIR_NAMES)} (names of the run's own files)"
                )
            if not isinstance(changes, dict):
                raise ValueError(f"variant {name}: expected a mapping of train settings")
            for setting in changes:
                if setting not in TrainConfig.model_fields:
                    raise ValueError(f"variant {name}: {unknown_setting(setting, TrainConfig.model_fields)}")
        return variants

    @model_validator(mode="after")
    def _names_are_known(self) -> RunConfig:
        """Every name typed in the config names something: a typo fails here, naming its setting."""
        if self.data.dataset is not None:
            READERS.check(self.data.dataset, "data.dataset")
        for name in self.curate_text.generators:
            GENERATORS.check(name, "curate_text.generators")
        for name in self.curate_text.allow_empty_generators:
            GENERATORS.check(name, "curate_text.allow_empty_generators")
        localizer = self.curate_visual.localizer
        if localizer != AUTO and localizer not in LOCALIZERS:
            raise unknown_name("localizer", localizer, [AUTO, *LOCALIZERS.names()], "curate_visual.localizer")
        score = self.score
        for member in score.judges:
            named_in_options = "judge" in score.judge_options.get(member, {})
            setting = f"score.judge_options.{member}.judge" if named_in_options else "score.judges"
            JUDGES.check(score.member_judge(member), setting)
        NORMALISERS.check(score.normaliser, "score.normaliser")
        PROTOCOLS.check(self.eval.protocol, "eval.protocol")
        for task in self.eval.prompts:
            if task not in get_args(Task):
                raise unknown_name("task", task, get_args(Task), "eval.prompts")
        return self

    @model_validator(mode="after")
    def _reader_gives_what_the_localizer_reads(self) -> RunConfig:
        """A localizer that needs annotations no reader of this dataset gives fails now (the data tell the rest)."""
        data, visual = self.data, self.curate_visual
        needs = {
            "annotation": ("lesion masks or boxes", "localizer_options.boxes_file (COCO boxes)", "boxes_file"),
            "gradcam": ("meta['findings'] to train its default classifier", "classifier (and classifier_factory)", ""),
        }
        if data.source != "dataset" or data.dataset in ANNOTATING_READERS or visual.localizer not in needs:
            return self
        what, instead, option = needs[visual.localizer]
        if not (visual.localizer_options.get(option) if option else visual.classifier):
            raise ValueError(
                f"curate_visual.localizer {visual.localizer!r} needs {what}, which the {data.dataset} reader does not "
                f"give: set curate_visual.localizer: auto (the target model's attribution), or curate_visual.{instead}"
            )
        return self

    @model_validator(mode="after")
    def _endpoints_name_variants(self) -> RunConfig:
        unknown = sorted(set(self.eval.endpoints) - {"base", *self.variants})
        if unknown:
            raise ValueError(
                f"eval.endpoints names {unknown}, which are not variants ({', '.join(self.variants)}) or base"
            )
        return self

    @model_validator(mode="after")
    def _claim_names_variants(self) -> RunConfig:
        for chain in self.chains():
            unknown = [name for name in chain if name != "base" and name not in self.variants]
            if unknown:
                raise ValueError(f"claim names {unknown}, which are not variants ({', '.join(self.variants)}) or base")
            if len(chain) < 2:
                raise ValueError(f"claim/ablation chain {chain} needs at least two names, best first")
        return self

    def chains(self) -> list[list[str]]:
        """The claim, then each ablation: chains of variants, best first."""
        return [self.claim, *self.ablations] if self.claim else list(self.ablations)

    @model_validator(mode="after")
    def _variants_merge(self) -> RunConfig:
        for name in self.variants:
            try:
                train = self.variant(name)
            except ValidationError as error:
                raise ValueError(f"variant {name}: {describe_error(error)}") from None
            self._check_variant_inputs(name, train)
        return self

    def _check_variant_inputs(self, name: str, train: TrainConfig) -> None:
        """What a variant trains on must be made by the stages before it: fail now, not after curation."""
        if "visual" in train.pair_kinds and train.visual_region not in self.curate_visual.regions:
            raise ValueError(
                f"variant {name}: visual_region {train.visual_region!r} is not in curate_visual.regions "
                f"{self.curate_visual.regions}"
            )
        if "visual" in train.pair_kinds and train.visual_rejected not in self.curate_visual.rejected:
            raise ValueError(
                f"variant {name}: visual_rejected {train.visual_rejected!r} is not in curate_visual.rejected "
                f"{self.curate_visual.rejected}"
            )
        outside = sorted(set(train.judges or []) - set(self.score.judges))
        if outside or train.judges == []:
            raise ValueError(
                f"variant {name}: judges {outside or '[]'} must be members of score.judges {self.score.judges}"
            )

    def warnings(self) -> list[str]:
        """What makes a variant's effect impossible to credit, said before the run spends its time."""
        found = []
        controls = {
            self._pairs_of(name)
            for name in self.variants
            if self.variant(name).loss_type == "sft" and not self.variant(name).nll_weight
        }
        for name in self.variants:
            train = self.variant(name)
            if train.nll_weight and self._pairs_of(name) not in controls:
                found.append(
                    f"variant {name} adds an NLL term (nll_weight {train.nll_weight}) but no variant trains that "
                    "term alone on its pairs: add its NLL-only twin, the same variant with loss_type: sft and "
                    "nll_weight: 0, or its gains cannot be told from the NLL term's"
                )
        return found

    def _pairs_of(self, name: str) -> tuple:
        train = self.variant(name)
        return (tuple(train.pair_kinds), train.visual_region, train.visual_rejected)

    def variant(self, name: str) -> TrainConfig:
        """The train settings of one variant: the train section with its changes."""
        return TrainConfig.model_validate({**self.train.model_dump(), **self.variants[name]})

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
