"""How visible a lesion is: the annotation localizer's confidence that a lesion is there.

An annotation says where a lesion is, not how plainly the image shows it. A faint
consolidation and a bright nodule are both annotated with certainty, yet only the
second can be read off the image; a visual pair hiding the first teaches little.
So the confidence follows the lesion's conspicuity, from its contrast against its
surroundings and its size (Rose's model of detectability: a uniform object is seen
by its contrast-to-noise ratio times the square root of its area):

    CNR        = |mean(lesion) - mean(around)| / sqrt((var(lesion) + var(around)) / 2)
    d          = CNR * sqrt(area / reference_area)        area: fraction of the image
    confidence = d / (1 + d)                              0.5 at d = 1, -> 1 as d grows

"around" is a ring outside the region (the lesion grown by the localizer's
margin), as wide as the lesion's equivalent radius (at least 2 pixels), so the
lesion is compared with its own neighbourhood, not with the whole image. An
image with several separate lesions gets the confidence of its most conspicuous
one (each connected component is measured on its own: a dark pneumothorax and a
bright heart averaged together would look like nothing).
`reference_area` (1% of the image by default) is the area at which a lesion of
CNR 1 gets confidence 0.5; it makes the figure independent of the image's pixel
count. See docs/method.md.

    >>> import numpy as np
    >>> pixels = np.full((40, 40), 0.3); pixels[::2, :] = 0.5       # surroundings: mean 0.4, std 0.1
    >>> lesion = np.zeros((40, 40), bool); lesion[16:24, 16:24] = True; pixels[lesion] = 0.6
    >>> round(contrast_to_noise(pixels, lesion), 3)                  # 0.2 / sqrt((0 + 0.01) / 2)
    2.828
    >>> round(conspicuity(pixels, lesion), 3)                        # d = 2.828 * sqrt(0.04 / 0.01) = 5.657
    0.85
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

NOISE_FLOOR = 1e-3  # of the [0, 1] range: a perfectly flat lesion and ring still have a finite CNR


def contrast_to_noise(pixels: np.ndarray, lesion: np.ndarray, margin: int = 0) -> float:
    """The lesion's contrast-to-noise ratio against a ring around it (0 when there is no ring).

    `pixels` is a grayscale image (any scale), `lesion` a bool mask of its size;
    the ring starts `margin` pixels outside the lesion.
    """
    pixels = np.asarray(pixels, dtype=np.float64)
    lesion = np.asarray(lesion, dtype=bool)
    inside = pixels[lesion]
    if inside.size == 0:
        return 0.0
    distance = ndimage.distance_transform_edt(~lesion)
    width = max(2.0, math.sqrt(inside.size / math.pi))  # the lesion's equivalent radius
    around = pixels[(distance > margin) & (distance <= margin + width)]
    if around.size == 0:
        return 0.0
    spread = max(math.sqrt((inside.var() + around.var()) / 2.0), NOISE_FLOOR * max(float(np.ptp(pixels)), 1e-12))
    return abs(float(inside.mean()) - float(around.mean())) / spread


def conspicuity(pixels: np.ndarray, lesion: np.ndarray, margin: int = 0, reference_area: float = 0.01) -> float:
    """d / (1 + d) with d = CNR * sqrt(area / reference_area) of the most conspicuous connected part of
    `lesion`: how plainly the image shows a lesion, in [0, 1); 0 for an empty mask."""
    if reference_area <= 0:
        raise ValueError(f"reference_area must be > 0, got {reference_area}")
    labels, count = ndimage.label(np.asarray(lesion, dtype=bool))
    best = 0.0
    for index in range(1, count + 1):
        part = labels == index
        best = max(best, contrast_to_noise(pixels, part, margin) * math.sqrt(float(part.mean()) / reference_area))
    return best / (1.0 + best)
