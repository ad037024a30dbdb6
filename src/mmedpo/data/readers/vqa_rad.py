"""VQA-RAD (Lau et al. 2018), https://osf.io/89kps/ , in its official layout:

    ROOT/VQA_RAD Dataset Public.json     qid, image_name, question, answer, answer_type, phrase_type...
    ROOT/VQA_RAD Image Folder/synpic*.jpg

The official file has no split field: questions whose phrase_type starts with
"test" (test_freeform, test_para) are the test split, the rest train.
Sample ids are the qids; images are relative to ROOT.
"""

from __future__ import annotations

from pathlib import Path

from mmedpo.data.json_files import load_json
from mmedpo.data.readers.base import (
    Collector,
    ImageCheck,
    answer_type,
    as_record,
    find_file,
    image_path,
    record_id,
    text,
)
from mmedpo.records import Reject, Sample

JSON_NAME = "VQA_RAD Dataset Public.json"
IMAGE_FOLDER = "VQA_RAD Image Folder"
META_FIELDS = ("image_organ", "question_type", "phrase_type")


def read_vqa_rad(
    root: Path, split: str | None = None, check_images: ImageCheck = "decode"
) -> tuple[list[Sample], list[Reject]]:
    """Samples of one split ("train", "test") or of both (None)."""
    if split not in (None, "train", "test"):
        raise ValueError(f"VQA-RAD has the splits train and test, not {split!r}")
    path = find_file(Path(root), JSON_NAME)
    records = load_json(path)
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of questions")
    collector = Collector(root, check_images)
    for index, record in enumerate(records):
        if split is not None and isinstance(record, dict) and _split(record) != split:
            continue  # another split's question, read when that split is asked for
        collector.add(f"{path}#{index}", record_id(record, "qid"), lambda r=record: [_sample(r)])
    return collector.result()


def _split(record: dict) -> str:
    phrase = record.get("phrase_type")
    return "test" if isinstance(phrase, str) and phrase.startswith("test") else "train"


def _sample(record) -> Sample:
    record = as_record(record)
    qid = text(record, "qid")
    answer = text(record, "answer")
    meta = {key: record[key] for key in META_FIELDS if isinstance(record.get(key), str)}
    return Sample(
        id=qid,
        task="vqa",
        image=image_path(IMAGE_FOLDER, text(record, "image_name")),
        question=text(record, "question"),
        answer=answer,
        answer_type=answer_type(text(record, "answer_type", required=False), answer),
        split=_split(record),
        meta={"dataset": "vqa-rad", **meta},
    )
