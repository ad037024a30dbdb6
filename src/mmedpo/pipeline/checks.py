"""What a run needs from its samples, checked once they are read and before any expensive stage.

What the config alone shows is refused when it loads (`mmedpo.config`: e.g. the
annotation localizer on a dataset whose reader gives no masks). What only the
data can tell is checked here, right after the samples stage (also when that
stage was already done), so a run never trains a base model and curates pairs
only to fail on the samples later. Each problem is one line naming the missing
field and the setting to change; all of them are reported at once.

Parts that can run without what they would use are not refused: vision
pretraining is skipped without report findings, visual dependence falls back on
the run's localizer without masks, the localizer check is not measured without
masks; each says so in its stage's `notes`.
"""

from __future__ import annotations

from collections import Counter

from mmedpo.config import RunConfig
from mmedpo.layout import RunLayout
from mmedpo.pipeline.stages import CURATED_SPLITS
from mmedpo.records import Sample, read_jsonl

EXAMPLE_MAP = "e.g. data.split_map={train: {sft: 0.5, pref: 0.5}, test: test}"


def sample_problems(config: RunConfig, samples: list[Sample]) -> list[str]:
    """One line per thing the configured stages need that the samples lack."""
    from mmedpo.imaging.run_localizer import localizer_problem  # images, pydicom: not on the command line's path

    by_split: dict[str, list[Sample]] = {}
    for sample in samples:
        by_split.setdefault(sample.split, []).append(sample)
    counts = dict(Counter(sample.split for sample in samples))
    problems = []
    for split, stage in (("pref", "curation"), (config.eval.split, "evaluation")):
        if not by_split.get(split):
            problems.append(
                f"the '{split}' split has no samples, which {stage} reads (samples per split: {counts}): "
                f"map a dataset split to it in data.split_map, {EXAMPLE_MAP}"
            )
    if config.model.sft_epochs and not by_split.get("sft"):
        problems.append(
            f"model.sft_epochs is {config.model.sft_epochs} but the 'sft' split has no samples (samples per split: "
            f"{counts}): set model.sft_epochs=0, or map a dataset split to sft, {EXAMPLE_MAP}"
        )
    curated = [sample for name in CURATED_SPLITS for sample in by_split.get(name, [])]
    visual = localizer_problem(config.curate_visual, curated, by_split.get("sft", []))
    if visual:
        problems.append(visual)
    return problems


def check_samples(config: RunConfig, layout: RunLayout) -> None:
    """Raise ValueError listing every problem of the run's samples (`sample_problems`), if any."""
    problems = sample_problems(config, read_jsonl(layout.samples, Sample))
    if problems:
        raise ValueError("the samples cannot feed this run:\n  " + "\n  ".join(problems))
