"""The records every stage reads and writes, and the JSON Lines store that holds them.

A stage reads records, writes records, and never reaches into another stage.
`JsonlStore` appends one record per line and flushes it at once, so a killed
stage loses at most the line it was writing; reopening the store drops that
torn line and `done_ids()` tells the stage where to resume.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Task = Literal["vqa", "report"]
AnswerType = Literal["closed", "open"]
PairKind = Literal["text", "visual"]
NoiseRegion = Literal["lesion", "whole"]
RejectedText = Literal["model-answer", "gold"]
# The splits the stages read: supervised fine-tuning, preference curation, evaluation, validation.
PIPELINE_SPLITS = ("sft", "pref", "test", "val")

# The question of a chest X-ray report sample: SynthMed and the report datasets' readers ask it alike.
REPORT_INSTRUCTION = "Describe the findings of this chest X-ray."


class Sample(BaseModel):
    """One supervised example: an image, a prompt and its ground-truth answer."""

    model_config = ConfigDict(extra="forbid")

    id: str
    task: Task
    image: str = Field(description="image path relative to the image root")
    question: str = Field(description="the question; for reports, the instruction")
    answer: str
    answer_type: AnswerType | None = None
    split: str = "train"
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_text(cls, value: Any) -> Any:
        # Released files mix integer and string ids; the reference code crashed on that.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("image", "question", "answer")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value


class PreferencePair(BaseModel):
    """A preferred (chosen) and a dispreferred (rejected) answer to one prompt.

    Textual pairs share one image. Visual pairs give the rejected answer its own
    image (`rejected_image`, the lesion-noised one), so the pair differs in the image;
    `region` says where the noise went (the lesion, or the whole image for the ablation)
    and `rejected_text` whose text is rejected: the model's answer on the noised image
    (MMedPO), or the gold answer itself (an image-conditional pair, as mDPO's: chosen and
    rejected texts are the same and only the image differs).

    Two numbers travel with a scored pair and never mix: `clinical_score` is the paper's
    clinical relevance score in [0, 1] (the panel's aggregate, or the localizer's
    confidence; the MMedPO JSON's `weighted_score`), and `weight` is what the trainer
    multiplies the pair's loss by (that score normalised over the pairs one variant
    trains on; see scoring.variant_pairs).
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    sample_id: str
    task: Task
    kind: PairKind
    image: str
    rejected_image: str | None = None
    question: str
    chosen: str
    rejected: str
    answer_type: AnswerType | None = None
    region: NoiseRegion | None = Field(None, description="visual pairs: where the rejected image was noised")
    rejected_text: RejectedText | None = Field(
        None, description="visual pairs: the model's answer on the noised image (None: this) or the gold answer"
    )
    provenance: dict[str, Any] = Field(default_factory=dict)
    scores: dict[str, float] = Field(default_factory=dict, description="each judge's score in [0, 1]")
    clinical_score: float | None = Field(None, description="clinical relevance in [0, 1] (MMedPO's weighted_score)")
    weight: float | None = Field(None, description="the training weight: clinical_score normalised over a variant")

    @field_validator("id", "sample_id", mode="before")
    @classmethod
    def _id_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("image", "question", "chosen", "rejected")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("weight")
    @classmethod
    def _finite_non_negative(cls, value: float | None) -> float | None:
        if value is not None and (not math.isfinite(value) or value < 0):
            raise ValueError(f"weight must be a finite number >= 0, got {value}")
        return value

    @field_validator("clinical_score")
    @classmethod
    def _unit_interval(cls, value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and 0 <= value <= 1):
            raise ValueError(f"clinical_score must lie in [0, 1], got {value}")
        return value

    @model_validator(mode="after")
    def _region_of_visual_pairs(self) -> PreferencePair:
        if self.kind == "text" and (self.region is not None or self.rejected_text is not None):
            raise ValueError("region and rejected_text are for visual pairs; a text pair has neither")
        return self


class Reject(BaseModel):
    """Why one input record was not used: written to a `.rejects.jsonl` file."""

    id: str | None = None
    source: str = Field(description="file (and line or index) the record came from")
    reason: str


R = TypeVar("R", bound=BaseModel)


def describe_error(error: Exception) -> str:
    """One line saying what is wrong with a record, without a library traceback."""
    if isinstance(error, ValidationError):
        parts = []
        for item in error.errors():
            where = ".".join(str(p) for p in item["loc"])
            message = item["msg"].removeprefix("Value error, ")
            parts.append(f"{where}: {message}" if where else message)
        return "; ".join(parts)
    if type(error) is ValueError:  # our own messages already say what is wrong
        return str(error)
    return f"{type(error).__name__}: {error}"


def rejects_path(path: Path) -> Path:
    """`pairs.text.jsonl` -> `pairs.text.rejects.jsonl`."""
    name = path.name[: -len(".jsonl")] if path.name.endswith(".jsonl") else path.name
    return path.with_name(name + ".rejects.jsonl")


class JsonlStore(Generic[R]):
    """Append-only JSON Lines file of one record type, safe to resume.

    Every `extend` writes its records in one write and flushes, so an ordinary
    kill (between writes) leaves a sample whose pairs go in one `extend` whole or
    absent. A write cut short (a fatal signal inside a large write, a full disk, a
    machine that lost power) can leave the first of its lines and a torn one; on
    open the torn last line is cut off so the file is valid again, but the whole
    lines before it stay.
    """

    def __init__(self, path: Path | str, model: type[R]):
        self.path = Path(path)
        self.model = model
        self._repair_tail()

    def _repair_tail(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with self.path.open("rb+") as handle:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) == b"\n":
                return
            data = self.path.read_bytes()
            keep = data.rfind(b"\n") + 1
            handle.truncate(keep)

    def __iter__(self) -> Iterator[R]:
        if not self.path.exists():
            return
        with self.path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        yield self.model.model_validate_json(line)
                    except ValidationError as error:
                        raise ValueError(f"{self.path}:{number}: {describe_error(error)}") from None

    def read(self) -> list[R]:
        return list(self)

    def done_ids(self) -> set[str]:
        return {record.id for record in self}  # type: ignore[attr-defined]

    def append(self, record: R) -> None:
        self.extend([record])

    def extend(self, records: Iterable[R]) -> None:
        data = "".join(record.model_dump_json() + "\n" for record in records).encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)  # written even when empty: the stage ran
        with self.path.open("ab", buffering=0) as handle:
            written = handle.write(data)
            while written < len(data):  # a short write (a signal, a nearly full disk): the rest follows
                written += handle.write(data[written:])


def read_jsonl(path: Path | str, model: type[R]) -> list[R]:
    return JsonlStore(path, model).read()


def write_jsonl(path: Path | str, records: Iterable[BaseModel]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(record.model_dump_json() + "\n")
    temporary.replace(path)


def dump_json(data: Any, path: Path | str) -> None:
    """Write `data` as JSON, all or nothing: a killed run leaves the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    temporary.replace(path)
