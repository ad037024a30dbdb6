"""Reference log-probs computed once and kept on disk, keyed by model and data.

The DPO reference is frozen, so its log-probs of every pair's chosen and rejected
sequence never change during training. Computed in one pass before training, they let
the trainer hold and run no reference model at all. The file name is a hash of
everything the numbers depend on: the reference weights, the pairs (texts and image
bytes, in order), and the settings that change tokenization or precision. A run with the
same model and data reuses the file; any change gives a new file, never a stale one.

    path = cache_path("runs/demo/ref_logps", model_hash, dataset, {"max_length": None})
    if not path.exists():
        save_ref_logps(path, chosen, rejected)
    chosen, rejected = load_ref_logps(path, len(dataset))
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, Image, List
from safetensors.torch import load_file, save_file

# The columns whose content decides the reference log-probs (weights and kinds do not).
KEY_COLUMNS = ("prompt", "chosen", "rejected", "images", "rejected_images")


def data_hash(dataset: Dataset) -> str:
    """A hash of the pairs' texts and image bytes, in dataset order."""
    columns = [name for name in KEY_COLUMNS if name in dataset.column_names]
    view = dataset.select_columns(columns)
    for name in ("images", "rejected_images"):
        if name in columns:
            view = view.cast_column(name, List(Image(decode=False)))  # raw bytes: no decoding just to hash
    digest = hashlib.sha256()
    for row in view:
        for name in columns:
            digest.update(name.encode())
            if name in ("images", "rejected_images"):
                for image in row[name]:
                    digest.update(_image_bytes(image))
            else:
                digest.update(json.dumps(row[name], sort_keys=True).encode())
    return digest.hexdigest()


def _image_bytes(image: dict[str, Any]) -> bytes:
    # `datasets` keeps a path instead of bytes for images opened from files: hash the file's content, not its name.
    if image.get("bytes") is not None:
        return image["bytes"]
    return Path(image["path"]).read_bytes()


def cache_path(cache_dir: Path | str, model_hash: str, dataset: Dataset, settings: dict[str, Any]) -> Path:
    """The file that holds (or will hold) the reference log-probs of `dataset` under `model_hash`."""
    digest = hashlib.sha256()
    digest.update(model_hash.encode())
    digest.update(data_hash(dataset).encode())
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return Path(cache_dir) / f"ref_logps-{digest.hexdigest()[:32]}.safetensors"


def save_ref_logps(path: Path, chosen: torch.Tensor, rejected: torch.Tensor) -> None:
    """Write the reference log-probs atomically (a killed run leaves no half-written cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    tensors = {"ref_chosen_logps": chosen.float().contiguous(), "ref_rejected_logps": rejected.float().contiguous()}
    save_file(tensors, str(partial), metadata={"rows": str(len(chosen))})
    os.replace(partial, path)


def load_ref_logps(path: Path, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    tensors = load_file(str(path))
    chosen, rejected = tensors["ref_chosen_logps"], tensors["ref_rejected_logps"]
    if len(chosen) != rows or len(rejected) != rows:
        raise ValueError(f"{path}: holds {len(chosen)} reference log-probs, the dataset has {rows} pairs")
    return chosen, rejected


def add_ref_columns(dataset: Dataset, chosen: torch.Tensor, rejected: torch.Tensor) -> Dataset:
    """`dataset` with TRL's `ref_chosen_logps` and `ref_rejected_logps` columns."""
    dataset = dataset.add_column("ref_chosen_logps", chosen.tolist())
    return dataset.add_column("ref_rejected_logps", rejected.tolist())
