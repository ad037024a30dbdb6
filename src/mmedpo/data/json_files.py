"""JSON and JSON Lines files of records, whichever container a file turns out to hold.

Mistakes in the container are the file's: they raise one ValueError naming the
file (an empty file, UTF-16 or binary data, a JSON object where a list of records
belongs, a JSON list that does not parse). Mistakes inside a record are the
record's: `json_records` hands them on in the record's place, so the caller
rejects that record alone and reads on.

    for source, record in json_records(path):   # source: "FILE#3" (list) or "FILE:4" (line)
        ...

A UTF-8 byte-order mark is dropped. Bytes that are not UTF-8 survive as lone
surrogates, so that only the records holding them are rejected (`bad_utf8`).
Gzipped files (`.gz`) are read as their contents.
"""

from __future__ import annotations

import codecs
import gzip
import json
from pathlib import Path
from typing import Any


class RecordError(ValueError):
    """What is wrong with one record; becomes the reject's reason."""


def read_text(path: Path | str) -> str:
    """The file as text: UTF-8 (a BOM dropped), plain or gzipped; the container checks above."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ValueError(f"{path}: UTF-16 text; save it as UTF-8")
    if b"\x00" in data:
        raise ValueError(f"{path}: binary data, not a UTF-8 text file")
    text = data.decode("utf-8-sig", errors="surrogateescape")
    if not text.strip():
        raise ValueError(f"{path}: empty file")
    return text


def load_json(path: Path | str) -> Any:
    """One JSON document (whatever its type); a parse error names file, line and column."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON at line {error.lineno} column {error.colno}: {error.msg}") from None


def json_records(path: Path | str) -> list[tuple[str, Any]]:
    """(source, record) of each record of a JSON list or a JSON Lines file.

    The content decides, not the name: a file whose whole text is a JSON list is a
    list (even named .jsonl); otherwise it is JSON Lines, one record per non-blank
    line, where a line that does not parse stands as a RecordError in its place.
    A single JSON object is refused in a `.json` file (a list belongs there; its keys
    are named, to show where the records are) and is one record in a `.jsonl` file.
    """
    path = Path(path)
    text = read_text(path)
    if text.lstrip().startswith(("[", "{")):
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            if error.msg != "Extra data" and not _is_json_lines(path):  # "Extra data": several documents, lines
                raise ValueError(
                    f"{path}: invalid JSON at line {error.lineno} column {error.colno}: {error.msg}"
                ) from None
        else:
            if isinstance(document, list):
                return [(f"{path}#{index}", record) for index, record in enumerate(document)]
            if _is_json_lines(path):
                return [(f"{path}:{_first_line(text)}", document)]
            keys = ", ".join(list(document)[:8])
            raise ValueError(
                f"{path}: a JSON object (keys: {keys}), not a list of records; "
                "records go in a JSON list, or one per line in a .jsonl file"
            )
    return list(_json_lines(path, text))


def _json_lines(path: Path, text: str):
    # Split on newlines only: str.splitlines would also split inside records at U+2028 and friends.
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                yield f"{path}:{number}", json.loads(line)
            except json.JSONDecodeError as error:
                yield f"{path}:{number}", RecordError(f"invalid JSON: {error.msg} (column {error.colno})")


def _is_json_lines(path: Path) -> bool:
    return path.name.removesuffix(".gz").endswith(".jsonl")


def _first_line(text: str) -> int:
    return next(number for number, line in enumerate(text.split("\n"), start=1) if line.strip())


def bad_utf8(value: Any, where: str = "") -> str | None:
    """The first field of `value` (a parsed record) holding bytes that were not UTF-8, or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where or "the record"
    elif isinstance(value, dict):
        for key, item in value.items():
            found = bad_utf8(key, f"{where}.{key}".lstrip(".")) or bad_utf8(item, f"{where}.{key}".lstrip("."))
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = bad_utf8(item, f"{where}[{index}]")
            if found:
                return found
    return None
