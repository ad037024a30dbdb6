"""Preference pairs between formats: our JSONL, the MMedPO LLaVA JSON, HF datasets, TRL, ms-swift, LLaMA-Factory.

    convert_pairs("slake_dpo_weighted.json", "slake.trl", image_roots=["data/slake/imgs"])

The target's format follows its name unless given (`to=`); any other suffix is
refused, so a typo never silently becomes a dataset folder:

| name | format | what is written |
|---|---|---|
| `*.jsonl` | `jsonl` | our `PreferencePair` records, one per line |
| `*.json` | `mmedpo` | the MMedPO release format (LLaVA conversations), formatted as the released files |
| `*.parquet` | `parquet` | a HF dataset with our columns, one Parquet file |
| `*.hf`, or no suffix | `hf` | the same, a `save_to_disk` folder |
| `*.trl.parquet` | `trl-parquet` | TRL's preference format, images embedded, one Parquet file |
| `*.trl` | `trl` | the same, a `save_to_disk` folder |
| `*.ms-swift` | `ms-swift` | a folder for `swift rlhf --rlhf_type dpo`, images copied |
| `*.llama-factory` | `llama-factory` | a folder for LLaMA-Factory's DPO stage, images copied |

TRL, ms-swift and LLaMA-Factory open the images themselves, so those exports need
the image roots and refuse to run without them. Each writes what the target tool
would ignore as an `ExportWarning` (plain TRL ignores `weight` and
`rejected_images`: only our trainer reads them). Every export but JSON and JSONL
gets a dataset card (`mmedpo.data.cards`).

Sources: `.json` and `.jsonl` files (plain or `.gz`) hold our records or MMedPO
records, told apart by their keys whatever the name; Parquet files and
`save_to_disk` folders hold either dataset layout (`mmedpo.data.hf_formats`).
Bad records are never dropped silently: they go to `TARGET.rejects.jsonl` with a
reason naming file and record. So do pairs that cannot be used: a text pair whose
two answers are the same (case and spacing aside), a visual pair without its
rejected image, an image path escaping its root and, given image roots, an image
that is missing or does not decode (or that the image guard refuses). A source
with nothing in it, or nothing usable, is an error.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from mmedpo.data.cards import write_card
from mmedpo.data.hf_formats import pairs_dataset, read_dataset_pairs, save_dataset, trl_dataset
from mmedpo.data.images import ImageError, load_image, resolve_image
from mmedpo.data.json_files import bad_utf8, json_records
from mmedpo.data.llava_json import records_to_pairs, write_mmedpo_json
from mmedpo.data.tool_exports import write_llama_factory, write_ms_swift
from mmedpo.records import PreferencePair, Reject, describe_error, rejects_path, write_jsonl

# (suffix, format), longest suffix first.
SUFFIXES = (
    (".trl.parquet", "trl-parquet"),
    (".jsonl", "jsonl"),
    (".json", "mmedpo"),
    (".parquet", "parquet"),
    (".hf", "hf"),
    (".trl", "trl"),
    (".ms-swift", "ms-swift"),
    (".llama-factory", "llama-factory"),
)
FORMATS = ("jsonl", "mmedpo", "parquet", "trl-parquet", "trl", "hf", "ms-swift", "llama-factory")
NEEDS_IMAGES = ("trl", "trl-parquet", "ms-swift", "llama-factory")
EXPORT_ONLY = ("ms-swift", "llama-factory")
MMEDPO_KEYS = {"conversations", "rejected_conversations"}
PAIR_KEYS = {"question", "chosen", "rejected"}
IDENTICAL = "chosen and rejected are the same answer (case and spacing aside): the pair prefers nothing"


class ExportWarning(UserWarning):
    """Something the target format or tool will not use; the message says what and how many."""


def pair_format(path: Path | str, to: str | None = None) -> str:
    """The format `to` names, or the one `path`'s name implies; an unknown suffix is refused."""
    if to is not None:
        if to not in FORMATS:
            raise ValueError(f"unknown pair format {to!r}; formats are {', '.join(FORMATS)}")
        return to
    name = Path(path).name
    for suffix, format_name in SUFFIXES:
        if name.endswith(suffix):
            return format_name
    if not Path(name).suffix:
        return "hf"
    known = ", ".join(suffix for suffix, _ in SUFFIXES)
    raise ValueError(f"{path}: unknown suffix {Path(name).suffix!r} (known: {known}; or name the format with --to)")


# --- reading ------------------------------------------------------------------------------------


