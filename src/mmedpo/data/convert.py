"""Preference pairs between formats: our JSONL, the MMedPO LLaVA JSON, HF datasets, TRL.

The format follows the target's name unless given (`to=`):

| name | format |
|---|---|
| `*.jsonl` | `jsonl`: our `PreferencePair` records |
| `*.json` | `mmedpo`: the MMedPO release format (LLaVA conversations) |
| `*.parquet` | `parquet`: a HF dataset with our columns, as one Parquet file |
| `*.trl.parquet` | `trl-parquet`: TRL's preference format, as one Parquet file |
| `*.trl` | `trl`: TRL's preference format, a `save_to_disk` folder |
| any other name | `hf`: a HF dataset with our columns, a `save_to_disk` folder |

Sources are recognised the same way (a dataset's layout by its columns). Bad
records are never dropped silently: they go to `TARGET.rejects.jsonl` with a
reason naming file and record. With image roots, every pair's images must be
found (and TRL output embeds them).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from mmedpo.data.hf_formats import pairs_dataset, read_dataset_pairs, save_dataset, trl_dataset
from mmedpo.data.images import ImageError, resolve_image
from mmedpo.data.llava_json import read_mmedpo_json, write_mmedpo_json
from mmedpo.records import PreferencePair, Reject, describe_error, rejects_path, write_jsonl

FORMATS = ("jsonl", "mmedpo", "parquet", "trl-parquet", "trl", "hf")


def pair_format(path: Path | str, to: str | None = None) -> str:
    """The format `to` names, or the one `path`'s name implies."""
    if to is not None:
        if to not in FORMATS:
            raise ValueError(f"unknown pair format {to!r}; formats are {', '.join(FORMATS)}")
        return to
    name = Path(path).name
    for suffix, format_name in (
        (".jsonl", "jsonl"),
        (".json", "mmedpo"),
        (".trl.parquet", "trl-parquet"),
        (".parquet", "parquet"),
        (".trl", "trl"),
    ):
        if name.endswith(suffix):
            return format_name
    return "hf"


def read_pairs_jsonl(path: Path) -> tuple[list[PreferencePair], list[Reject]]:
    """Our JSONL pairs, one record per line; a bad line becomes a reject."""
    pairs, rejects, seen = [], [], set()
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                pair = PreferencePair.model_validate_json(raw.decode("utf-8"))
                if pair.id in seen:
                    raise ValueError(f"duplicate id {pair.id!r}")
            except UnicodeDecodeError as error:
                rejects.append(Reject(source=f"{path}:{number}", reason=f"not valid UTF-8 at byte {error.start}"))
                continue
            except (ValidationError, ValueError) as error:
                rejects.append(Reject(source=f"{path}:{number}", reason=describe_error(error)))
                continue
            seen.add(pair.id)
            pairs.append(pair)
    return pairs, rejects


def read_pairs(path: Path | str, image_roots: Sequence[Path | str] = ()) -> tuple[list[PreferencePair], list[Reject]]:
    """Pairs and rejects from any format; with `image_roots`, pairs whose images are missing are rejects."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_file() and path.suffix == ".jsonl":
        pairs, rejects = read_pairs_jsonl(path)
    elif path.is_file() and path.suffix == ".json":
        result = read_mmedpo_json(path)
        pairs, rejects = result.pairs, result.rejects
    elif path.is_dir() or path.suffix == ".parquet":
        pairs, rejects = read_dataset_pairs(path)
    else:
        raise ValueError(f"{path}: unknown pair format (expected .jsonl, .json, .parquet or a dataset folder)")
    kept = []
    for pair in pairs:
        problem = pair_problem(pair, image_roots)
        if problem:
            rejects.append(Reject(id=pair.id, source=f"{path} (pair {pair.id})", reason=problem))
        else:
            kept.append(pair)
    return kept, rejects


def pair_problem(pair: PreferencePair, image_roots: Sequence[Path | str] = ()) -> str | None:
    """Why a well-formed pair still cannot be used, or None."""
    if pair.kind == "visual" and not pair.rejected_image:
        return "visual pair without a rejected_image"
    for image in filter(None, (pair.image, pair.rejected_image)):
        if Path(image).is_absolute() or ".." in Path(image).parts:
            return f"image path {image!r} escapes its image root"
        if image_roots:
            try:
                resolve_image(image, image_roots)
            except ImageError as error:
                return str(error)
    return None


def write_pairs(
    pairs: list[PreferencePair], path: Path | str, to: str | None = None, image_roots: Sequence[Path | str] = ()
) -> None:
    path = Path(path)
    format_name = pair_format(path, to)
    if format_name == "jsonl":
        write_jsonl(path, pairs)
    elif format_name == "mmedpo":
        write_mmedpo_json(pairs, path)
    elif format_name in ("parquet", "hf"):
        save_dataset(pairs_dataset(pairs), path)
    elif format_name in ("trl", "trl-parquet"):
        save_dataset(trl_dataset(pairs, image_roots), path)
    else:
        raise ValueError(f"unknown pair format {format_name!r}; formats are {', '.join(FORMATS)}")


def convert_pairs(
    source: Path | str, target: Path | str, to: str | None = None, image_roots: Sequence[Path | str] = ()
) -> dict:
    """Convert `source` to `target`; returns read = accepted + rejected counts."""
    pairs, rejects = read_pairs(source, image_roots)
    write_pairs(pairs, target, to, image_roots)
    rejected_to = rejects_path(Path(target).with_suffix(".jsonl"))
    if rejects:
        write_jsonl(rejected_to, rejects)
    return {
        "read": len(pairs) + len(rejects),
        "accepted": len(pairs),
        "rejected": len(rejects),
        "rejects": str(rejected_to),
    }
