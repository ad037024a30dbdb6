"""Preference pairs as TRL's dataset, and the collator that gives each pair its weight and rejected image.

The dataset is TRL's conversational vision preference format plus MMedPO's columns
(`weight`, `rejected_images`, `kind`); the collator routes them into the batch the way TRL
routes `ref_chosen_logps`: dataset columns -> batch tensors -> the loss.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, Image

from mmedpo.data.hf_formats import TRL_PAIR_FEATURES
from mmedpo.data.images import ImageError, open_image
from mmedpo.data.messages import prompt_messages
from mmedpo.records import PreferencePair

# The columns this module adds to TRL's preference format, and the batch keys they become.
PAIR_COLUMNS = ["rejected_images", "weight", "kind"]
PAIR_BATCH_KEYS = ("weight", "is_visual")
REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
# Batch keys of the text, not of the images (TRL's collator and the processors it calls).
TEXT_KEYS = {"input_ids", "attention_mask", "completion_mask", "token_type_ids", "mm_token_type_ids"}


def pairs_to_dataset(pairs: Sequence[PreferencePair], image_roots: Sequence[Path | str]) -> Dataset:
    """Pairs in TRL's conversational vision preference format, plus MMedPO's columns.

    Columns: `prompt`, `chosen`, `rejected` (messages), `images` (the clean image),
    `rejected_images` (the rejected sequence's own image, or empty to reuse `images`),
    `weight` (the clinical weight; a missing weight counts as 1.0), `kind` and `id`.
    """
    if not pairs:
        raise ValueError("no preference pairs to train on")
    images = _EncodedImages(image_roots)
    return Dataset.from_list([_pair_row(pair, images) for pair in pairs], features=TRL_PAIR_FEATURES)


class _EncodedImages:
    """Each image opened and encoded for the dataset once, however many pairs show it.

    An image is asked by every question on it, and by text and visual pairs alike;
    encoding it (a PNG written in memory) once instead of per pair gives the
    dataset the same bytes, and was most of a demo train stage's time.
    """

    def __init__(self, image_roots: Sequence[Path | str]):
        self.image_roots = image_roots
        self._encoded: dict[str, dict] = {}

    def __getitem__(self, name: str) -> dict:
        if name not in self._encoded:
            self._encoded[name] = Image().encode_example(open_image(name, self.image_roots))
        return self._encoded[name]


def _pair_row(pair: PreferencePair, images: _EncodedImages) -> dict[str, Any]:
    try:
        image = images[pair.image]
        rejected_images = [images[pair.rejected_image]] if pair.rejected_image else []
    except ImageError as error:
        raise ValueError(f"pair {pair.id}: {error}") from None
    return {
        "id": pair.id,
        "prompt": prompt_messages(pair.question),
        "chosen": prompt_messages(pair.question, pair.chosen)[1:],
        "rejected": prompt_messages(pair.question, pair.rejected)[1:],
        "images": [image],
        "rejected_images": rejected_images,
        "weight": 1.0 if pair.weight is None else pair.weight,
        "kind": pair.kind,
    }


@dataclass
class PairRoutingCollator:
    """Wraps TRL's vision preference collator so each pair brings its weight and rejected image.

    TRL's collator builds the batch as [chosen..., rejected...] and processes the images of
    both halves in one processor call, the rejected half reusing the chosen images. Here
    that call gets each pair's own rejected image in the rejected half instead (see
    `_OwnRejectedImages`), so a batch of visual pairs processes as many images as a batch
    of text pairs. The batch gains `weight` (float, one per pair) and `is_visual` (bool,
    one per pair), and, when the rows carry precomputed reference log-probs, TRL's
    `ref_chosen_logps` and `ref_rejected_logps`.
    """

    collator: Callable[[list[dict[str, Any]]], dict[str, Any]]

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        examples = [dict(example) for example in examples]  # popping must not touch the caller's rows
        weights = [example.pop("weight", None) for example in examples]
        weights = [1.0 if weight is None else float(weight) for weight in weights]
        is_visual = [example.pop("kind", "text") == "visual" for example in examples]
        own_rejected = [example.pop("rejected_images", None) or [] for example in examples]
        ref_logps = {key: [example.pop(key) for example in examples] for key in REF_COLUMNS if key in examples[0]}
        collator = self.collator
        if any(own_rejected):
            chosen = [example["images"] if "images" in example else [example["image"]] for example in examples]
            rejected = [own or images for own, images in zip(own_rejected, chosen)]
            collator = dataclasses.replace(collator, processor=_OwnRejectedImages(collator.processor, rejected))
        batch = collator(examples)
        if any(own_rejected):
            _check_image_sizes(batch)
        for key, values in ref_logps.items():
            batch[key] = torch.tensor(values, dtype=torch.float32)
        batch["weight"] = torch.tensor(weights, dtype=torch.float32)
        batch["is_visual"] = torch.tensor(is_visual, dtype=torch.bool)
        return batch


class _OwnRejectedImages:
    """A processor that, called with the images of a [chosen..., rejected...] batch, uses `rejected` for the second
    half. Everything else is the wrapped processor's. TRL's collator calls its processor with images once, for the
    prompts of both halves (`DataCollatorForVisionPreference.torch_call`; tests/test_trl_pin.py guards that code)."""

    def __init__(self, processor, rejected: list[list]):
        self._processor = processor
        self._rejected = rejected

    def __call__(self, *args, images=None, **kwargs):
        if images is not None:
            images = list(images[: len(images) // 2]) + self._rejected
        return self._processor(*args, images=images, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._processor, name)


def _check_image_sizes(batch: dict[str, Any]) -> None:
    """Refuse a rejected image whose size differs from its chosen image's (the image-size tensors of the two halves).

    A visual pair differs from its text pair only in the rejected image: a rejected image that the processor sizes
    otherwise (Qwen2-VL's grid, LLaVA-NeXT's image_sizes) would also change the rejected prompt's image tokens.
    The sizes must be equal, not only of equal shape: a flat tensor keeps its shape when two pairs swap sizes.
    """
    for key, value in batch.items():
        if key in TEXT_KEYS or value.is_floating_point() or value.dim() == 0:
            continue
        chosen, rejected = value.chunk(2, dim=0)
        if not torch.equal(chosen, rejected):
            raise ValueError(
                f"rejected images must match their chosen images in size: {key} {rejected.tolist()}, "
                f"expected {chosen.tolist()}"
            )


def routing(collator) -> PairRoutingCollator:
    """`collator` wrapped once."""
    return collator if isinstance(collator, PairRoutingCollator) else PairRoutingCollator(collator)
