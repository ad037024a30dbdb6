"""Dataset readers: each turns a dataset, in the layout its owners publish, into Samples.

    >>> samples, rejects = read_dataset("vqa-rad", Path("data/vqa-rad"), split="test")  # doctest: +SKIP

Every reader takes the dataset folder ROOT, a split (None: all of them) and its
own options, and returns (samples, rejects): each input record is either one or
more samples or one reject naming its file and record, so read = accepted +
rejected. Sample image paths are relative to ROOT, so the pipeline's
`data.image_root` is ROOT. Readers check images by default ("decode" opens each
once; "exists" only resolves it; "none" trusts the paths but still refuses
escaping ones): `check_images=`. `mmedpo.registry.READERS` names them:

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

from mmedpo.records import Reject, Sample
from mmedpo.registry import READERS


def read_dataset(name: str, root: Path | str, split: str | None = None, **options) -> tuple[list[Sample], list[Reject]]:
    """Samples and rejects of dataset `name` in folder `root`; `options` go to its reader."""
    reader = READERS.load(name)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset folder not found")
    return reader(root, split, **options)
