"""Localizers: where is the lesion in a sample's image, and how sure are we.

A localizer turns a sample into a `Region` (a pixel mask of the image plus a
confidence) or refuses with `NoRegion`, a ValueError whose message names the
sample and the reason; the visual-pair stage records that reason as a reject.
As MedKLIP in the paper, a localizer gives a region for every image it can: an
image where it finds no lesion gets the region where it would look, marked
`found=False`, with a low confidence. A region covering most of the image is
refused: it marks a failed localization, not a lesion (the reference code's
mean - std threshold often masked the whole image and noised it all).

`mmedpo.registry.LOCALIZERS` maps a configuration name to the class
(`GradCamLocalizer` is in `imaging.gradcam`); `build_localizer` makes one from
its name and options. `localizer_iou` measures a localizer against
SynthMed's true lesion masks.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from mmedpo.data.images import ImageError, resolve_image, system_error
from mmedpo.imaging.conspicuity import conspicuity
from mmedpo.imaging.noise import image_seed, read_grayscale, read_pixels
from mmedpo.imaging.regions import NoRegion, Region, check_area, disk
from mmedpo.records import Sample
from mmedpo.registry import LOCALIZERS


@dataclass
class AnnotationLocalizer:
    """The lesion as the dataset annotates it. Looked for in this order:

    - `sample.meta["lesion_mask"]`: mask file(s), any nonzero pixel (SynthMed's
      lesion masks, SLAKE's mask.png); several files are united; resized to the
      image with nearest neighbours;
    - `sample.meta["lesion_boxes"]`: boxes [x, y, w, h] in image pixels, as a
      list (of boxes, or of {"bbox": box, "name": label}), or the path of a
      SLAKE detection.json ([{"Liver": [x, y, w, h]}, ...]);
    - `boxes_file`: a COCO-style JSON (images with file_name/width/height,
      annotations with image_id/bbox/category_id, categories with id/name)
      whose file_name is the sample's image path (or, failing that, its file name).

    The region is grown by `dilation` pixels so the noise also covers the
    lesion's margin. The confidence is the lesion's conspicuity in the image
    (`imaging.conspicuity`: contrast against its surroundings and size, with
    `reference_area`): an annotation says where a lesion is, not how plainly
    the image shows it. The label joins the findings the sample lists (or the
    box names), or is "lesion".

    An image without any annotation gets no region, unless the localizer was
    given `donors` (`drawing_from`: the samples being curated): then it gets the
    annotated region of one of the donors' annotated images of its own split
    (`Sample.split`), drawn with a generator seeded by `seed` and the image's
    path, resized to the image: a region of the size, shape and place of a real
    lesion of the same split.
    Such a region has `found=False`, the label "no finding" and confidence
    `no_lesion_confidence`: the localizer is sure of no lesion there.
    """

    name: ClassVar[str] = "annotation"

    min_area: float = 0.0005
    max_area: float = 0.6
    dilation: int = 2
    boxes_file: str | Path | None = None
    reference_area: float = 0.01
    no_lesion_confidence: float = 0.1
    donors: Sequence[Sample] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        self._coco = _read_coco(Path(self.boxes_file)) if self.boxes_file else {}
        if not 0.0 <= self.no_lesion_confidence <= 1.0:
            raise ValueError(f"no_lesion_confidence must lie in [0, 1], got {self.no_lesion_confidence}")
        annotated = {(sample.split, sample.image): sample for sample in self.donors if self.annotated(sample)}
        self._donors: dict[str, list[Sample]] = {}
        for split, image in sorted(annotated):  # in an order of their own, whatever the samples' order
            self._donors.setdefault(split, []).append(annotated[split, image])

    def drawing_from(self, samples: Sequence[Sample], seed: int) -> AnnotationLocalizer:
        """This localizer, giving each image without annotation a region drawn from `samples`' lesions."""
        return replace(self, donors=tuple(samples), seed=seed)

    def localize(self, sample: Sample, image_roots: Sequence[Path | str]) -> Region:
        """The annotated region of `sample`'s image, or one drawn from the donors' lesions when it has no
        annotation; raises `NoRegion` (or `ImageError`) when there is none or it is unusable."""
        path = resolve_image(sample.image, image_roots)
        height, width = _image_size(path)
        if not self.annotated(sample) and self.donors:
            return self._drawn(sample, image_roots, height, width)
        mask, names = self._annotation(sample, image_roots, height, width)
        lesion = mask
        mask = self._grown(mask, sample)
        confidence = conspicuity(read_grayscale(path), lesion, self.dilation, self.reference_area)
        label = ", ".join(finding_names(sample) or names) or "lesion"
        return Region(mask=mask, confidence=confidence, label=label, area_fraction=float(mask.mean()))

    def _grown(self, mask: np.ndarray, sample: Sample) -> np.ndarray:
        if self.dilation > 0:
            mask = ndimage.binary_dilation(mask, structure=disk(self.dilation))
        try:
            check_area(mask, self.min_area, self.max_area, what="lesion mask")
        except NoRegion as error:
            raise NoRegion(f"sample {sample.id}: {error}") from None
        return mask

    def _drawn(self, sample: Sample, image_roots, height: int, width: int) -> Region:
        donors = self._donors.get(sample.split)
        if not donors:
            raise NoRegion(f"sample {sample.id}: no annotation, and no annotated lesion in split {sample.split!r}")
        rng = np.random.default_rng([image_seed(self.seed, sample.image), 1])  # a stream apart from the noise's
        donor = donors[int(rng.integers(len(donors)))]
        donor_height, donor_width = _image_size(resolve_image(donor.image, image_roots))
        lesion, _ = self._annotation(donor, image_roots, donor_height, donor_width)
        if lesion.shape != (height, width):
            lesion = np.asarray(Image.fromarray(lesion).resize((width, height), Image.Resampling.NEAREST))
        mask = self._grown(lesion, sample)
        label = f"no finding (region of {donor.image})"
        return Region(mask, self.no_lesion_confidence, label, float(mask.mean()), found=False)

    def annotated(self, sample: Sample) -> bool:
        """Whether the sample's image has a lesion annotation: a mask or boxes in its meta, or boxes in `boxes_file`."""
        meta = sample.meta
        return bool(meta.get("lesion_mask") or meta.get("lesion_boxes")) or bool(
            self._coco and (self._coco.get(sample.image) or self._coco.get(Path(sample.image).name))
        )

    def _annotation(self, sample, image_roots, height: int, width: int) -> tuple[np.ndarray, list[str]]:
        named = sample.meta.get("lesion_mask")
        if named:
            mask = np.zeros((height, width), dtype=bool)
            for path in [named] if isinstance(named, str) else named:
                mask |= read_mask(resolve_image(path, image_roots), (width, height))
            return mask, []
        boxes = sample.meta.get("lesion_boxes")
        if isinstance(boxes, str):
            boxes = _read_slake_detection(resolve_image(boxes, image_roots))
        elif boxes:
            boxes = [(box.get("name", ""), box["bbox"]) if isinstance(box, dict) else ("", box) for box in boxes]
        elif self._coco:
            boxes = _coco_boxes(self._coco, sample.image, height, width)
        if not boxes:
            where = f" or in {self.boxes_file}" if self.boxes_file else ""
            raise NoRegion(f"sample {sample.id}: no lesion_mask or lesion_boxes annotation{where}")
        return _draw_boxes(boxes, height, width), [name for name, _ in boxes if name]


def finding_names(sample: Sample) -> list[str]:
    """The finding names `sample.meta["findings"]` lists (names, or dicts with a "name")."""
    return [item["name"] if isinstance(item, dict) else str(item) for item in sample.meta.get("findings") or []]


def build_localizer(name: str, options: dict[str, Any] | None = None):
    """The localizer `name` (in `mmedpo.registry.LOCALIZERS`) made with `options` as keyword arguments.

    >>> build_localizer("annotation", {"dilation": 0}).dilation
    0
    """
    localizer = LOCALIZERS.load(name)
    try:
        return localizer(**(options or {}))
    except TypeError as error:
        raise ValueError(f"localizer {name!r}: bad options {sorted(options or {})}: {error}") from None


def localizer_iou(samples: Sequence[Sample], image_roots: Sequence[Path | str], localizer) -> dict[str, Any]:
    """How well `localizer` finds the true lesions: IoU of its region with `meta["lesion_mask"]`, per image.

    Images without a true lesion are left out; an image the localizer refuses
    counts as IoU 0 (and in "refused"). Returns n, median, mean, refused.
    """
    truth = AnnotationLocalizer(min_area=0.0, max_area=1.0, dilation=0)
    by_image = {sample.image: sample for sample in samples if sample.meta.get("lesion_mask")}
    scores, refused = [], 0
    for sample in by_image.values():
        true_mask = truth.localize(sample, image_roots).mask
        try:
            scores.append(mask_iou(localizer.localize(sample, image_roots).mask, true_mask))
        except NoRegion:
            refused += 1
            scores.append(0.0)
    if not scores:
        raise ValueError("no sample has a lesion_mask: the localizer's IoU cannot be measured")
    return {"n": len(scores), "median": statistics.median(scores), "mean": statistics.fmean(scores), "refused": refused}


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two masks (nonzero = inside); two empty masks agree fully (1.0)."""
    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    if a.shape != b.shape:
        raise ValueError(f"masks of shapes {a.shape} and {b.shape} cannot be compared")
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def write_mask(path: Path, mask: np.ndarray) -> None:
    """A boolean mask as the PNG `read_mask` reads back (0 or 255, one channel)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def read_mask(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """A mask file as booleans (any channel set), resized to `size` (width, height) when given; an unreadable
    file is an `ImageError` naming it (a system error propagates)."""
    try:
        with Image.open(path) as handle:
            handle.load()
            pixels = np.asarray(handle)
    except (OSError, SyntaxError, ValueError) as error:
        if system_error(error):
            raise
        raise ImageError(f"cannot read lesion mask {path}: {error}") from None
    mask = pixels.any(axis=2) if pixels.ndim == 3 else pixels != 0
    if size is not None and mask.shape != (size[1], size[0]):
        mask = np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))
    return mask


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size[::-1]  # the header is enough; no decode
    except (OSError, SyntaxError):
        return read_pixels(path)[0].shape[:2]  # DICOM, which Pillow cannot open


