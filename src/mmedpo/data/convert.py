"""Preference pairs between formats: our JSONL and the MMedPO LLaVA JSON.

The format follows the file name: `*.jsonl` holds our `PreferencePair` records,
`*.json` the MMedPO release format. Bad records are never dropped silently:
they go to `TARGET.rejects.jsonl` with a reason naming file and record.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from mmedpo.data.llava_json import read_mmedpo_json, write_mmedpo_json
from mmedpo.records import PreferencePair, Reject, describe_error, rejects_path, write_jsonl


def read_pairs_jsonl(path: Path) -> tuple[list[PreferencePair], list[Reject]]:
    """Our JSONL pairs, one record per line; a bad line becomes a reject."""
    pairs, rejects, seen = [], [], set()
    with path.open(encoding="utf-8", errors="strict") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                pair = PreferencePair.model_validate_json(line)
                if pair.id in seen:
                    raise ValueError(f"duplicate id {pair.id!r}")
            except (ValidationError, ValueError) as error:
                rejects.append(Reject(source=f"{path}:{number}", reason=describe_error(error)))
                continue
            seen.add(pair.id)
            pairs.append(pair)
    return pairs, rejects


def read_pairs(path: Path | str) -> tuple[list[PreferencePair], list[Reject]]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".jsonl":
        return read_pairs_jsonl(path)
    if path.suffix == ".json":
        result = read_mmedpo_json(path)
        return result.pairs, result.rejects
    raise ValueError(f"{path}: unknown pair format (expected .jsonl or .json)")


def write_pairs(pairs: list[PreferencePair], path: Path | str) -> None:
    path = Path(path)
    if path.suffix == ".jsonl":
        write_jsonl(path, pairs)
    elif path.suffix == ".json":
        write_mmedpo_json(pairs, path)
    else:
        raise ValueError(f"{path}: unknown pair format (expected .jsonl or .json)")


def convert_pairs(source: Path | str, target: Path | str) -> dict:
    """Convert `source` to `target`; returns read = accepted + rejected counts."""
    pairs, rejects = read_pairs(source)
    write_pairs(pairs, target)
    rejected_to = rejects_path(Path(target).with_suffix(".jsonl"))
    if rejects:
        write_jsonl(rejected_to, rejects)
    return {
        "read": len(pairs) + len(rejects),
        "accepted": len(pairs),
        "rejected": len(rejects),
        "rejects": str(rejected_to),
    }
