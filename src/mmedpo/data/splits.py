"""From a dataset's own splits to the pipeline's: `data.split_map`.

The pipeline's splits are `sft` (supervised fine-tuning), `pref` (preference
curation), `test` (evaluation) and `val` (choosing settings without the test
split). Each dataset split is renamed to one of them, or cut into seeded
fractions of them, by image, so that no image of that dataset split lands in two
pipeline splits (every question about one image goes where the image goes):

    split_map:
      train: {sft: 0.5, pref: 0.4, val: 0.1}   # fractions of the train split's images
      test: test                               # renamed as it is

A dataset split the map does not name keeps its name (`val` stays `val`); one
that names no pipeline split (e.g. an unmapped `train`) is read but used by no
stage, and the samples stage says how many such samples there are.

    >>> from mmedpo.records import Sample
    >>> rows = [Sample(id=str(i), task="vqa", image=f"{i % 4}.png", question="q?", answer="a", split="train")
    ...         for i in range(8)]
    >>> sorted({s.split for s in map_splits(rows, {"train": {"sft": 0.5, "pref": 0.5}}, seed=0)})
    ['pref', 'sft']
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from itertools import combinations

from mmedpo.records import PIPELINE_SPLITS, Sample

SplitTarget = str | Mapping[str, float]


def map_splits(samples: Sequence[Sample], split_map: Mapping[str, SplitTarget], seed: int) -> list[Sample]:
    """The samples with their pipeline split: renamed, or assigned by a seeded cut of their split's images."""
    cuts = {
        name: image_fractions(samples, name, target, seed)
        for name, target in split_map.items()
        if not isinstance(target, str)
    }
    mapped = []
    for sample in samples:
        target = split_map.get(sample.split, sample.split)
        split = target if isinstance(target, str) else cuts[sample.split][sample.image]
        mapped.append(sample.model_copy(update={"split": split}))
    return mapped


def image_fractions(samples: Sequence[Sample], split: str, fractions: Mapping[str, float], seed: int) -> dict[str, str]:
    """Image -> pipeline split, for the images of dataset split `split`, cut in `fractions` of the images.

    The images are sorted, shuffled with `seed` and cut at the cumulative
    fractions (rounded to whole images), so the same data and seed give the same
    cut, and a fraction of 0.5 of 11 images is 5 or 6 of them, never an image twice.
    """
    images = sorted({sample.image for sample in samples if sample.split == split})
    random.Random(f"{seed}:{split}").shuffle(images)
    assignment, start, total = {}, 0, 0.0
    for name, fraction in fractions.items():
        total += fraction
        end = round(total * len(images))
        assignment.update({image: name for image in images[start:end]})
        start = end
    return assignment


def unused_splits(samples: Sequence[Sample]) -> dict[str, int]:
    """Samples per split that no pipeline stage reads (a dataset split left unmapped)."""
    return dict(Counter(s.split for s in samples if s.split not in PIPELINE_SPLITS))


def shared_images(samples: Sequence[Sample]) -> dict[str, int]:
    """For each two pipeline splits that share images, how many ("pref and test": 3).

    A seeded cut never shares an image; a dataset's own splits may (VQA-RAD's
    test questions ask about train images), which the samples stage reports.
    """
    images: dict[str, set[str]] = {}
    for sample in samples:
        images.setdefault(sample.split, set()).add(sample.image)
    shared = {}
    for a, b in combinations([s for s in PIPELINE_SPLITS if s in images], 2):
        if common := images[a] & images[b]:
            shared[f"{a} and {b}"] = len(common)
    return shared


def split_notes(samples: Sequence[Sample]) -> list[str]:
    """Lines the samples stage reports: samples no stage reads, images two pipeline splits share."""
    unused = [f"{n} samples of split {name!r} are used by no stage: map it in data.split_map" for name, n in
              unused_splits(samples).items()]  # fmt: skip
    return unused + [f"{n} images are in both {pair}" for pair, n in shared_images(samples).items()]
