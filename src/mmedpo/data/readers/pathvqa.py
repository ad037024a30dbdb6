"""PathVQA (He et al. 2020), https://github.com/UCSD-AI4H/PathVQA , in its distributed layout:

    ROOT/qas/train/train_qa.pkl   (also val/val_qa.pkl, test/test_qa.pkl)
        a list of {"image": "train_0422", "question": ..., "answer": ...}
    ROOT/images/train/train_0422.jpg

A `SPLIT_qa.json` with the same list is read in place of the pickle when present.
The pickles are read with an unpickler that builds only lists, dicts, strings and
numbers, never arbitrary objects. Sample ids are `SPLIT-INDEX` (the files carry
none); images are relative to ROOT. Closed questions are those answered yes or no.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

from mmedpo.data.json_files import load_json
from mmedpo.data.readers.base import (
    Collector,
    ImageCheck,
    RecordError,
    answer_type,
    as_record,
    image_path,
    normal_split,
    text,
)
from mmedpo.records import Reject, Sample

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg")


def read_pathvqa(
    root: Path, split: str | None = None, check_images: ImageCheck = "decode"
) -> tuple[list[Sample], list[Reject]]:
    root = Path(root)
    splits = list(SPLITS) if split is None else [normal_split(split)]
    if any(name not in SPLITS for name in splits):
        raise ValueError(f"PathVQA has the splits train, val and test, not {split!r}")
    collector = Collector(root, check_images)
    for name in splits:
        path, records = _load(root, name)
        for index, record in enumerate(records):
            collector.add(
                f"{path}#{index}", f"{name}-{index}", lambda r=record, n=name, i=index: [_sample(root, r, n, i)]
            )
    return collector.result()


def _load(root: Path, split: str) -> tuple[Path, list]:
    folder = root / "qas" / split
    if (folder / f"{split}_qa.json").is_file():
        path = folder / f"{split}_qa.json"
        records = load_json(path)
    elif (folder / f"{split}_qa.pkl").is_file():
        path = folder / f"{split}_qa.pkl"
        try:
            records = _PlainUnpickler(io.BytesIO(path.read_bytes())).load()
        except (pickle.UnpicklingError, EOFError, ValueError) as error:
            raise ValueError(f"{path}: not a pickled list of questions: {error}") from None
    else:
        raise FileNotFoundError(f"{folder}: no {split}_qa.json or {split}_qa.pkl")
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a list of questions, got {type(records).__name__}")
    return path, records


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to build {module}.{name}: only plain data is read")


def _sample(root: Path, record, split: str, index: int) -> Sample:
    record = as_record(record)
    answer = text(record, "answer")
    return Sample(
        id=f"{split}-{index}",
        task="vqa",
        image=_image(root, split, text(record, "image")),
        question=text(record, "question"),
        answer=answer,
        answer_type=answer_type(None, answer),
        split=split,
        meta={"dataset": "pathvqa"},
    )


def _image(root: Path, split: str, name: str) -> str:
    """The image named without extension: the first suffix that exists (.jpg when none does)."""
    if Path(name).suffix:
        return image_path("images", split, name)
    for suffix in IMAGE_SUFFIXES:
        if (root / "images" / split / f"{name}{suffix}").is_file():
            return image_path("images", split, name + suffix)
    raise RecordError(f"image {name!r} not found under {root / 'images' / split} as {', '.join(IMAGE_SUFFIXES)}")