def _draw_boxes(boxes: list[tuple[str, Sequence[float]]], height: int, width: int) -> np.ndarray:
    canvas = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for _, (x, y, w, h) in boxes:
        draw.rectangle((round(x), round(y), round(x + w) - 1, round(y + h) - 1), fill=1)
    return np.asarray(canvas, dtype=bool)


def _read_slake_detection(path: Path) -> list[tuple[str, list[float]]]:
    try:
        entries = json.loads(path.read_text())
        return [(name, box) for entry in entries for name, box in entry.items()]
    except (OSError, ValueError, AttributeError) as error:
        if system_error(error):
            raise
        raise ImageError(f"cannot read SLAKE detection file {path}: {error}") from None


def _read_coco(path: Path) -> dict[str, list[tuple[str, list[float], int, int]]]:
    """file_name -> [(category name, bbox, image width, image height)], also under the bare file name."""
    try:
        coco = json.loads(path.read_text())
        names = {category["id"]: category["name"] for category in coco.get("categories", [])}
        images = {image["id"]: image for image in coco["images"]}
        by_file: dict[str, list] = {}
        for annotation in coco["annotations"]:
            image = images[annotation["image_id"]]
            entry = (names.get(annotation.get("category_id"), ""), annotation["bbox"], image["width"], image["height"])
            by_file.setdefault(image["file_name"], []).append(entry)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"cannot read COCO boxes file {path}: {error!r}") from None
    for file_name, entries in list(by_file.items()):
        by_file.setdefault(Path(file_name).name, entries)
    return by_file


def _coco_boxes(coco: dict, image: str, height: int, width: int) -> list[tuple[str, list[float]]]:
    entries = coco.get(image) or coco.get(Path(image).name) or []
    boxes = []
    for name, (x, y, w, h), coco_width, coco_height in entries:
        sx, sy = width / coco_width, height / coco_height  # the annotated size may differ from the file's
        boxes.append((name, [x * sx, y * sy, w * sx, h * sy]))
    return boxes
