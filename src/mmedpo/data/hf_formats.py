"""Preference pairs as Hugging Face datasets: our columns, or TRL's preference format.

Two layouts, each saved with `save_to_disk` (a folder) or as one Parquet file:

- **pairs**: one column per `PreferencePair` field; `provenance` and `scores`
  are JSON text (Arrow needs one type per column; these hold anything). Images
  stay paths relative to the image root.
- **trl**: TRL's conversational vision preference format, the one
  `mmedpo.training.pairs.pairs_to_dataset` feeds DPOTrainer: `prompt`, `chosen`,
  `rejected` (messages), `images`, plus MMedPO's `rejected_images` (the
  rejected answer's own image; empty: reuse `images`), `weight` (a missing
  weight counts 1.0), `kind`, `id`, and `pair`: the whole record as JSON, so
  that reading back is lossless. The images are embedded (HF `Image` columns,
  so the dataset travels and plain TRL can open them), as the 8-bit picture the
  models see where the file itself would mislead another tool (DICOM, 16-bit:
  `mmedpo.data.images.portable_image`); each keeps its relative path. Plain
  TRL reads neither `weight` nor `rejected_images`: only our trainer does.

Reading tells the layouts apart by their columns. A TRL dataset from elsewhere
(no `pair` column) is read from its messages, with image paths from the images.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset, Features, Image, List, Value, load_from_disk
from pydantic import ValidationError

from mmedpo.data.images import ImageError, portable_image, resolve_image
from mmedpo.data.messages import prompt_messages
from mmedpo.records import PreferencePair, Reject, describe_error

PAIR_FEATURES = Features(
    {
        "id": Value("string"),
        "sample_id": Value("string"),
        "task": Value("string"),
        "kind": Value("string"),
        "image": Value("string"),
        "rejected_image": Value("string"),
        "question": Value("string"),
        "chosen": Value("string"),
        "rejected": Value("string"),
        "answer_type": Value("string"),
        "region": Value("string"),
        "rejected_text": Value("string"),
        "provenance": Value("string"),
        "scores": Value("string"),
        "clinical_score": Value("float64"),
        "weight": Value("float64"),
    }
)
_JSON_COLUMNS = ("provenance", "scores")
_MESSAGES = List({"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})})
# TRL's conversational preference columns plus our weight and rejected image: what the trainer reads.
TRL_PAIR_FEATURES = Features(
    {
        "id": Value("string"),
        "prompt": _MESSAGES,
        "chosen": _MESSAGES,
        "rejected": _MESSAGES,
        "images": List(Image()),
        "rejected_images": List(Image()),
        "weight": Value("float64"),
        "kind": Value("string"),
    }
)
# On disk the whole record rides along as JSON, so the round trip is lossless.
TRL_FEATURES = Features({**TRL_PAIR_FEATURES, "pair": Value("string")})

_IMAGE_STORAGE = List({"bytes": Value("binary"), "path": Value("string")})
_TRL_STORAGE = Features({**TRL_FEATURES, "images": _IMAGE_STORAGE, "rejected_images": _IMAGE_STORAGE})


# --- writing ------------------------------------------------------------------------------------


def pairs_dataset(pairs: Sequence[PreferencePair]) -> Dataset:
    rows = []
    for pair in pairs:
        row = pair.model_dump()
        for column in _JSON_COLUMNS:
            row[column] = json.dumps(row[column], ensure_ascii=False)
        rows.append(row)
    return Dataset.from_list(rows, features=PAIR_FEATURES)


def trl_dataset(pairs: Sequence[PreferencePair], image_roots: Sequence[Path | str]) -> Dataset:
    """TRL's preference format with every image embedded; refused without image roots.

    Without the images, TRL's DPOTrainer would meet bare paths relative to a root it
    does not know, and fail on its first batch.
    """
    if not image_roots:
        raise ValueError("a TRL dataset embeds its images: give the image root(s) they are relative to")
    embedded: dict[str, dict] = {}
    rows = []
    for pair in pairs:
        rows.append(
            {
                "id": pair.id,
                "prompt": prompt_messages(pair.question),
                "chosen": prompt_messages(pair.question, pair.chosen)[1:],
                "rejected": prompt_messages(pair.question, pair.rejected)[1:],
                "images": [_embedded(pair.image, image_roots, embedded)],
                "rejected_images": [_embedded(pair.rejected_image, image_roots, embedded)]
                if pair.rejected_image
                else [],
                "weight": 1.0 if pair.weight is None else pair.weight,
                "kind": pair.kind,
                "pair": pair.model_dump_json(),
            }
        )
    # Built from {bytes, path} structs and cast: encoding an Image from a path would open it
    # relative to the working directory, not the image root.
    return Dataset.from_list(rows, features=_TRL_STORAGE).cast(TRL_FEATURES)


def _embedded(relative: str, image_roots: Sequence[Path | str], done: dict[str, dict]) -> dict:
    if relative not in done:  # VQA sets ask many questions about one image: read it once
        try:
            data, _ = portable_image(resolve_image(relative, image_roots))
        except ImageError as error:
            raise ValueError(f"cannot embed image: {error}") from None
        done[relative] = {"path": relative, "bytes": data}
    return done[relative]


def save_dataset(dataset: Dataset, path: Path | str, parquet: bool | None = None) -> None:
    """One Parquet file, or a `save_to_disk` folder; by default a Parquet file when the name ends in .parquet."""
    path = Path(path)
    if path.suffix == ".parquet" if parquet is None else parquet:
        path.parent.mkdir(parents=True, exist_ok=True)
        dataset.to_parquet(str(path))
    else:
        dataset.save_to_disk(str(path))


# --- reading ------------------------------------------------------------------------------------


def read_dataset_pairs(path: Path | str) -> tuple[list[PreferencePair], list[Reject]]:
    """Pairs from a Parquet file or a `save_to_disk` folder, in either layout; bad rows become rejects."""
    path = Path(path)
    rows = _rows(path)
    columns = set(rows[0]) if rows else set()
    from_row = _from_trl_row if "prompt" in columns else _from_pair_row
    pairs, rejects, seen = [], [], set()
    for index, row in enumerate(rows):
        try:
            pair = from_row(row, index)
            if pair.id in seen:
                raise ValueError(f"duplicate id {pair.id!r}")
        except (ValueError, ValidationError, TypeError, KeyError) as error:
            rejects.append(
                Reject(id=_text_or_none(row.get("id")), source=f"{path}#{index}", reason=describe_error(error))
            )
            continue
        seen.add(pair.id)
        pairs.append(pair)
    return pairs, rejects


def _rows(path: Path) -> list[dict[str, Any]]:
    # Raw Arrow rows: images stay {path, bytes} instead of being decoded.
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            raise ValueError(f"{path}: a DatasetDict folder; convert one split's folder (e.g. {path}/train)")
        if not (path / "state.json").is_file():
            raise ValueError(f"{path}: not a dataset folder (save_to_disk writes a state.json; this has none)")
        return load_from_disk(str(path)).with_format("arrow")[:].to_pylist()
    if path.suffix == ".parquet":
        try:
            return pq.read_table(path).to_pylist()
        except pa.ArrowException as error:
            raise ValueError(f"{path}: not a readable Parquet file ({error})") from None
    raise ValueError(f"{path}: not a Parquet file or a save_to_disk folder")


def _from_pair_row(row: dict, index: int) -> PreferencePair:
    record = dict(row)
    for column in _JSON_COLUMNS:
        value = record.get(column)
        record[column] = json.loads(value) if isinstance(value, str) else (value or {})
    return PreferencePair.model_validate(record)


def _from_trl_row(row: dict, index: int) -> PreferencePair:
    question = _message_text(row["prompt"], "user")
    fields: dict[str, Any] = {
        "question": question,
        "chosen": _message_text(row["chosen"], "assistant"),
        "rejected": _message_text(row["rejected"], "assistant"),
    }
    weight = row.get("weight")
    if row.get("pair"):
        pair = PreferencePair.model_validate_json(row["pair"])
        if not (pair.weight is None and weight == 1.0):  # 1.0 is what a missing weight was written as
            fields["weight"] = weight
        return PreferencePair.model_validate({**pair.model_dump(), **fields})
    images, rejected_images = row.get("images") or [], row.get("rejected_images") or []
    identifier = _text_or_none(row.get("id")) or str(index)
    return PreferencePair(
        id=identifier,
        sample_id=identifier,
        task="vqa",
        kind="visual" if rejected_images else "text",
        image=_image_path(images, "images"),
        rejected_image=_image_path(rejected_images, "rejected_images") if rejected_images else None,
        weight=weight,
        provenance={"source": "trl"},
        **fields,
    )


def _message_text(messages: Any, role: str) -> str:
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        raise ValueError(f"expected a list of {role} messages")
    message = messages[-1]
    if message.get("role") != role:
        raise ValueError(f"expected a {role} message, got role {message.get('role')!r}")
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(part.get("text") or "" for part in content if part.get("type") == "text")


def _image_path(cells: list, column: str) -> str:
    if len(cells) != 1 or not isinstance(cells[0], dict) or not cells[0].get("path"):
        raise ValueError(
            f"{column} must hold one image with a file path (embedded-only images have no path to refer to)"
        )
    return cells[0]["path"]


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
