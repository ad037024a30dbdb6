"""What every dataset reader shares: safe field access, image checks, and the collector
that turns each raw record into samples or a reject with a one-line reason.

A reader never stops on a bad record: `Collector.add` catches the record's error
and writes a `Reject` naming the file and the record, so that
read = accepted + rejected always holds. Whole-file problems (a missing split
file, an empty one, JSON that does not parse, an object where a list of records
belongs) are configuration errors: one line naming the file.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from mmedpo.data.images import ImageError, load_image, resolve_image
from mmedpo.data.json_files import RecordError, read_text
from mmedpo.records import Reject, Sample, describe_error

ImageCheck = Literal["decode", "exists", "none"]
IMAGE_CHECKS = ("decode", "exists", "none")
# Longer than any real question or report by far; a bigger field is a broken export.
MAX_TEXT = 20_000
CLOSED_ANSWERS = {"yes", "no"}


class Collector:
    """Samples and rejects of one read, with unique ids and checked images.

    `check_images`: "decode" opens every image once (finds corrupt and truncated
    files), "exists" only resolves the path under the root, "none" trusts it.
    """

    def __init__(self, root: Path, check_images: ImageCheck = "decode"):
        if check_images not in IMAGE_CHECKS:
            raise ValueError(f"check_images must be one of {', '.join(IMAGE_CHECKS)}, got {check_images!r}")
        self.root = Path(root)
        self.check_images = check_images
        self.samples: list[Sample] = []
        self.rejects: list[Reject] = []
        self._ids: set[str] = set()
        self._image_errors: dict[str, str | None] = {}

    def add(self, source: str, record_id: Any, build: Callable[[], list[Sample]]) -> None:
        """Add the samples `build` makes from one record, or one reject saying why not."""
        try:
            samples = build()
            for sample in samples:
                if sample.id in self._ids:
                    raise RecordError(f"duplicate id {sample.id!r}")
                self._check_image(sample.image)
            if len({s.id for s in samples}) != len(samples):
                raise RecordError("the record gives two samples the same id")
        except (ValueError, ValidationError, TypeError) as error:
            shown = None if record_id is None else str(record_id)[:200]
            reason = str(error) if isinstance(error, RecordError) else describe_error(error)
            self.rejects.append(Reject(id=shown, source=source, reason=reason))
            return
        self._ids.update(s.id for s in samples)
        self.samples.extend(samples)

    def reject(self, source: str, record_id: Any, reason: str) -> None:
        self.rejects.append(Reject(id=None if record_id is None else str(record_id), source=source, reason=reason))

    def result(self) -> tuple[list[Sample], list[Reject]]:
        return self.samples, self.rejects

    def _check_image(self, relative: str) -> None:
        if self.check_images == "none":
            if Path(relative).is_absolute() or ".." in Path(relative).parts:
                raise RecordError(f"image path {relative!r} escapes its image root")
            return
        if relative not in self._image_errors:  # VQA sets ask many questions about one image
            self._image_errors[relative] = self._image_problem(relative)
        if self._image_errors[relative]:
            raise RecordError(self._image_errors[relative])

    def _image_problem(self, relative: str) -> str | None:
        try:
            path = resolve_image(relative, [self.root])
            if self.check_images == "decode":
                load_image(path)
        except ImageError as error:
            return str(error)
        return None


# --- reading files (JSON and JSON Lines: mmedpo.data.json_files) ----------------------------------


def csv_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV file, plain or gzipped; a quoted field may span lines."""
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    for row in reader:
        yield reader.line_num, row


# --- fields -------------------------------------------------------------------------------------


def as_record(record: Any) -> dict:
    if isinstance(record, Exception):
        raise record
    if not isinstance(record, dict):
        raise RecordError(f"record must be an object, got {type(record).__name__}")
    return record


def text(record: dict, key: str, required: bool = True) -> str | None:
    """A string field, checked for type, UTF-8 and size; numbers become text (ids, answers like 2)."""
    value = record.get(key)
    if value is None:
        if required:
            raise RecordError(f"field {key!r} is missing or null")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RecordError(f"field {key!r} must be a string, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise RecordError(f"field {key!r} is {value}, not a value")
    value = str(value)
    check_text(key, value)
    return value.strip()


def check_text(key: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RecordError(f"field {key!r} is not valid UTF-8") from None
    if len(value) > MAX_TEXT:
        raise RecordError(f"field {key!r} is {len(value)} characters long (limit {MAX_TEXT})")


def record_id(record: Any, key: str) -> Any:
    return record.get(key) if isinstance(record, dict) else None


def answer_type(raw: str | None, answer: str) -> str:
    """CLOSED/OPEN as the datasets spell it; inferred from a yes/no answer when absent."""
    if raw is None:
        return "closed" if answer.lower().rstrip(".") in CLOSED_ANSWERS else "open"
    value = raw.strip().lower()
    if value not in ("closed", "open"):
        raise RecordError(f"unknown answer_type {raw!r} (expected CLOSED or OPEN)")
    return value


def image_path(*parts: str) -> str:
    """Join path parts with '/', the form records keep whatever the platform.

    An absolute part is refused here: joined, it would quietly become relative.
    """
    for part in parts:
        if part and (part.startswith("/") or Path(part).is_absolute()):
            raise RecordError(f"image path {part!r} must be relative to an image root")
    return "/".join(p.rstrip("/") for p in parts if p)


def find_file(root: Path, *names: str) -> Path:
    """The first of `names` that exists under `root` (plain or .gz); the error lists them all."""
    for name in names:
        for candidate in (root / name, root / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(f"{root}: none of {', '.join(names)} (or .gz) found")


def normal_split(name: str) -> str:
    """Datasets say validate, valid or val; records say val."""
    return "val" if name in ("validate", "valid", "validation", "val") else name
