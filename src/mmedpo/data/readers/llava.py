"""LLaVA-style files: generic conversation JSON/JSONL, and LLaVA-Med's VQA JSONL.

Generic LLaVA conversations (a JSON list or JSON Lines), images under ROOT/IMAGE_DIR:

    {"id": "x1", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\\nIs there a nodule?"}, {"from": "gpt", "value": "yes"}]}

Each human/gpt exchange is one sample; a record with several exchanges gives the
ids `x1`, `x1-2`, `x1-3`... in order.

LLaVA-Med's VQA JSONL (as used for VQA-RAD, SLAKE and PathVQA evaluation):

    {"question_id": 1, "image": "synpic1.jpg", "text": "Is ...?", "answer": "yes", "answer_type": "CLOSED"}

(`gpt4_answer` stands in when `answer` is absent.) Images are relative to ROOT,
with IMAGE_DIR in front (default: none).
"""

from __future__ import annotations

from pathlib import Path

from mmedpo.data.json_files import json_records
from mmedpo.data.readers.base import (
    Collector,
    ImageCheck,
    RecordError,
    answer_type,
    as_record,
    image_path,
    record_id,
    text,
)
from mmedpo.records import Reject, Sample

IMAGE_TOKEN = "<image>"


def read_llava(
    root: Path,
    split: str | None = None,
    file: str = "",
    image_dir: str = "",
    task: str = "vqa",
    check_images: ImageCheck = "decode",
) -> tuple[list[Sample], list[Reject]]:
    """Samples from ROOT/FILE (default `SPLIT.json`, then `SPLIT.jsonl`); all get `split` (default train)."""
    if task not in ("vqa", "report"):
        raise ValueError(f"task must be vqa or report, got {task!r}")
    path = _file(Path(root), file, split)
    collector = Collector(root, check_images)
    for source, record in json_records(path):
        build = lambda r=record: _conversation_samples(r, image_dir, task, split or "train")  # noqa: E731
        collector.add(source, record_id(record, "id"), build)
    return collector.result()


def read_llava_med_vqa(
    root: Path, split: str | None = None, file: str = "", image_dir: str = "", check_images: ImageCheck = "decode"
) -> tuple[list[Sample], list[Reject]]:
    """Samples from ROOT/FILE (default `SPLIT.jsonl`); all get `split` (default test, as LLaVA-Med evaluates)."""
    path = _file(Path(root), file, split or "test")
    collector = Collector(root, check_images)
    for source, record in json_records(path):
        build = lambda r=record: [_vqa_sample(r, image_dir, split or "test")]  # noqa: E731
        collector.add(source, record_id(record, "question_id"), build)
    return collector.result()


def _file(root: Path, file: str, split: str | None) -> Path:
    if file:
        return root / file
    for name in (f"{split or 'train'}.json", f"{split or 'train'}.jsonl"):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"{root}: no {split or 'train'}.json or .jsonl; name the file with the 'file' option")


def _conversation_samples(record, image_dir: str, task: str, split: str) -> list[Sample]:
    record = as_record(record)
    base_id = text(record, "id")
    turns = record.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2:
        raise RecordError("field 'conversations' must be a list of human and gpt turns")
    samples = []
    for number, start in enumerate(range(0, len(turns) - 1, 2), start=1):
        question, answer = _exchange(turns[start], turns[start + 1], start)
        samples.append(
            Sample(
                id=base_id if number == 1 else f"{base_id}-{number}",
                task=task,
                image=image_path(image_dir, text(record, "image")),
                question=question,
                answer=answer,
                answer_type=answer_type(None, answer) if task == "vqa" else None,
                split=split,
                meta={"dataset": "llava", "turn": number},
            )
        )
    return samples


def _exchange(human, gpt, index: int) -> tuple[str, str]:
    if not (isinstance(human, dict) and isinstance(gpt, dict)):
        raise RecordError(f"conversations[{index}] turns must be objects with 'from' and 'value'")
    if human.get("from") != "human" or gpt.get("from") != "gpt":
        raise RecordError(f"conversations[{index}] must be a human turn followed by a gpt turn")
    question = text(human, "value").replace(IMAGE_TOKEN, "").strip()
    return question, text(gpt, "value")


def _vqa_sample(record, image_dir: str, split: str) -> Sample:
    record = as_record(record)
    answer = text(record, "answer", required=False)
    if answer is None:
        answer = text(record, "gpt4_answer", required=False)
    if answer is None:
        raise RecordError("fields 'answer' and 'gpt4_answer' are both missing or null")
    return Sample(
        id=text(record, "question_id"),
        task="vqa",
        image=image_path(image_dir, text(record, "image")),
        question=text(record, "text").replace(IMAGE_TOKEN, "").strip(),
        answer=answer,
        answer_type=answer_type(text(record, "answer_type", required=False), answer),
        split=split,
        meta={"dataset": "llava-med-vqa"},
    )
