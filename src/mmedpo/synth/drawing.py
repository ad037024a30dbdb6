"""Drawing SynthMed radiographs: a chest-like anatomy, findings, and one pixel mask per finding.

Shapes are laid out in normalised coordinates (u across, v down, both 0..1) so any
image size draws the same picture. The radiological convention holds: the
patient's RIGHT lung is drawn on the IMAGE LEFT.

All anatomy randomness (shape jitter, lung markings, film noise) is drawn from the
generator before any finding is placed. Drawing the same generator state with
and without a finding therefore gives the same anatomy, which is how the tests
measure a finding's contrast.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

SIDES = ("right", "left")
LUNG_FINDINGS = ("nodule", "effusion", "consolidation", "pneumothorax")
FINDINGS = LUNG_FINDINGS + ("cardiomegaly",)

# Image-left is the patient's right; "lateral" points away from the midline.
_LATERAL = {"right": -1.0, "left": 1.0}
# Nodule radii in pixels at 128 px: a small one is still ~2.5 px across at 64 px.
_NODULE_RADIUS = {"small": (5.5, 6.5), "large": (8.0, 9.0)}
# Effusion height as a fraction of the lung's height.
_EFFUSION_HEIGHT = {"small": (0.18, 0.24), "large": (0.38, 0.46)}
_ZONE_RANGE = {"upper": (-0.7, -0.15), "lower": (0.05, 0.6)}  # centre offset / lung half-height


@dataclass(frozen=True)
class Finding:
    """One abnormality: its name and, where it applies, the patient's side, lung zone and size."""

    name: str
    side: str | None = None
    zone: str | None = None
    size: str | None = None


@dataclass
class Radiograph:
    """A drawn image (uint8, size x size), a boolean mask per finding name and the visible lung fields."""

    pixels: np.ndarray
    masks: dict[str, np.ndarray]
    lungs: dict[str, np.ndarray]


