"""Finding and opening images named by records.

Records name images by a path relative to an image root. A run may search
several roots in order (the dataset's folder, then the run's own `images/`
where noised images are written). A path that escapes its root is refused.

Every image reaches a model as 8-bit RGB, whatever it was on disk: PNG or JPEG
in 8 or 16 bit, L/RGB/RGBA/palette, or DICOM (see `mmedpo.data.dicom`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from mmedpo.data.dicom import is_dicom, read_dicom


class ImageError(ValueError):
    """An image that cannot be found or opened; the message names the path."""


def resolve_image(relative: str, roots: Sequence[Path | str]) -> Path:
    """The file `relative` names under the first root that has it.

    Absolute paths, `..` components and symlinks that lead outside the root are refused.
    """
    if not relative or Path(relative).is_absolute():
        raise ImageError(f"image path {relative!r} must be relative to an image root")
    if ".." in Path(relative).parts:
        raise ImageError(f"image path {relative!r} escapes its image root")
    for root in roots:
        root = Path(root).resolve()
        candidate = (root / relative).resolve()
        if not candidate.is_relative_to(root):
            raise ImageError(f"image path {relative!r} escapes its image root {root}")
        if candidate.is_file():
            return candidate
    raise ImageError(f"image {relative!r} not found under {', '.join(str(r) for r in roots)}")


def load_image(path: Path | str, frame: int = 0) -> Image.Image:
    """Open an image as 8-bit RGB, the form every model receives; `frame` of a multi-frame DICOM."""
    try:
        if is_dicom(path):
            return read_dicom(path, frame)
        with Image.open(path) as image:
            image.load()
            return to_rgb8(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"cannot read image {path}: {error}") from None


def to_rgb8(image: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode, stretching 16-bit and float data to 0..255.

    Transparent pixels become black: in a radiograph, no signal.
    """
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        image = Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def open_image(relative: str, roots: Sequence[Path | str]) -> Image.Image:
    return load_image(resolve_image(relative, roots))
