"""Localizers: where is the lesion in a sample's image, and how sure are we.

A localizer turns a sample into a `Region` (a pixel mask of the image plus a
confidence) or refuses with `NoRegion`, a ValueError whose message names the
sample and the reason; the visual-pair stage records that reason as a reject.
A region covering most of the image is refused too: it marks a failed
localization, not a lesion (the reference code's mean - std threshold often
masked the whole image and noised it all).

`LOCALIZERS` maps a configuration name to the class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from mmedpo.data.images import ImageError, resolve_image
from mmedpo.records import Sample


class NoRegion(ValueError):
    """The localizer found no usable lesion region for a sample; the message says why."""


@dataclass
class Region:
    """A lesion region: `mask` (bool, HxW of the image), `confidence` in [0, 1], `label`, `area_fraction`."""

    mask: np.ndarray
    confidence: float
    label: str
    area_fraction: float


@dataclass
class AnnotationLocalizer:
    """The lesion as the dataset annotates it: the mask file(s) named in `sample.meta["lesion_mask"]`.

    The mask (any nonzero pixel; several files are united) is resized to the
    image with nearest neighbours, then grown by `dilation` image pixels so the
    noise also covers the lesion's margin. Confidence is 1: an annotation is
    certain. The label joins `sample.meta["findings"]` (names, or dicts with a
    "name"), or is "lesion" when the sample lists none.
    """

    min_area: float = 0.0005
    max_area: float = 0.6
    dilation: int = 2

    def localize(self, sample: Sample, image_roots: Sequence[Path | str]) -> Region:
        """The annotated region of `sample`'s image; raises `NoRegion` (or `ImageError`) when unusable."""
        named = sample.meta.get("lesion_mask")
        if not named:
            raise NoRegion(f"sample {sample.id}: no lesion_mask annotation")
        with Image.open(resolve_image(sample.image, image_roots)) as image:
            size = image.size  # the header is enough; no decode
        paths = [named] if isinstance(named, str) else list(named)
        mask = np.zeros((size[1], size[0]), dtype=bool)
        for path in paths:
            mask |= _read_mask(resolve_image(path, image_roots), size)
        if self.dilation > 0:
            mask = ndimage.binary_dilation(mask, structure=_disk(self.dilation))
        area = float(mask.mean())
        if area > self.max_area:
            raise NoRegion(f"sample {sample.id}: lesion mask covers {area:.1%} of the image (max {self.max_area:.1%})")
        if area < self.min_area:
            raise NoRegion(f"sample {sample.id}: lesion mask covers {area:.3%} of the image (min {self.min_area:.3%})")
        return Region(mask=mask, confidence=1.0, label=_label(sample), area_fraction=area)


LOCALIZERS = {"annotation": AnnotationLocalizer}


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two masks (nonzero = inside); two empty masks agree fully (1.0)."""
    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    if a.shape != b.shape:
        raise ValueError(f"masks of shapes {a.shape} and {b.shape} cannot be compared")
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def _read_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    try:
        with Image.open(path) as handle:
            handle.load()
            pixels = np.asarray(handle)
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"cannot read lesion mask {path}: {error}") from None
    mask = pixels.any(axis=2) if pixels.ndim == 3 else pixels != 0
    if mask.shape != (size[1], size[0]):
        mask = np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))
    return mask


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def _label(sample: Sample) -> str:
    findings: list[Any] = sample.meta.get("findings") or []
    names = [item["name"] if isinstance(item, dict) else str(item) for item in findings]
    return ", ".join(names) or "lesion"