@dataclass(frozen=True)
class _Ellipse:
    cx: float
    cy: float
    ax: float
    ay: float

    def radius(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """1 on the outline, < 1 inside."""
        return np.sqrt(((u - self.cx) / self.ax) ** 2 + ((v - self.cy) / self.ay) ** 2)


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    centres = (np.arange(size) + 0.5) / size
    v, u = np.meshgrid(centres, centres, indexing="ij")
    return u, v


def check_finding(finding: Finding) -> None:
    """Raise ValueError when a finding's attributes do not fit its name."""
    if finding.name not in FINDINGS:
        raise ValueError(f"unknown finding {finding.name!r}; known: {', '.join(FINDINGS)}")
    lung = finding.name in LUNG_FINDINGS
    if lung != (finding.side in SIDES):
        raise ValueError(f"{finding}: lung findings need a side 'right'/'left', cardiomegaly none")
    needs_zone = finding.name in ("nodule", "consolidation")
    if needs_zone != (finding.zone in _ZONE_RANGE):
        raise ValueError(f"{finding}: zone must be 'upper'/'lower' for nodule and consolidation only")
    needs_size = finding.name in ("nodule", "effusion")
    if needs_size != (finding.size in ("small", "large")):
        raise ValueError(f"{finding}: size must be 'small'/'large' for nodule and effusion only")


def draw_radiograph(findings: list[Finding], rng: np.random.Generator, size: int = 128) -> Radiograph:
    """Draw a chest-radiograph-like image with the given findings.

    At most one finding per name and one lung finding per lung, so every finding
    owns its region and every mask is unambiguous.
    """
    for finding in findings:
        check_finding(finding)
    names = [f.name for f in findings]
    sides = [f.side for f in findings if f.side]
    if len(set(names)) != len(names) or len(set(sides)) != len(sides):
        raise ValueError(f"findings {findings}: at most one of each finding and one lung finding per lung")

    chest = _draw_anatomy(rng, size, enlarged_heart="cardiomegaly" in names)
    masks: dict[str, np.ndarray] = {}
    for finding in findings:
        if finding.name == "cardiomegaly":
            masks["cardiomegaly"] = chest.heart
        else:
            draw = {
                "nodule": _nodule,
                "effusion": _effusion,
                "consolidation": _consolidation,
                "pneumothorax": _pneumothorax,
            }[finding.name]
            masks[finding.name] = draw(chest, finding, rng)
    # Film noise last, from the values drawn with the anatomy.
    image = ndimage.gaussian_filter(chest.image, 0.5 * size / 128) + 0.018 * chest.noise
    pixels = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    return Radiograph(pixels=pixels, masks=masks, lungs=chest.fields)


@dataclass
class _Chest:
    """The anatomy being drawn on: the image (float, 0..1, painted in place) and the shapes findings need."""

    image: np.ndarray
    heart: np.ndarray
    lungs: dict[str, _Ellipse]
    fields: dict[str, np.ndarray]  # the visible lung fields
    rib_shift: float
    noise: np.ndarray


def _draw_anatomy(rng: np.random.Generator, size: int, enlarged_heart: bool) -> _Chest:
    u, v = _grid(size)

    def jitter(scale: float) -> float:
        return float(rng.uniform(-scale, scale))

    lung_shapes = {
        "right": _Ellipse(0.31 + jitter(0.012), 0.47 + jitter(0.012), 0.145 + jitter(0.008), 0.29 + jitter(0.012)),
        "left": _Ellipse(0.69 + jitter(0.012), 0.48 + jitter(0.012), 0.135 + jitter(0.008), 0.28 + jitter(0.012)),
    }
    heart = _Ellipse(0.55 + jitter(0.01), 0.665 + jitter(0.01), 0.15 + jitter(0.008), 0.10 + jitter(0.006))
    if enlarged_heart:
        # Widened by 40%: a cardiothoracic ratio near 0.6 instead of 0.4. It grows sideways and
        # down, leaving room in the lower lung zones for the other findings.
        heart = _Ellipse(heart.cx + 0.01, heart.cy + 0.01, heart.ax * 1.4, heart.ay * 1.1)
    body = _Ellipse(0.5, 0.6, 0.46 + jitter(0.01), 0.56)
    rib_shift = jitter(0.012)
    markings = ndimage.gaussian_filter(rng.standard_normal((size, size)), 0.9 * size / 128)
    markings /= markings.std()
    noise = rng.standard_normal((size, size))

    heart_mask = heart.radius(u, v) <= 1
    mediastinum = np.abs(u - 0.5) < 0.065
    lung_fields = {side: (shape.radius(u, v) <= 1) & ~heart_mask & ~mediastinum for side, shape in lung_shapes.items()}
    any_lung = lung_fields["right"] | lung_fields["left"]

    image = np.full((size, size), 0.03)
    in_body = body.radius(u, v) <= 1
    image[in_body] = 0.42 + 0.1 * v[in_body]
    image[mediastinum & in_body] = 0.62
    image[(np.abs(u - 0.5) < 0.03) & in_body] += 0.1  # spine
    image[heart_mask] = 0.68
    weight = _marking_weight(size)
    image[any_lung] = 0.22 + weight[any_lung] * markings[any_lung]
    image += 0.07 * _ribs(u, v, rib_shift) * any_lung
    image += 0.18 * _clavicles(size)
    return _Chest(image, heart_mask, lung_shapes, lung_fields, rib_shift, noise)


@lru_cache(maxsize=8)
def _marking_weight(size: int) -> np.ndarray:
    """How strong lung markings are: densest near the two hila, fading to the periphery."""
    u, v = _grid(size)
    hila = [np.hypot(u - (0.5 + 0.09 * lateral), v - 0.5) for lateral in _LATERAL.values()]
    return 0.025 + 0.04 * np.exp(-np.minimum(*hila) / 0.18)


def _ribs(u: np.ndarray, v: np.ndarray, shift: float) -> np.ndarray:
    """Nine posterior ribs per side: arcs that rise slightly, then fall laterally."""
    d = np.abs(u - 0.5)
    offset = v - (0.17 + shift - 0.12 * d + 1.2 * (d - 0.1) ** 2)
    # The ribs are evenly spaced, so only the nearest one contributes to a pixel.
    nearest = np.clip(np.round(offset / 0.068), 0, 8)
    return np.exp(-(((offset - 0.068 * nearest) / 0.011) ** 2))


@lru_cache(maxsize=8)
def _clavicles(size: int) -> np.ndarray:
    u, v = _grid(size)
    bones = np.zeros_like(u)
    for sign in (-1.0, 1.0):
        start = np.array([0.5 + sign * 0.04, 0.19])
        end = np.array([0.5 + sign * 0.36, 0.13])
        step = end - start
        t = np.clip(((u - start[0]) * step[0] + (v - start[1]) * step[1]) / (step @ step), 0.0, 1.0)
        distance = np.hypot(u - start[0] - t * step[0], v - start[1] - t * step[1])
        bones = np.maximum(bones, np.exp(-((distance / 0.014) ** 2)))
    return bones


def _place(chest: _Chest, finding: Finding, radius: float, rng: np.random.Generator) -> tuple[float, float]:
    """A random pixel centre in the finding's zone whose disc of `radius` lies inside its visible lung field."""
    low, high = _ZONE_RANGE[finding.zone]
    field, lung = chest.fields[finding.side], chest.lungs[finding.side]
    size = field.shape[0]
    u, v = _grid(size)
    # Distance (in pixels) from each field pixel to the nearest pixel outside the field.
    room = ndimage.distance_transform_edt(field)
    band = (v >= lung.cy + low * lung.ay) & (v <= lung.cy + high * lung.ay)
    rows, cols = np.nonzero(band & (room > radius * size))
    if rows.size == 0:
        raise RuntimeError(f"no room for a lesion of radius {radius:.3f} in the {finding.zone} zone")  # a geometry bug
    pick = int(rng.integers(rows.size))
    return float(u[rows[pick], cols[pick]]), float(v[rows[pick], cols[pick]])


def _nodule(chest: _Chest, finding: Finding, rng: np.random.Generator) -> np.ndarray:
    size = chest.image.shape[0]
    u, v = _grid(size)
    radius = float(rng.uniform(*_NODULE_RADIUS[finding.size])) / 128
    cx, cy = _place(chest, finding, radius, rng)
    distance = np.hypot(u - cx, v - cy)
    # A solid disc with a one-pixel soft rim; the mask is the disc itself.
    profile = np.clip((radius - distance) * size + 0.5, 0.0, 1.0)
    chest.image += 0.42 * profile
    return distance <= radius


def _effusion(chest: _Chest, finding: Finding, rng: np.random.Generator) -> np.ndarray:
    u, v = _grid(chest.image.shape[0])
    lung, field = chest.lungs[finding.side], chest.fields[finding.side]
    height = float(rng.uniform(*_EFFUSION_HEIGHT[finding.size])) * 2 * lung.ay
    level = lung.cy + lung.ay - height
    # Meniscus: the fluid climbs the lateral chest wall.
    lateral = np.clip((u - lung.cx) * _LATERAL[finding.side] / lung.ax, 0.0, 1.0)
    mask = field & (v >= level - 0.06 * lateral**2)
    chest.image[mask] = 0.1 * chest.image[mask] + 0.9 * 0.6
    return mask


def _consolidation(chest: _Chest, finding: Finding, rng: np.random.Generator) -> np.ndarray:
    size = chest.image.shape[0]
    u, v = _grid(size)
    ax, ay = float(rng.uniform(0.08, 0.1)), float(rng.uniform(0.07, 0.09))
    cx, cy = _place(chest, finding, 0.04, rng)
    envelope = _Ellipse(cx, cy, ax, ay).radius(u, v)
    mask = chest.fields[finding.side] & (envelope <= 1)
    patches = ndimage.gaussian_filter(rng.standard_normal(u.shape), 2.0 * size / 128)
    patches /= patches.std()
    # Patchy: denser and lighter blotches under one envelope that fades at its rim.
    strength = 0.38 * np.clip(1.5 - envelope, 0.0, 1.0) * (0.6 + 0.4 * np.clip(patches, -1.0, 1.0))
    chest.image[mask] += strength[mask]
    return mask


def _pneumothorax(chest: _Chest, finding: Finding, rng: np.random.Generator) -> np.ndarray:
    size = chest.image.shape[0]
    u, v = _grid(size)
    lung, field = chest.lungs[finding.side], chest.fields[finding.side]
    kx, ky = float(rng.uniform(0.55, 0.65)), float(rng.uniform(0.72, 0.8))
    # The collapsed lung keeps its medial edge and base; air fills the apex and the lateral rim.
    collapsed = _Ellipse(
        lung.cx - _LATERAL[finding.side] * (1 - kx) * lung.ax, lung.cy + (1 - ky) * lung.ay, kx * lung.ax, ky * lung.ay
    )
    radius = collapsed.radius(u, v)
    mask = field & (radius > 1)
    ribs = 0.07 * _ribs(u, v, chest.rib_shift)
    chest.image[mask] = 0.04 + ribs[mask]  # air without lung markings; the ribs stay
    chest.image[field & (radius <= 1)] += 0.04  # the collapsed lung is a little denser
    pleural_line = field & (np.abs(radius - 1) * min(collapsed.ax, collapsed.ay) * size < 0.8)
    chest.image[pleural_line] += 0.28
    return mask
