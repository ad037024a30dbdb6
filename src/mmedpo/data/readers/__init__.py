"""Dataset readers: each turns a dataset, in the layout its owners publish, into Samples.

    >>> samples, rejects = read_dataset("vqa-rad", Path("data/vqa-rad"), split="test")  # doctest: +SKIP

Every reader takes the dataset folder ROOT, a split (None: all of them) and its
own options, and returns (samples, rejects): each input record is either one or
more samples or one reject naming its file and record, so read = accepted +
rejected. Sample image paths are relative to ROOT, so the pipeline's
`data.image_root` is ROOT. Readers check images by default ("decode" opens each
once; "exists" only resolves it; "none" trusts the paths but still refuses
escaping ones): `check_images=`.

| name | dataset | layout (see each module) |
|---|---|---|
| vqa-rad | VQA-RAD, official JSON | `VQA_RAD Dataset Public.json`, `VQA_RAD Image Folder/` |
| llava-med-vqa | LLaVA-Med VQA JSONL | `SPLIT.jsonl` (question_id, image, text, answer) |
| slake | SLAKE | `train.json`, `validate.json`, `test.json`, `imgs/` |
| pathvqa | PathVQA | `qas/SPLIT/SPLIT_qa.pkl`, `images/SPLIT/` |
| iu-xray | IU-Xray (R2Gen) | `annotation.json`, `images/` |
| mimic-cxr | MIMIC-CXR-JPG + reports | split and metadata CSVs, `files/` |
| llava | LLaVA conversations | any JSON/JSONL with `conversations` |
"""

from __future__ import annotations

from pathlib import Path

from mmedpo.data.readers.iu_xray import read_iu_xray
from mmedpo.data.readers.llava import read_llava, read_llava_med_vqa
from mmedpo.data.readers.mimic_cxr import read_mimic_cxr
from mmedpo.data.readers.pathvqa import read_pathvqa
from mmedpo.data.readers.slake import read_slake
from mmedpo.data.readers.vqa_rad import read_vqa_rad
from mmedpo.records import Reject, Sample

READERS = {
    "vqa-rad": read_vqa_rad,
    "llava-med-vqa": read_llava_med_vqa,
    "slake": read_slake,
    "pathvqa": read_pathvqa,
    "iu-xray": read_iu_xray,
    "mimic-cxr": read_mimic_cxr,
    "llava": read_llava,
}


def read_dataset(name: str, root: Path | str, split: str | None = None, **options) -> tuple[list[Sample], list[Reject]]:
    """Samples and rejects of dataset `name` in folder `root`; `options` go to its reader."""
    if name not in READERS:
        raise ValueError(f"unknown dataset {name!r}; datasets are {', '.join(READERS)}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset folder not found")
    return READERS[name](root, split, **options)


__all__ = ["READERS", "read_dataset"]
