"""The sections of a run configuration: one per stage, every field with its help text.

`mmedpo.config.run.RunConfig` puts them together and checks what crosses sections.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mmedpo.llm.endpoint import ChatConfig, check_no_key
from mmedpo.records import PIPELINE_SPLITS
from mmedpo.registry import (
    GENERATORS,
    JUDGES,
    LOCALIZERS,
    NORMALISERS,
    READERS,
)
from mmedpo.training.settings import DPOSettings


class Section(BaseModel):
    # Errors name the field, never echo its value: it might be a key someone wrote into the config.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class DataConfig(Section):
    source: Literal["synthmed", "dataset", "samples"] = Field(
        "synthmed",
        description="'synthmed' draws the embedded dataset; 'dataset' reads a real one with a reader "
        "(data.dataset); 'samples' reads a Sample JSONL file (data.samples)",
    )
    dataset: str | None = Field(None, description=f"reader name: {', '.join(READERS.names())}")
    split: str | None = Field(None, description="read only this split of the dataset (default: all)")
    reader_options: dict[str, Any] = Field(
        {}, description="options of the reader, e.g. language, image_policy, views, section, check_images"
    )
    split_map: dict[str, str | dict[str, float]] = Field(
        {"train": "pref", "test": "test"},
        description="dataset split -> pipeline split (sft, pref, test, val), or -> fractions of its images, e.g. "
        "{train: {sft: 0.5, pref: 0.5}, test: test} (a seeded cut by image: no image in two splits); unmapped "
        "splits keep their name",
    )
    samples: str | None = Field(None, description="Sample JSONL file when source is 'samples'")
    image_root: str | None = Field(None, description="folder the samples' image paths are relative to")
    n_sft: int = Field(600, ge=1, description="SynthMed images in the SFT split (each gives several samples)")
    n_pref: int = Field(300, ge=1, description="SynthMed images in the preference-curation split")
    n_test: int = Field(150, ge=1, description="SynthMed images in the test split")
    n_val: int = Field(
        0, ge=0, description="SynthMed images in the validation split (the test distribution, other images)"
    )
    image_size: int = Field(128, ge=32, description="SynthMed image side in pixels")

    @field_validator("split_map")
    @classmethod
    def _maps_to_pipeline_splits(cls, value: dict[str, str | dict[str, float]]) -> dict[str, str | dict[str, float]]:
        for name, target in value.items():
            fractions = {target: 1.0} if isinstance(target, str) else target
            unknown = [split for split in fractions if split not in PIPELINE_SPLITS]
            if unknown:
                raise ValueError(f"{name}: {unknown} are not pipeline splits ({', '.join(PIPELINE_SPLITS)})")
            if not all(0 < f <= 1 for f in fractions.values()) or abs(sum(fractions.values()) - 1) > 1e-6:
                raise ValueError(f"{name}: fractions {target} must each lie in (0, 1] and sum to 1")
        return value

    @model_validator(mode="after")
    def _source_has_its_input(self) -> DataConfig:
        if self.source == "dataset" and not (self.dataset and self.image_root):
            raise ValueError("data.source 'dataset' needs data.dataset (a reader) and data.image_root (its folder)")
        if self.source == "samples" and not self.samples:
            raise ValueError("data.source 'samples' needs data.samples (a Sample JSONL file)")
        return self


class BaseModelConfig(Section):
    path: str | None = Field(None, description="an HF VLM folder to start from; empty builds the tiny LLaVA")
    image_size: int = Field(64, ge=16, description="tiny LLaVA: side of the image its vision tower sees")
    text_hidden: int = Field(128, ge=16, description="tiny LLaVA: Llama hidden size")
    vision_hidden: int = Field(64, ge=16, description="tiny LLaVA: CLIP vision hidden size")
    layers: int = Field(2, ge=1, description="tiny LLaVA: layers of each tower")
    vision_pretrain_epochs: int = Field(
        30, ge=0, description="tiny LLaVA: epochs pretraining its vision tower on the SFT reports' findings (0: none)"
    )
    sft_epochs: int = Field(3, ge=0, description="supervised fine-tuning epochs on the SFT split (0: no SFT)")
    sft_freeze_vision: bool = Field(True, description="keep the vision tower frozen during SFT, as LLaVA-Med does")
    sft_learning_rate: float = Field(1e-3, gt=0, description="supervised fine-tuning learning rate")
    sft_batch_size: int = Field(16, ge=1, description="supervised fine-tuning batch size")
    endpoint: ChatConfig | None = Field(
        None,
        description="the base model served behind an OpenAI-compatible endpoint (vLLM: base_url, model: its served "
        "name, api_key: EMPTY); every generation of it (curate text's target, curate visual, eval of base) goes "
        "there, answers cached in the run folder. Empty: loaded in process. No part of any fingerprint (docs/scale.md)",
    )


class CurateTextConfig(Section):
    generators: list[str] = Field(
        ["target", "perturb"],
        description=f"hallucination generators ({', '.join(GENERATORS.names())}): target-model sampling, an "
        "OpenAI-compatible chat endpoint (curate_text.chat), clinical perturbation of the ground truth",
    )
    chat: ChatConfig = Field(ChatConfig(), description="the endpoint of the 'chat' generator")
    candidates: int = Field(4, ge=1, description="target model: sampled candidates per sample")
    temperature: float = Field(1.0, gt=0, description="target model: sampling temperature")
    top_p: float = Field(
        1.0,
        gt=0,
        le=1,
        description="target model: nucleus sampling, keep the likeliest tokens up to this probability mass (1: all)",
    )
    pairs_per_sample: int = Field(1, ge=1, description="at most this many textual pairs per sample")
    max_length_ratio: float = Field(3.0, gt=0, description="drop rejected answers longer than this times the gold")
    allow_empty_generators: list[str] = Field(
        [], description="generators allowed to make no pair at all (otherwise such a generator fails the stage)"
    )


# curate_visual.localizer: the data's annotation where the samples carry lesion masks, else the model's attribution.
AUTO = "auto"


class CurateVisualConfig(Section):
    localizer: str = Field(
        AUTO,
        description=f"where the lesion region comes from: auto, {', '.join(LOCALIZERS.names())}. auto: the data's "
        "masks/boxes where the samples have them, else the target model's attribution of its own answer",
    )
    localizer_options: dict[str, Any] = Field(
        {}, description="keyword options of the localizer (e.g. dilation; for gradcam: region={...}, min_confidence)"
    )
    classifier: str | None = Field(
        None, description="gradcam: a classifier weights file; empty trains the small default CNN on the SFT split"
    )
    classifier_factory: str | None = Field(
        None, description="gradcam: 'module:function' building the classifier to load the weights into"
    )
    preview: int = Field(0, ge=0, description="write a panel PNG (image, heat map, region, noised) for N images")
    timestep: int = Field(
        500, ge=0, le=999, description="DDPM forward-noise timestep (of 1000, linear schedule: abar_500 = 0.078)"
    )
    edge_sigma: float = Field(
        2.0, ge=0, description="fade of the noise beyond the region, in pixels; every region pixel gets the full step"
    )
    regions: list[Literal["lesion", "whole"]] = Field(
        ["lesion"],
        min_length=1,
        description="what gets noised: the lesion region (MMedPO), and/or the whole image (the paper's ablation; "
        "pairs.visual-whole.jsonl, trained on by variants with visual_region: whole)",
    )
    rejected: list[Literal["model-answer", "gold"]] = Field(
        ["model-answer"],
        min_length=1,
        description="the rejected text of visual pairs: the model's answer on the noised image (MMedPO), and/or the "
        "gold answer on the noised image (image-conditional pairs, as mDPO's; an extension beyond the paper: "
        "pairs.visual-gold.jsonl, trained on by variants with visual_rejected: gold)",
    )
    keep: Literal["all", "neglect"] = Field(
        "all",
        description="model-answer pairs kept: all whose answer on the noised image is wrong (the paper), or only "
        "lesion-neglect ones, right on the clean image and wrong on the noised one",
    )


class ScoreConfig(Section):
    judges: list[str] = Field(
        ["findings"],
        description=f"judge panel for textual pairs: judges ({', '.join(JUDGES.names())}), or member names given "
        "a 'judge' in judge_options",
    )
    judge_options: dict[str, dict[str, Any]] = Field(
        {},
        description="per panel member: the judge's options, e.g. {hf: {model: /models/BioMistral-7B, batch_size: 8}};"
        " a member named otherwise says which judge it is, e.g. {gpt4o: {judge: chat, model: gpt-4o}}",
    )
    aggregate: Literal["mean", "median", "trimmed-mean", "weighted"] = Field(
        "mean", description="how the panel's scores of a pair combine (mean: the paper's reading)"
    )
    trim: float = Field(0.1, ge=0, lt=0.5, description="trimmed-mean: fraction of scores cut from each end")
    weights: dict[str, float] = Field(
        {}, description="weighted: weight of each panel member (and of 'localizer' with visual_mode confidence+judges)"
    )
    visual_mode: Literal["confidence", "confidence+judges"] = Field(
        "confidence",
        description="visual pairs: the localizer's confidence alone, or combined with the judges as member 'localizer'",
    )
    cache: bool = Field(True, description="keep judge verdicts in a cache on disk so no pair is judged twice")
    cache_path: str | None = Field(None, description="the judge cache file; empty: judge_cache.jsonl in the run folder")
    normaliser: str = Field(
        "mean-one",
        description=f"normalisation Z of the raw scores ({', '.join(NORMALISERS.names())}; see scoring.normalise)",
    )

    def member_judge(self, member: str) -> str:
        """The judge a panel member is: the 'judge' its judge_options name, else the member's own name."""
        return self.judge_options.get(member, {}).get("judge", member)

    @field_validator("judge_options")
    @classmethod
    def _no_key_in_judge_options(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        # Refused here, not when the judge is built: by then the run's config.yaml would hold the key.
        for member, options in value.items():
            try:
                check_no_key(options.get("api_key"))
            except ValueError as error:
                raise ValueError(f"{member}.api_key: {error}") from None
        return value

    @model_validator(mode="after")
    def _weights_cover_the_panel(self) -> ScoreConfig:
        if self.aggregate != "weighted":
            return self
        members = list(self.judges) + (["localizer"] if self.visual_mode == "confidence+judges" else [])
        missing = [m for m in members if m not in self.weights]
        if missing:
            raise ValueError(f"aggregate 'weighted' needs score.weights for {missing}")
        if any(w < 0 for w in self.weights.values()) or sum(self.weights[m] for m in members) <= 0:
            raise ValueError(f"score.weights must be >= 0 with a positive sum, got {self.weights}")
        return self


class TrainConfig(DPOSettings):
    """Weighted DPO settings (mmedpo.training.settings, TRL's names) and which pairs a variant trains on."""

    pair_kinds: list[Literal["text", "visual"]] = Field(["text", "visual"], description="which pairs to train on")
    visual_region: Literal["lesion", "whole"] = Field(
        "lesion", description="visual pairs whose noise covers the lesion, or the whole image (curate_visual.regions)"
    )
    visual_rejected: Literal["model-answer", "gold"] = Field(
        "model-answer",
        description="visual pairs rejecting the model's answer (MMedPO), or the gold answer on the noised image "
        "(image-conditional pairs; curate_visual.rejected)",
    )
    heldout_pairs: int | None = Field(
        200,
        ge=1,
        description="at most this many pairs of the validation split (each kind its share, a seeded choice) measure "
        "the trained variant's reward accuracy; empty: all of them",
    )
    kind_balance: Literal["pairs", "equal"] | dict[Literal["text", "visual"], float] = Field(
        "pairs",
        description="the share of the total weight each pair kind carries (weights are normalised within each "
        "kind first): 'pairs' its share of the pairs (weighting then only moves emphasis within a kind), "
        "'equal' the same for each kind, or {text: 1, visual: 2} relative shares",
    )
    judges: list[str] | None = Field(
        None,
        description="weight textual pairs by these panel members only (the single-judge ablation); "
        "empty: the whole panel's weights",
    )

    @model_validator(mode="after")
    def _shares_for_each_kind(self) -> TrainConfig:
        if isinstance(self.kind_balance, dict):
            missing = [kind for kind in self.pair_kinds if kind not in self.kind_balance]
            shares = [self.kind_balance.get(kind, 0.0) for kind in self.pair_kinds]
            if missing or any(share <= 0 for share in shares):
                raise ValueError(f"kind_balance needs a share > 0 for each of {self.pair_kinds}: {self.kind_balance}")
        return self

    def settings(self, run_seed: int) -> DPOSettings:
        """What the trainer takes: these settings, with the run's seed unless one is set here."""
        selection = {"pair_kinds", "visual_region", "visual_rejected", "kind_balance", "judges", "heldout_pairs"}
        values = self.model_dump(exclude=selection)
        return DPOSettings(**{**values, "seed": run_seed if self.seed is None else self.seed})


class EvalConfig(Section):
    split: Literal["test", "val"] = Field(
        "test", description="the split evaluated: 'val' while choosing settings (mmedpo tune), 'test' for results"
    )
    batch_size: int = Field(32, ge=1, description="generation batch size")
    max_new_tokens_vqa: int = Field(8, ge=1, description="generation length for VQA answers")
    max_new_tokens_report: int = Field(64, ge=1, description="generation length for reports")
    protocol: str = Field(
        "mmedpo",
        description="'mmedpo': strict VQA scoring; 'llava-med-v1.0.0': LLaVA-Med v1.0.0's scorer, quirks included, "
        "only to compare with published tables (docs/evaluation.md)",
    )
    report_tokenization: Literal["mmedpo", "r2gen-iu-xray", "r2gen-mimic-cxr"] = Field(
        "mmedpo",
        description="words the report metrics compare: ours (punctuation and hyphens dropped) or R2Gen's cleaning "
        "(keeps hyphens and ' . ' sentence tokens; docs/evaluation.md)",
    )
    meteor: bool = Field(False, description="also compute METEOR for reports (starts Java; slower)")
    prompts: dict[str, str] = Field(
        {}, description="per-task prompt templates with {question}, e.g. {vqa: '{question} Answer yes or no.'}"
    )
    visual_dependence: bool = Field(
        True, description="also answer on the lesion-noised and on a blank image: does the model look at the lesion?"
    )
    vd_timestep: int = Field(999, ge=0, le=999, description="visual dependence: noise timestep hiding the lesion")
    endpoints: dict[str, ChatConfig] = Field(
        {},
        description="variant -> where its trained model is served (as model.endpoint), e.g. {mmedpo: {base_url: "
        "..., model: mmedpo}}; a variant not named here is evaluated in process, base by model.endpoint",
    )
