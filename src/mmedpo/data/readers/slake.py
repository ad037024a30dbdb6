"""SLAKE (Liu et al. 2021), https://www.med-vqa.com/slake/ , in its published layout:

    ROOT/train.json, ROOT/validate.json, ROOT/test.json
        qid, img_name ("xmlab102/source.jpg"), question, answer, q_lang (en/zh),
        answer_type (CLOSED/OPEN), modality, location, content_type, base_type...
    ROOT/imgs/xmlab102/source.jpg
    ROOT/imgs/xmlab102/mask.png          segmentation, where present
    ROOT/imgs/xmlab102/detection.json    [{"Liver": [x, y, w, h]}, ...], where present

English questions by default (`language="zh"` for Chinese, "all" for both);
questions in another language are skipped with a reason, so counts still add
up. Where the image has them, the mask becomes `meta["lesion_mask"]` (what the
annotation localizer reads) and the boxes `meta["lesion_boxes"]` as
[x0, y0, x1, y1] pixels with their labels in `meta["findings"]`.
Sample ids are the qids; images are relative to ROOT.
"""

from __future__ import annotations

import json
from pathlib import Path

from mmedpo.data.json_files import load_json
from mmedpo.data.readers.base import (
    Collector,
    ImageCheck,
    RecordError,
    answer_type,
    as_record,
    find_file,
    image_path,
    normal_split,
    record_id,
    text,
)
from mmedpo.records import Reject, Sample

SPLIT_FILES = {"train": "train.json", "val": "validate.json", "test": "test.json"}
META_FIELDS = ("modality", "location", "content_type", "base_type", "q_lang")


def read_slake(
    root: Path, split: str | None = None, language: str = "en", check_images: ImageCheck = "decode"
) -> tuple[list[Sample], list[Reject]]:
    """Samples of one split (train, val/validate, test) or of all three (None)."""
    root = Path(root)
    splits = list(SPLIT_FILES) if split is None else [normal_split(split)]
    if any(name not in SPLIT_FILES for name in splits):
        raise ValueError(f"SLAKE has the splits train, validate and test, not {split!r}")
    collector = Collector(root, check_images)
    annotations = _Annotations(root)
    for name in splits:
        path = find_file(root, SPLIT_FILES[name])
        records = load_json(path)
        if not isinstance(records, list):
            raise ValueError(f"{path}: expected a JSON list of questions")
        for index, record in enumerate(records):
            source, qid = f"{path}#{index}", record_id(record, "qid")
            lang = record.get("q_lang") if isinstance(record, dict) else None
            if language != "all" and isinstance(lang, str) and lang != language:
                collector.reject(source, qid, f"skipped: q_lang {lang!r} (language {language!r} selected)")
                continue
            collector.add(source, qid, lambda r=record, n=name: [_sample(r, n, annotations)])
    return collector.result()


def _sample(record, split: str, annotations: _Annotations) -> Sample:
    record = as_record(record)
    answer = text(record, "answer")
    image = text(record, "img_name")
    meta = {key: record[key] for key in META_FIELDS if isinstance(record.get(key), str)}
    return Sample(
        id=text(record, "qid"),
        task="vqa",
        image=image_path("imgs", image),
        question=text(record, "question"),
        answer=answer,
        answer_type=answer_type(text(record, "answer_type", required=False), answer),
        split=split,
        meta={"dataset": "slake", **meta, **annotations.of(image)},
    )


class _Annotations:
    """The mask and detection boxes of each image folder, read once per folder."""

    def __init__(self, root: Path):
        self.root = root
        self._cache: dict[str, dict] = {}

    def of(self, image: str) -> dict:
        folder = str(Path(image).parent)
        if folder not in self._cache:
            self._cache[folder] = self._read(folder)
        return self._cache[folder]

    def _read(self, folder: str) -> dict:
        found: dict = {}
        if (self.root / "imgs" / folder / "mask.png").is_file():
            found["lesion_mask"] = image_path("imgs", folder, "mask.png")
        detection = self.root / "imgs" / folder / "detection.json"
        if detection.is_file():
            boxes = _boxes(detection)
            found["lesion_boxes"] = boxes
            found["findings"] = [box["label"] for box in boxes]
        return found


def _boxes(path: Path) -> list[dict]:
    try:
        items = load_json(path)
        boxes = []
        for item in items if isinstance(items, list) else [items]:
            for label, (x, y, w, h) in item.items():
                boxes.append({"label": label, "box": [float(x), float(y), float(x) + float(w), float(y) + float(h)]})
        return boxes
    except (ValueError, TypeError, AttributeError, json.JSONDecodeError) as error:
        raise RecordError(f"{path}: boxes must be [{{label: [x, y, w, h]}}, ...]: {error}") from None
