"""Preference pairs as folders for the other tools medical-VLM users train with.

Both folders are self-contained: the images the pairs name are copied into
`images/` (DICOM and 16-bit images as the 8-bit PNG the models see), and the
records refer to them relative to the folder. Formats as the tools document them:

**ms-swift** (`swift rlhf --rlhf_type dpo`; docs: Customization/Custom-dataset,
RLHF section) reads `FOLDER/train.jsonl`, one pair per line:

    {"id": "p1", "messages": [{"role": "user", "content": "<image>QUESTION"},
                              {"role": "assistant", "content": "CHOSEN"}],
     "images": ["images/a.png"], "rejected_response": "REJECTED",
     "rejected_images": ["images/noised/a.png"]}            # visual pairs only

`rejected_images` is the rejected answer's own image (ms-swift's default is
`images`), so visual pairs keep their meaning. A visual pair whose two answers
are the same text gives no `rejected_response` (the docs ask for at least one of
the two). ms-swift has no per-pair weight.

**LLaMA-Factory** (`llamafactory-cli train --stage dpo`; docs: data/README.md,
ShareGPT preference dataset) reads the dataset `mmedpo_dpo` that
`FOLDER/dataset_info.json` describes (`--dataset_dir FOLDER`):

    [{"id": "p1", "conversations": [{"from": "human", "value": "<image>QUESTION"}],
      "chosen": {"from": "gpt", "value": "CHOSEN"}, "rejected": {"from": "gpt", "value": "REJECTED"},
      "images": ["images/a.png"]}]

Its preference format has one set of images per pair, so a visual pair (whose
rejected answer belongs to another image) cannot be written: it becomes a reject
saying so. LLaMA-Factory has no per-pair weight either.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from mmedpo.data.images import portable_image, resolve_image
from mmedpo.records import PreferencePair, Reject

IMAGE_TOKEN = "<image>"
LLAMA_FACTORY_DATASET = "mmedpo_dpo"
LLAMA_FACTORY_FILE = f"{LLAMA_FACTORY_DATASET}.json"
MS_SWIFT_FILE = "train.jsonl"
# LLaMA-Factory's dataset_info.json entry for the ShareGPT preference layout above.
LLAMA_FACTORY_INFO = {
    LLAMA_FACTORY_DATASET: {
        "file_name": LLAMA_FACTORY_FILE,
        "formatting": "sharegpt",
        "ranking": True,
        "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected", "images": "images"},
    }
}


def write_ms_swift(pairs: Sequence[PreferencePair], folder: Path, image_roots: Sequence[Path | str]) -> list[Reject]:
    images = _ImageCopier(folder, image_roots)
    lines = []
    for pair in pairs:
        record = {
            "id": pair.id,
            "messages": [
                {"role": "user", "content": IMAGE_TOKEN + pair.question},
                {"role": "assistant", "content": pair.chosen},
            ],
            "images": [images.copy(pair.image)],
        }
        if pair.rejected != pair.chosen:
            record["rejected_response"] = pair.rejected
        if pair.rejected_image:
            record["rejected_images"] = [images.copy(pair.rejected_image)]
        lines.append(json.dumps(record, ensure_ascii=False))
    (folder / MS_SWIFT_FILE).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return []


def write_llama_factory(
    pairs: Sequence[PreferencePair], folder: Path, image_roots: Sequence[Path | str]
) -> list[Reject]:
    images = _ImageCopier(folder, image_roots)
    records, rejects = [], []
    for pair in pairs:
        if pair.rejected_image:
            rejects.append(
                Reject(
                    id=pair.id,
                    source=f"{folder} (pair {pair.id})",
                    reason="a visual pair: LLaMA-Factory's preference format has one image set for chosen and "
                    "rejected, so the rejected answer's own image cannot be written",
                )
            )
            continue
        records.append(
            {
                "id": pair.id,
                "conversations": [{"from": "human", "value": IMAGE_TOKEN + pair.question}],
                "chosen": {"from": "gpt", "value": pair.chosen},
                "rejected": {"from": "gpt", "value": pair.rejected},
                "images": [images.copy(pair.image)],
            }
        )
    (folder / LLAMA_FACTORY_FILE).write_text(json.dumps(records, indent=2, ensure_ascii=False), encoding="utf-8")
    (folder / "dataset_info.json").write_text(json.dumps(LLAMA_FACTORY_INFO, indent=2), encoding="utf-8")
    return rejects


class _ImageCopier:
    """Copies each image the pairs name into FOLDER/images once; returns its path relative to FOLDER."""

    def __init__(self, folder: Path, image_roots: Sequence[Path | str]):
        if not image_roots:
            raise ValueError("this export copies the pairs' images: give the image root(s) they are relative to")
        self.folder = Path(folder)
        self.image_roots = image_roots
        self._copied: dict[str, str] = {}

    def copy(self, relative: str) -> str:
        if relative not in self._copied:
            data, converted = portable_image(resolve_image(relative, self.image_roots))
            exported = f"images/{relative}.png" if converted else f"images/{relative}"
            target = self.folder / exported
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            self._copied[relative] = exported
        return self._copied[relative]
