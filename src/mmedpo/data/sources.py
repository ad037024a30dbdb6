"""Where a run's samples come from: SynthMed, a dataset reader, or a Sample JSONL file.

    read_samples(config.data, images_dir, seed) -> (samples, rejects)

Every sample carries its pipeline split (`sft`, `pref`, `test`, `val`): SynthMed
draws them; a dataset's own splits (and a Sample file's) are renamed, or cut by
image into seeded fractions, by `data.split_map` (`data.splits`).
"""

from __future__ import annotations

from pathlib import Path

from mmedpo.config import DataConfig
from mmedpo.data.splits import map_splits
from mmedpo.records import Reject, Sample, read_jsonl


def read_samples(settings: DataConfig, images_dir: Path, seed: int) -> tuple[list[Sample], list[Reject]]:
    """The samples `settings` names and the input records that could not be read (with reasons).

    SynthMed draws its images under `images_dir/synthmed/`.
    """
    if settings.source == "synthmed":
        from mmedpo.synth.synthmed import generate_synthmed

        sizes = {"sft": settings.n_sft, "pref": settings.n_pref, "test": settings.n_test, "val": settings.n_val}
        return generate_synthmed(images_dir, sizes, seed, settings.image_size), []
    if settings.source == "dataset":
        from mmedpo.data.readers import read_dataset

        samples, rejects = read_dataset(
            settings.dataset, settings.image_root, settings.split, **settings.reader_options
        )
    else:
        samples, rejects = read_jsonl(settings.samples, Sample), []
    return map_splits(samples, settings.split_map, seed), rejects
