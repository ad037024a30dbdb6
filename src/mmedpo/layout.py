"""The run folder: every path a run reads or writes, in one place (see docs/architecture.md).

    runs/NAME/config.yaml                 the resolved configuration
    runs/NAME/samples.jsonl               the input samples (+ .rejects.jsonl)
    runs/NAME/pairs.text.jsonl            textual pairs (+ .rejects.jsonl)
    runs/NAME/pairs.visual.jsonl          visual pairs, noise on the lesion (+ .rejects.jsonl)
    runs/NAME/pairs.visual-whole.jsonl    visual pairs, noise on the whole image (+ .rejects.jsonl)
    runs/NAME/pairs.visual-gold.jsonl     image-conditional visual pairs: the gold answer rejected on the
                                          noised image (-whole-gold: on the whole image)
    runs/NAME/pairs.scored.jsonl          every pair with each judge's score and its clinical score
    runs/NAME/judge_cache.jsonl           judge verdicts; answer_cache.jsonl: a served target model's answers
    runs/NAME/*.shard-I-of-N.jsonl        a shard's files (eval/shards/ for evaluations), until merged
    runs/NAME/pairs.VARIANT.jsonl         exactly what one variant trains on, with its weights
    runs/NAME/pairs.VARIANT.heldout.jsonl the same kinds of pair made on the validation split, never trained on
    runs/NAME/images/                     drawn images; noised/ copies and their masks; regions/ curation's
                                          region of every curated image (index.json, masks)
    runs/NAME/models/VARIANT/             the base (SFT) model and each trained variant (README.md: its model card)
    runs/NAME/models/VARIANT/train_log.json what a variant trained on, its logged curves and held-out rewards
    runs/NAME/eval/VARIANT.json           metrics and per-sample predictions
    runs/NAME/eval/regions/               visual dependence's region of every test image (index.json, masks)
    runs/NAME/stages/STAGE.json           fingerprint, status, wall time and summary of each stage
    runs/NAME/report/index.html           the run report

Only paths live here: the stages decide what goes in them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

SCORED = "scored"  # pairs.scored.jsonl; variant names must differ from the fixed pair files' names
RESERVED_PAIR_NAMES = ("text", "visual", "visual-whole", "visual-gold", "visual-whole-gold", SCORED)


@dataclass(frozen=True)
class RunLayout:
    """The paths of the run folder `dir`; `image_root` is the dataset's image folder, if any."""

    dir: Path
    image_root: Path | None = None

    @classmethod
    def of(cls, config) -> RunLayout:
        """The layout of a `RunConfig`'s run folder."""
        root = config.data.image_root
        return cls(Path(config.run_dir), Path(root) if root else None)

    @classmethod
    def read(cls, run_dir: Path | str) -> RunLayout:
        """The layout of an existing run folder, its image root read from its config.yaml."""
        run_dir = Path(run_dir)
        root = (read_run_config(run_dir).get("data") or {}).get("image_root")
        return cls(run_dir, Path(root) if root else None)

    @property
    def config(self) -> Path:
        return self.dir / "config.yaml"

    @property
    def images(self) -> Path:
        """The run's own image folder: SynthMed's drawings and the noised copies."""
        return self.dir / "images"

    @property
    def image_roots(self) -> list[Path]:
        """Where sample and pair image paths are looked up: the dataset's folder, then the run's."""
        return [self.image_root, self.images] if self.image_root else [self.images]

    @property
    def noised_images(self) -> Path:
        return self.images / "noised"

    @property
    def curation_regions(self) -> Path:
        """curate_visual's region of every curated image (index.json, masks), read back when the stage resumes."""
        return self.images / "regions"

    @property
    def synthmed_images(self) -> Path:
        return self.images / "synthmed"

    @property
    def samples(self) -> Path:
        return self.dir / "samples.jsonl"

    @property
    def text_pairs(self) -> Path:
        return self.dir / "pairs.text.jsonl"

    def visual_pairs(self, region: str = "lesion", rejected: str = "model-answer") -> Path:
        """Visual pairs noised on the lesion, or on the whole image (the paper's ablation), rejecting the
        model's answer or (`rejected="gold"`, image-conditional pairs) the gold answer."""
        name = "visual" + ("" if region == "lesion" else f"-{region}") + ("" if rejected == "model-answer" else "-gold")
        return self.dir / f"pairs.{name}.jsonl"

    @property
    def scored_pairs(self) -> Path:
        return self.dir / f"pairs.{SCORED}.jsonl"

    @property
    def judge_cache(self) -> Path:
        return self.dir / "judge_cache.jsonl"

    @property
    def answer_cache(self) -> Path:
        """A served target model's answers (`models.answerer`); shard workers write files of their own beside it."""
        return self.dir / "answer_cache.jsonl"

    def variant_pairs(self, variant: str) -> Path:
        """The pairs one variant trains on, with their final weights."""
        return self.dir / f"pairs.{variant}.jsonl"

    def heldout_pairs(self, variant: str) -> Path:
        """Pairs of the variant's kinds made on the validation split: never trained on, for reward accuracy."""
        return self.dir / f"pairs.{variant}.heldout.jsonl"

    @property
    def preview(self) -> Path:
        return self.dir / "preview"

    @property
    def localizer_cnn(self) -> Path:
        return self.dir / "models" / "localizer-cnn.pt"

    def model(self, variant: str) -> Path:
        return self.dir / "models" / variant

    def train_log(self, variant: str) -> Path:
        """Written by `train_weighted_dpo`: optimizer steps, pairs by kind, settings, log history, held-out rewards."""
        return self.model(variant) / "train_log.json"

    @property
    def eval_dir(self) -> Path:
        return self.dir / "eval"

    @property
    def eval_regions(self) -> Path:
        """The evaluated split's regions, found once for every evaluation's visual dependence."""
        return self.eval_dir / "regions"

    def eval(self, variant: str) -> Path:
        return self.eval_dir / f"{variant}.json"

    def eval_partial(self, variant: str) -> Path:
        """Predictions written as they come, so a killed evaluation resumes."""
        return self.eval_dir / f"{variant}.partial.jsonl"

    @property
    def stages_dir(self) -> Path:
        return self.dir / "stages"

    def stage_state(self, stage: str) -> Path:
        return self.stages_dir / f"{stage.replace(':', '.')}.json"

    @property
    def report_dir(self) -> Path:
        return self.dir / "report"

    def variant_names(self) -> list[str]:
        """The run's trained variants in its config's order."""
        return list(read_run_config(self.dir).get("variants") or {})


def read_run_config(run_dir: Path | str) -> dict:
    """The resolved configuration a run folder holds, as plain data ({} when there is none yet)."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        return {}
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"cannot read {path}: {error}") from None