def read_pairs(path: Path | str, image_roots: Sequence[Path | str] = ()) -> tuple[list[PreferencePair], list[Reject]]:
    """Pairs and rejects from any source format; unusable pairs are rejects too (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    name = path.name.removesuffix(".gz")
    if any(name.endswith(suffix) for suffix, format_name in SUFFIXES if format_name in EXPORT_ONLY):
        raise ValueError(f"{path}: an export for another tool, not read back; convert the pairs it was made from")
    if path.is_dir() or name.endswith(".parquet"):
        pairs, rejects = read_dataset_pairs(path)
    elif name.endswith((".json", ".jsonl")):
        pairs, rejects = _read_json_pairs(path)
    else:
        raise ValueError(f"{path}: unknown pair format (expected .jsonl, .json, .parquet or a dataset folder)")
    kept, unusable = usable_pairs(pairs, image_roots, str(path))
    return kept, rejects + unusable


def _read_json_pairs(path: Path) -> tuple[list[PreferencePair], list[Reject]]:
    """Our records or MMedPO records, whichever the file holds (by the records' keys, not the name)."""
    records = json_records(path)
    keys = [set(record) for _, record in records if isinstance(record, dict)]
    if not keys:  # no record is an object: each is rejected, saying why, by the reader the name implies
        mmedpo = not path.name.removesuffix(".gz").endswith(".jsonl")
    elif any(MMEDPO_KEYS & k for k in keys):
        mmedpo = True
    elif any(PAIR_KEYS <= k for k in keys):
        mmedpo = False
    else:
        raise ValueError(
            f"{path}: records of no known kind (MMedPO records have conversations and rejected_conversations, "
            f"mmedpo pairs have question, chosen and rejected; the first record's keys: {', '.join(sorted(keys[0]))})"
        )
    if mmedpo:
        result = records_to_pairs(records)
        return result.pairs, result.rejects
    return _our_pairs(records)


def _our_pairs(records: list) -> tuple[list[PreferencePair], list[Reject]]:
    pairs, rejects, seen = [], [], set()
    for source, record in records:
        record_id = record.get("id") if isinstance(record, dict) else None
        try:
            if isinstance(record, Exception):  # a line that did not parse
                raise ValueError(str(record))
            if not isinstance(record, dict):
                raise ValueError(f"record must be an object, got {type(record).__name__}")
            bad = bad_utf8(record)
            if bad:
                raise ValueError(f"{bad} is not valid UTF-8")
            pair = PreferencePair.model_validate(record)
            if pair.id in seen:
                raise ValueError(f"duplicate id {pair.id!r}")
        except (ValidationError, ValueError) as error:
            shown = None if record_id is None else str(record_id)[:200]
            rejects.append(Reject(id=shown, source=source, reason=describe_error(error)))
            continue
        seen.add(pair.id)
        pairs.append(pair)
    return pairs, rejects


def usable_pairs(
    pairs: Sequence[PreferencePair], image_roots: Sequence[Path | str] = (), source: str = ""
) -> tuple[list[PreferencePair], list[Reject]]:
    """The pairs that can be trained on, and a reject for each other one; images decoded once each."""
    kept, rejects, image_problems = [], [], {}
    for pair in pairs:
        problem = pair_problem(pair, image_roots, image_problems)
        if problem:
            rejects.append(Reject(id=pair.id, source=f"{source} (pair {pair.id})".lstrip(), reason=problem))
        else:
            kept.append(pair)
    return kept, rejects


def pair_problem(
    pair: PreferencePair, image_roots: Sequence[Path | str] = (), image_problems: dict | None = None
) -> str | None:
    """Why a well-formed pair still cannot be used, or None. `image_problems` caches image checks."""
    if pair.kind == "visual" and not pair.rejected_image:
        return "visual pair without a rejected_image"
    if pair.kind == "text" and same_answer(pair.chosen, pair.rejected):
        return IDENTICAL  # a visual pair may say the same on another image: that is its point
    image_problems = {} if image_problems is None else image_problems
    for image in filter(None, (pair.image, pair.rejected_image)):
        if Path(image).is_absolute() or ".." in Path(image).parts:
            return f"image path {image!r} escapes its image root"
        if image_roots:
            if image not in image_problems:
                image_problems[image] = _image_problem(image, image_roots)
            if image_problems[image]:
                return image_problems[image]
    return None


def same_answer(first: str, second: str) -> bool:
    return " ".join(first.split()).casefold() == " ".join(second.split()).casefold()


def _image_problem(relative: str, image_roots: Sequence[Path | str]) -> str | None:
    try:
        load_image(resolve_image(relative, image_roots))
    except ImageError as error:
        return str(error)
    return None


# --- writing ------------------------------------------------------------------------------------


def write_pairs(
    pairs: list[PreferencePair],
    path: Path | str,
    to: str | None = None,
    image_roots: Sequence[Path | str] = (),
    provenance: str = "",
) -> list[Reject]:
    """Write `pairs` as `to` (or the format `path` names); returns the pairs the format cannot hold.

    Dataset exports get a card (`provenance`: a sentence saying where the pairs came
    from); what the target tool would ignore is warned about (`ExportWarning`) and
    written on the card.
    """
    path = Path(path)
    format_name = pair_format(path, to)
    _check_images_given(path, format_name, image_roots)
    rejects: list[Reject] = []
    if format_name == "jsonl":
        write_jsonl(path, pairs)
    elif format_name == "mmedpo":
        write_mmedpo_json(pairs, path)
    elif format_name in ("parquet", "hf"):
        save_dataset(pairs_dataset(pairs), path, parquet=format_name == "parquet")
    elif format_name in ("trl", "trl-parquet"):
        save_dataset(trl_dataset(pairs, image_roots), path, parquet=format_name == "trl-parquet")
    elif format_name in ("ms-swift", "llama-factory"):
        path.mkdir(parents=True, exist_ok=True)
        writer = write_ms_swift if format_name == "ms-swift" else write_llama_factory
        rejects = writer(pairs, path, image_roots)
    else:
        raise ValueError(f"unknown pair format {format_name!r}; formats are {', '.join(FORMATS)}")
    if format_name not in ("jsonl", "mmedpo"):
        rejected = {reject.id for reject in rejects}
        written = [pair for pair in pairs if pair.id not in rejected]
        lost = ignored_by_tool(format_name, written)
        for note in lost:
            warnings.warn(note, ExportWarning, stacklevel=2)
        write_card(path, format_name, written, provenance, lost)
    return rejects


def _check_images_given(target: Path, format_name: str, image_roots: Sequence[Path | str]) -> None:
    if format_name in NEEDS_IMAGES and not image_roots:
        raise ValueError(
            f"{target}: a {format_name} export carries the images its tool opens: give their image root(s) "
            "(--image-root)"
        )


def ignored_by_tool(format_name: str, pairs: Sequence[PreferencePair]) -> list[str]:
    """What the tool a format is for would silently ignore in `pairs`, one sentence each."""
    visual = sum(1 for pair in pairs if pair.rejected_image)
    weighted = sum(1 for pair in pairs if pair.weight is not None)
    notes = []
    if format_name in ("trl", "trl-parquet"):
        if visual:
            notes.append(
                f"plain TRL's DPOTrainer ignores `rejected_images`: {visual} visual pairs would train on the clean "
                "image, as text pairs (mmedpo's `train_weighted_dpo` uses them)"
            )
        if weighted:
            notes.append(
                f"plain TRL's DPOTrainer ignores `weight`: {weighted} pairs' clinical weights would count as 1 "
                "(mmedpo's `train_weighted_dpo` uses them)"
            )
    elif format_name in ("ms-swift", "llama-factory") and weighted:
        tool = "ms-swift" if format_name == "ms-swift" else "LLaMA-Factory"
        notes.append(
            f"{tool}'s DPO has no per-pair weight: {weighted} pairs' clinical weights are not exported "
            "(mmedpo's `train_weighted_dpo` uses them)"
        )
    return notes


def convert_pairs(
    source: Path | str, target: Path | str, to: str | None = None, image_roots: Sequence[Path | str] = ()
) -> dict:
    """Convert `source` to `target`; returns read = accepted + rejected counts, how many rejects were
    pairs with the same answer twice (`identical`), and where the rejects went.

    With `image_roots`, every pair's images must be found and decode. Raises ValueError when the
    source holds no record, or none that could be used (the rejects are written first).
    """
    source, target = Path(source), Path(target)
    format_name = pair_format(target, to)  # refuse a bad target before reading anything
    _check_images_given(target, format_name, image_roots)
    pairs, rejects = read_pairs(source, image_roots)
    read = len(pairs) + len(rejects)
    rejected_to = rejects_path(target.with_suffix(".jsonl"))
    rejected_to.unlink(missing_ok=True)  # a stale file from an earlier run would mislead
    if read == 0:
        raise ValueError(f"{source}: no records in it")
    if rejects:
        write_jsonl(rejected_to, rejects)
    if not pairs:
        raise ValueError(
            f"{source}: none of its {read} records could be used (reasons in {rejected_to}; the first: "
            f"{rejects[0].reason})"
        )
    provenance = f"Converted by `mmedpo convert` from `{source.name}`: {read} records read"
    provenance += f", {len(rejects)} not usable (reasons in `{rejected_to.name}`)." if rejects else "."
    unwritable = [
        reject.model_copy(update={"source": f"{source} (pair {reject.id})"})
        for reject in write_pairs(pairs, target, format_name, image_roots, provenance)
    ]
    if unwritable:
        rejects += unwritable
        write_jsonl(rejected_to, rejects)
    return {
        "read": read,
        "accepted": len(pairs) - len(unwritable),
        "rejected": len(rejects),
        "identical": sum(1 for reject in rejects if reject.reason == IDENTICAL),
        "rejects": str(rejected_to),
    }
