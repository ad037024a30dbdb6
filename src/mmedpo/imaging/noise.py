"""DDPM forward noise applied only inside a lesion region.

MMedPO corrupts the lesion with the diffusion forward process,
x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, on the image scaled to [-1, 1].
Unlike the reference code, the noised values are clipped (never wrapped around
as uint8), colour channels keep their order, and every pixel outside the region
is returned bit for bit. Inside, the noise strength ramps up from the region's
edge with a Gaussian profile so the corruption has no hard seam, yet the ramp
never leaks outside the region.

The noise comes from a generator seeded with `seed` alone, so the same image,
mask, step and seed always give the same bytes; callers derive the seed from
their run seed and the image's key with `image_seed`, so curation's visual pairs
and evaluation's visual dependence noise an image the same way.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from mmedpo.data.dicom import is_dicom
from mmedpo.data.images import load_image

# DDPMScheduler's defaults (Ho et al. 2020): linear betas over 1000 steps.
BETA_START = 1e-4
BETA_END = 0.02

_MAX_VALUE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


@lru_cache(maxsize=8)
def _alphas_cumprod(num_train_timesteps: int) -> np.ndarray:
    betas = np.linspace(BETA_START, BETA_END, num_train_timesteps, dtype=np.float64)
    table = np.cumprod(1.0 - betas)
    table.setflags(write=False)  # cached and shared: nobody may edit it
    return table


def image_seed(seed: int, image: str) -> int:
    """The noise seed of `image` (its path relative to the image root) in a run seeded with `seed`."""
    return (seed * 1_000_003 + zlib.crc32(image.encode())) % 2**32


def alphas_cumprod(num_train_timesteps: int = 1000) -> np.ndarray:
    """abar_t for t = 0..num_train_timesteps-1: the same closed form as diffusers' DDPMScheduler
    with linear betas 1e-4..0.02 (read-only, computed once per length)."""
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
    return _alphas_cumprod(num_train_timesteps)


def add_regional_noise(
    image: np.ndarray,
    mask: np.ndarray,
    timestep: int = 500,
    seed: int = 0,
    edge_sigma: float = 2.0,
    num_train_timesteps: int = 1000,
    max_value: float | None = None,
) -> np.ndarray:
    """`image` (HxW or HxWxC, uint8 or uint16) with DDPM noise of step `timestep` inside `mask`.

    `mask` is HxW, bool or 0..255; intermediate values scale the noise down
    (a soft mask). An all-ones mask noises the whole image. Pixels where the
    mask is 0 are returned unchanged, bit for bit. `max_value` is the white
    level mapped to +1 (default: the dtype's maximum; 4095 for 12-bit data in
    uint16). Returns a new array of the image's shape and dtype.
    """
    image, mask = np.asarray(image), np.asarray(mask)
    return noise_batch(image[None], mask[None], timestep, [seed], edge_sigma, num_train_timesteps, max_value)[0]


def noise_batch(
    images: np.ndarray,
    masks: np.ndarray,
    timestep: int,
    seeds: Sequence[int],
    edge_sigma: float = 2.0,
    num_train_timesteps: int = 1000,
    max_value: float | None = None,
) -> np.ndarray:
    """`add_regional_noise` for a stack of images (N,H,W[,C]) with masks (N,H,W) or one shared (H,W) mask.

    Image i gets the same bytes as `add_regional_noise(images[i], masks[i], timestep, seeds[i])`.
    Only the bounding box of each region is converted, noised and blended, so the
    cost follows the lesion's size, not the image's.
    """
    images = np.asarray(images)
    masks = np.asarray(masks)
    _check_batch(images, masks, timestep, seeds, num_train_timesteps, max_value)
    if masks.ndim == 2:
        masks = np.broadcast_to(masks, images.shape[:3])
    abar = alphas_cumprod(num_train_timesteps)[timestep]
    signal, spread = np.float32(np.sqrt(abar)), np.float32(np.sqrt(1.0 - abar))
    max_value = np.float32(_MAX_VALUE[images.dtype] if max_value is None else max_value)
    out = images.copy()
    for index, (mask, seed) in enumerate(zip(masks, seeds)):
        box = _bounding_box(mask)
        if box is None:
            continue
        # The weight is exactly 0 outside the region, so there the blend returns the
        # clean value and the scaling round-trips it exactly (every uint16 value does,
        # in float32): a plain write of the whole box is bit-for-bit outside the region
        # and much faster than a masked one.
        weight = _edge_weight(mask > 0, box, edge_sigma) * _strength(mask[box])
        clean = images[index][box].astype(np.float32) * (2.0 / max_value) - 1.0
        eps = np.random.default_rng(seed).standard_normal(clean.shape, dtype=np.float32)
        noised = np.clip(signal * clean + spread * eps, -1.0, 1.0)
        if clean.ndim == 3:
            weight = weight[..., None]
        blended = clean + weight * (noised - clean)
        out[index][box] = np.rint((blended + 1.0) * (max_value / 2.0))
    return out


def noise_image_file(
    src: Path,
    mask: np.ndarray,
    out_path: Path,
    timestep: int = 500,
    seed: int = 0,
    edge_sigma: float = 2.0,
) -> Path:
    """Noise the region of the image file `src` and write it as a PNG to `out_path`.

    An 8-bit L or RGB file is noised as stored and keeps its mode. A 16-bit or
    DICOM file is noised as the 8-bit picture a model is shown (`load_image`: its
    range stretch, its window): noised as stored, the noised file would be
    rendered with a range or window of its own, and the rejected image would
    differ from the chosen one outside the lesion too. Either way every pixel
    outside the region is the model's view of the clean image. The file appears
    whole or not at all (written beside, then renamed).
    """
    pixels, max_value = pixels_to_noise(Path(src))
    noised = add_regional_noise(pixels, np.asarray(mask), timestep, seed, edge_sigma, max_value=max_value)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    Image.fromarray(noised).save(partial, format="PNG")
    os.replace(partial, out_path)
    return out_path


def pixels_to_noise(src: Path) -> tuple[np.ndarray, float]:
    """An 8-bit file's own pixels, or the model's 8-bit view of a 16-bit or DICOM file (L where it is gray)."""
    if not is_dicom(src):
        pixels, max_value = read_pixels(src)
        if pixels.dtype == np.uint8:
            return pixels, max_value
    picture = np.asarray(load_image(src))
    gray = np.array_equal(picture[..., 0], picture[..., 1]) and np.array_equal(picture[..., 1], picture[..., 2])
    return (picture[..., 0].copy() if gray else picture), 255.0


def read_pixels(src: Path | str) -> tuple[np.ndarray, float]:
    """The stored pixels of an image file (uint8 or uint16; HxW or HxWx3) and its white level.

    PNG/JPEG through Pillow (8-bit L/RGB, 16-bit grayscale), DICOM through
    pydicom (white level 2**BitsStored - 1, so 12-bit data are noised on their
    own scale).
    """
    src = Path(src)
    if is_dicom(src):
        return _dicom_pixels(src)
    try:
        with Image.open(src) as handle:
            handle.load()
            mode = handle.mode
            pixels = np.asarray(handle)
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot read image {src}: {error}") from None
    if mode not in ("L", "RGB", "I;16"):  # Pillow opens 16-bit grayscale PNG as I;16
        raise ValueError(f"{src}: cannot noise image mode {mode!r}; supported: 8-bit L or RGB, 16-bit grayscale")
    return pixels, _MAX_VALUE[pixels.dtype]


def _dicom_pixels(src: Path) -> tuple[np.ndarray, float]:
    import pydicom

    try:
        dataset = pydicom.dcmread(src)
        pixels = dataset.pixel_array
    except Exception as error:  # pydicom raises many kinds for broken or unsupported files
        raise ValueError(f"cannot read DICOM {src}: {error}") from None
    bits = int(getattr(dataset, "BitsStored", pixels.dtype.itemsize * 8))
    if pixels.dtype not in _MAX_VALUE or pixels.ndim not in (2, 3) or bits > pixels.dtype.itemsize * 8:
        raise ValueError(f"{src}: cannot noise DICOM pixels of type {pixels.dtype}, shape {pixels.shape}")
    return pixels, float(2**bits - 1)


def _check_batch(images, masks, timestep: int, seeds: Sequence[int], steps: int, max_value: float | None) -> None:
    if images.dtype not in _MAX_VALUE:
        raise ValueError(f"images must be uint8 or uint16, got {images.dtype}")
    if max_value is not None and not 0 < max_value <= _MAX_VALUE[images.dtype]:
        raise ValueError(
            f"max_value must be in (0, {_MAX_VALUE[images.dtype]:.0f}] for {images.dtype}, got {max_value}"
        )
    if images.ndim not in (3, 4):
        raise ValueError(f"images must be (N,H,W) or (N,H,W,C), got shape {images.shape}")
    if masks.shape not in (images.shape[1:3], images.shape[:3]):
        raise ValueError(f"masks of shape {masks.shape} do not fit images of shape {images.shape}")
    in_range = np.issubdtype(masks.dtype, np.integer) and np.all((masks >= 0) & (masks <= 255))
    if masks.dtype != np.bool_ and not in_range:
        raise ValueError(f"masks must be bool or integers in 0..255, got {masks.dtype}")
    if len(seeds) != len(images):
        raise ValueError(f"{len(seeds)} seeds for {len(images)} images")
    if not 0 <= timestep < steps:
        raise ValueError(f"timestep must be in 0..{steps - 1}, got {timestep}")


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice] | None:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _edge_weight(region: np.ndarray, box: tuple[slice, slice], sigma: float) -> np.ndarray:
    """1 - exp(-d^2 / 2 sigma^2) over the box, d the distance to the nearest pixel outside the region
    (so exactly 0 outside it).

    The image border is not an edge (an all-ones mask noises every pixel evenly).
    """
    crop = region[box]
    if sigma <= 0:
        return crop.astype(np.float32)
    # One ring around the box suffices: the nearest outside pixel is never farther
    # than the ring. Beyond the image the ring counts as inside.
    ring = np.ones((crop.shape[0] + 2, crop.shape[1] + 2), dtype=bool)
    top, left = box[0].start, box[1].start
    rows = slice(max(top - 1, 0), min(box[0].stop + 1, region.shape[0]))
    cols = slice(max(left - 1, 0), min(box[1].stop + 1, region.shape[1]))
    ring[rows.start - top + 1 : rows.stop - top + 1, cols.start - left + 1 : cols.stop - left + 1] = region[rows, cols]
    if ring.all():  # the region is the whole image: no edge anywhere
        return np.ones(crop.shape, dtype=np.float32)
    distance = ndimage.distance_transform_edt(ring)[1:-1, 1:-1]
    return (1.0 - np.exp(-(distance**2) / (2.0 * sigma**2))).astype(np.float32)


def _strength(mask: np.ndarray) -> np.ndarray:
    if mask.dtype == np.bool_:
        return np.float32(1.0)
    return mask.astype(np.float32) / 255.0
