"""LLaVA-style files: generic conversation JSON/JSONL, and LLaVA-Med's VQA JSONL.

Generic LLaVA conversations (a JSON list or JSON Lines), images under ROOT/IMAGE_DIR:

    {"id": "x1", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\\nIs there a nodule?"}, {"from": "gpt", "value": "yes"}]}

Each human/gpt exchange is one sample; a record with several exchanges gives the
ids `x1`, `x1-2`, `x1-3`... in order.

Which files, for both readers: `file` reads one file (its samples get the
split asked for, else the reader's default); `files` maps splits to files,
e.g. {train: vqa_train.json, test: vqa_test.json}; with neither, a split
asked for is `SPLIT.json` (or `.jsonl`), and no split reads every one of
`train`, `val` (`validate`, `validation`) and `test` that is there. Ids must
be unique across the files read.

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
    normal_split,
    record_id,
    text,
)
from mmedpo.records import Reject, Sample

IMAGE_TOKEN = "<image>"
# The file stems read when no split is asked for (validation spelt three ways, as datasets do).
SPLIT_NAMES = ["train", "val", "validate", "validation", "test"]


def read_llava(
    root: Path,
    split: str | None = None,
    file: str = "",
    files: dict[str, str] | None = None,
    image_dir: str = "",
    task: str = "vqa",
    check_images: ImageCheck = "decode",
) -> tuple[list[Sample], list[Reject]]:
    """Samples from the conversation files of ROOT (see the module docstring); `file` alone: split train."""
    if task not in ("vqa", "report"):
        raise ValueError(f"task must be vqa or report, got {task!r}")
    collector = Collector(root, check_images)
    for name, path in split_files(Path(root), split, file, files, default="train"):
        for source, record in json_records(path):
            build = lambda r=record, n=name: _conversation_samples(r, image_dir, task, n)  # noqa: E731
            collector.add(source, record_id(record, "id"), build)
    return collector.result()


def read_llava_med_vqa(
    root: Path,
    split: str | None = None,
    file: str = "",
    files: dict[str, str] | None = None,
    image_dir: str = "",
    check_images: ImageCheck = "decode",
) -> tuple[list[Sample], list[Reject]]:
    """Samples from LLaVA-Med VQA files (see the module docstring); `file` alone: split test, as LLaVA-Med evaluates."""
    collector = Collector(root, check_images)
    for name, path in split_files(Path(root), split, file, files, default="test"):
        for source, record in json_records(path):
            build = lambda r=record, n=name: [_vqa_sample(r, image_dir, n)]  # noqa: E731
            collector.add(source, record_id(record, "question_id"), build)
    return collector.result()


def split_files(
    root: Path, split: str | None, file: str, files: dict[str, str] | None, default: str
) -> list[tuple[str, Path]]:
    """(split, file) pairs to read, as the module docstring says; a file named but missing is an error."""
    if file and files:
        raise ValueError("give either 'file' or 'files' (split -> file), not both")
    if file:
        return [(normal_split(split) if split else default, root / file)]
    if files:
        chosen = {normal_split(name): path for name, path in files.items()}
        if split is not None and normal_split(split) not in chosen:
            raise ValueError(f"split {split!r} is not among the files option's splits ({', '.join(chosen)})")
        wanted = [normal_split(split)] if split is not None else list(chosen)
        return [(name, root / chosen[name]) for name in wanted]
    names = [split] if split is not None else SPLIT_NAMES
    found = [(normal_split(name), path) for name in names if (path := _split_file(root, name))]
    if not found:
        looked = ", ".join(f"{name}.json" for name in names)
        raise FileNotFoundError(f"{root}: none of {looked} (or .jsonl); name the files with the 'files' option")
    return found


def _split_file(root: Path, split: str) -> Path | None:
    for name in (f"{split}.json", f"{split}.jsonl"):
        if (root / name).is_file():
            return root / name
    return None


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
