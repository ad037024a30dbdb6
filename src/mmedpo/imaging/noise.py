"""DDPM forward noise applied only inside a lesion region.

MMedPO corrupts the lesion with the diffusion forward process,
x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, on the image scaled to [-1, 1].
Unlike the reference code, the noised values are clipped (never wrapped around
as uint8) and colour channels keep their order. Every pixel of the region gets
the configured step in full: the lesion is hidden as configured, to its edge.
So that the corruption has no hard seam, the noise fades out beyond the region
with a Gaussian profile (weight exp(-d^2 / 2 sigma^2) at distance d from it, cut
at 3 sigma); every pixel farther than that (`FEATHER_REACH` sigmas, rounded up)
is returned bit for bit, and with `edge_sigma=0` every pixel outside the region is.

The schedule is the linear DDPM one (betas 1e-4..0.02 over 1000 steps, diffusers'
default), where abar_500 = 0.078: at t = 500 the lesion is nearly destroyed. The
official MMedPO code's `add_diffusion_noise` helper uses a sigmoid schedule, where
abar_500 is about 0.745 (most of the signal kept). See docs/method.md.

The noise comes from a generator seeded with `seed` alone, so the same image,
mask, step and seed always give the same bytes; callers derive the seed from
their run seed and the image's key with `image_seed`, so curation's visual pairs
and evaluation's visual dependence noise an image the same way.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from mmedpo.data.dicom import is_dicom
from mmedpo.data.images import load_image, system_error

# DDPMScheduler's defaults (Ho et al. 2020): linear betas over 1000 steps.
BETA_START = 1e-4
BETA_END = 0.02

_MAX_VALUE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}
FEATHER_REACH = 3.0  # the fade beyond the region stops this many edge_sigmas away (weight 0.011 there)


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

    `mask` is HxW, bool or 0..255. A bool mask gets the full step on every
    pixel inside and a fade of `edge_sigma` pixels outside (see the module
    docstring; `noise_weight` gives every pixel's share). A 0..255 mask is a
    soft mask taken as given: its value / 255 scales the noise, with no fade, and
    its zero pixels are returned bit for bit. `max_value` is the white
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
    Only the bounding box of each region and its fade is converted, noised and blended,
    so the cost follows the lesion's size, not the image's.
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
        feather = edge_sigma if mask.dtype == np.bool_ else 0.0
        box = _bounding_box(mask, _reach(feather))
        if box is None:
            continue
        # The weight is exactly 0 beyond the fade, so there the blend returns the
        # clean value and the scaling round-trips it exactly (every uint16 value does,
        # in float32): a plain write of the whole box is bit-for-bit there and much
        # faster than a masked one.
        weight = _weight(mask[box], feather)
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
        if system_error(error):  # EACCES, EIO...: the machine's problem, not the image's
            raise
        raise ValueError(f"cannot read image {src}: {error}") from None
    if mode not in ("L", "RGB", "I;16"):  # Pillow opens 16-bit grayscale PNG as I;16
        raise ValueError(f"{src}: cannot noise image mode {mode!r}; supported: 8-bit L or RGB, 16-bit grayscale")
    return pixels, _MAX_VALUE[pixels.dtype]


def read_grayscale(path: Path | str) -> np.ndarray:
    """The image at `path` (8/16-bit, L/RGB, DICOM) as float grayscale in [0, 1] of its bit depth."""
    pixels, max_value = read_pixels(path)
    gray = pixels.mean(axis=2) if pixels.ndim == 3 else pixels
    return gray.astype(np.float32) / np.float32(max_value)


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


def noise_weight(mask: np.ndarray, edge_sigma: float = 2.0) -> np.ndarray:
    """The share of the step's noise each pixel of the image gets from `mask` (HxW floats in [0, 1]):
    1 on a bool region, its fade beyond, 0 elsewhere; a soft mask's value / 255."""
    mask = np.asarray(mask)
    return _weight(mask, edge_sigma if mask.dtype == np.bool_ else 0.0) if mask.any() else np.zeros(mask.shape)


def _reach(sigma: float) -> int:
    """How far, in whole pixels, the fade beyond the region goes."""
    return math.ceil(FEATHER_REACH * sigma) if sigma > 0 else 0


def _bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, slice] | None:
    """The region's bounding box grown by `margin` pixels on each side, within the image."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    height, width = mask.shape
    return (
        slice(max(rows[0] - margin, 0), min(rows[-1] + 1 + margin, height)),
        slice(max(cols[0] - margin, 0), min(cols[-1] + 1 + margin, width)),
    )


def _weight(crop: np.ndarray, sigma: float) -> np.ndarray:
    """The noise weight over a box: 1 inside a bool region, exp(-d^2 / 2 sigma^2) at distance d
    <= FEATHER_REACH sigma outside it, else 0; a soft (0..255) mask's value / 255."""
    if crop.dtype != np.bool_:
        return crop.astype(np.float32) / 255.0
    if sigma <= 0:
        return crop.astype(np.float32)
    # The box holds every region pixel, so the distance to the nearest one is exact.
    distance = ndimage.distance_transform_edt(~crop)
    fade = np.exp(-(distance**2) / (2.0 * sigma**2))
    return np.where(distance <= _reach(sigma), fade, 0.0).astype(np.float32)
