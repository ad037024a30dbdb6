"""From a heat map (Grad-CAM, attention...) to a lesion region.

    smooth -> threshold at a quantile and a fraction of the peak -> keep the strongest
    connected components -> dilate -> mask or boxes -> refuse if too small or too large

A region covering most of the image is refused (`NoRegion`), never used: it
marks a failed localization, and noising it would hide the whole image (the
reference code's mean - std threshold did exactly that).

>>> import numpy as np
>>> heat = np.zeros((20, 20)); heat[5:9, 5:9] = 1.0
>>> int(map_to_region(heat, RegionOptions(smoothing=0, dilation=0)).sum())
16
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage


class NoRegion(ValueError):
    """The localizer found no usable lesion region for a sample; the message says why."""


@dataclass
class Region:
    """A lesion region: `mask` (bool, HxW of the image), `confidence` in [0, 1], `label`, `area_fraction`,
    the heat map it came from (HxW, peak 1) when the localizer has one, and whether the localizer
    `found` a lesion there (False: it sees none, and the region is where it would look)."""

    mask: np.ndarray
    confidence: float
    label: str
    area_fraction: float
    heat: np.ndarray | None = None
    found: bool = True


@dataclass(frozen=True)
class RegionOptions:
    """How a heat map becomes a region; every size is in pixels or a fraction of the image.

    A pixel is kept when its (smoothed) heat is above both the `quantile` of the
    map and `relative` times the map's peak: the quantile bounds the area from
    above, the peak fraction follows the lesion's own extent.
    """

    smoothing: float = 1.0  # Gaussian sigma applied to the map, pixels (0: none)
    quantile: float = 0.8  # keep pixels above this quantile of the map
    relative: float = 0.5  # ... and above this fraction of the peak
    components: int = 1  # keep the k components with the highest peaks (0: all); Grad-CAM: per finding
    dilation: int = 1  # grow the region by a disk of this radius, pixels
    shape: Literal["mask", "box"] = "mask"  # the thresholded shape, or each component's bounding box
    min_area: float = 0.0005  # refuse regions smaller than this fraction of the image
    max_area: float = 0.6  # refuse regions larger than this fraction (a failed localization)

    def __post_init__(self) -> None:
        if not 0.0 <= self.quantile < 1.0:
            raise ValueError(f"quantile must be in [0, 1), got {self.quantile}")
        if not 0.0 <= self.relative < 1.0:
            raise ValueError(f"relative must be in [0, 1), got {self.relative}")
        if self.shape not in ("mask", "box"):
            raise ValueError(f"shape must be 'mask' or 'box', got {self.shape!r}")
        if not 0.0 <= self.min_area < self.max_area <= 1.0:
            raise ValueError(f"need 0 <= min_area < max_area <= 1, got {self.min_area} and {self.max_area}")
        if self.smoothing < 0 or self.dilation < 0 or self.components < 0:
            raise ValueError("smoothing, dilation and components must be >= 0")


def map_to_region(heat: np.ndarray, options: RegionOptions = RegionOptions()) -> np.ndarray:
    """The boolean region (same shape as `heat`) the options make of a heat map; raises `NoRegion`."""
    heat = np.asarray(heat, dtype=np.float64)
    if heat.ndim != 2:
        raise ValueError(f"a heat map must be 2-D, got shape {heat.shape}")
    if options.smoothing > 0:
        heat = ndimage.gaussian_filter(heat, options.smoothing)
    low, high = float(heat.min()), float(heat.max())
    if not np.isfinite(high) or high <= max(low, 0.0):
        raise NoRegion("the heat map is flat or nowhere positive")
    threshold = max(float(np.quantile(heat, options.quantile)), options.relative * high)
    mask = heat > threshold if threshold < high else heat >= high
    mask = _strongest_components(mask, heat, options.components)
    if options.dilation > 0:
        mask = ndimage.binary_dilation(mask, structure=disk(options.dilation))
    if options.shape == "box":
        mask = _boxes(mask)
    check_area(mask, options.min_area, options.max_area)
    return mask


def check_area(mask: np.ndarray, min_area: float, max_area: float, what: str = "region") -> float:
    """The mask's area fraction; raises `NoRegion` when it is outside [min_area, max_area]."""
    area = float(np.mean(mask))
    if area > max_area:
        raise NoRegion(f"{what} covers {area:.1%} of the image (max {max_area:.1%}): localization failed")
    if area < min_area:
        raise NoRegion(f"{what} covers {area:.3%} of the image (min {min_area:.3%})")
    return area


def concentration(heat: np.ndarray, mask: np.ndarray) -> float:
    """How much more of the heat map's positive mass the region holds than its area would, in [0, 1]:
    (mass share - area share) / (1 - area share); 0 for a flat map, 1 when all the mass is inside.

    >>> heat = np.zeros((10, 10)); heat[:2, :5] = 1.0; heat[5:, :] = 0.1   # 10 px at 1, 50 px at 0.1
    >>> mask = heat == 1.0                                                  # area 0.1, mass 10 / 15
    >>> round(concentration(heat, mask), 4)                                 # (2/3 - 0.1) / 0.9
    0.6296
    """
    positive = np.clip(np.asarray(heat, dtype=np.float64), 0.0, None)
    mask = np.asarray(mask, dtype=bool)
    total, area = positive.sum(), float(mask.mean())
    if total <= 0 or area >= 1.0:
        return 0.0
    return max(0.0, float(positive[mask].sum() / total - area) / (1.0 - area))


def disk(radius: int) -> np.ndarray:
    """A boolean disk structuring element of the given radius."""
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def _strongest_components(mask: np.ndarray, heat: np.ndarray, keep: int) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if keep == 0 or count <= keep:
        return mask
    peaks = ndimage.maximum(heat, labels, index=np.arange(1, count + 1))
    strongest = np.argsort(peaks)[::-1][:keep] + 1
    return np.isin(labels, strongest)


def _boxes(mask: np.ndarray) -> np.ndarray:
    labels, _ = ndimage.label(mask)
    boxed = np.zeros_like(mask)
    for box in ndimage.find_objects(labels):
        boxed[box] = True
    return boxed
