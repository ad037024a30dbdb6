"""Finding and opening images named by records.

Records name images by a path relative to an image root. A run may search
several roots in order (the dataset's folder, then the run's own `images/`
where noised images are written). A path that escapes its root is refused.

Every image reaches a model as 8-bit RGB, whatever it was on disk: PNG or JPEG
in 8 or 16 bit, L/RGB/RGBA/palette, or DICOM (see `mmedpo.data.dicom`).

Images a model cannot sensibly take are refused before they are decoded (from
the size in their header), so one bad file costs nothing:

- more than `MAX_PIXELS` (50 million: a 7071 x 7071 image; full-field
  mammograms, ~4000 x 5000, and large radiographs fit; whole-slide pathology
  images must be tiled first);
- a long side more than `MAX_ASPECT_RATIO` (20) times the short one: image
  processors scale the short side up to their input size, so a 65535 x 1 image
  grew to 18 GB in a CLIP processor (336 px) before it was killed, while 20 : 1
  (6720 x 336) took 0.14 s. Long-leg radiographs, about 1 : 4, fit.
"""

from __future__ import annotations

import errno
import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from mmedpo.data.dicom import dicom_size, is_dicom, read_dicom

MAX_PIXELS = 50_000_000
MAX_ASPECT_RATIO = 20


# Errors that say a file is missing or is no file: a problem of the data, recorded as a reject.
_MISSING = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ELOOP}


def system_error(error: BaseException) -> bool:
    """An OS error of the machine (no permission, a full disk, an I/O error), never turned into a reject."""
    return isinstance(error, OSError) and error.errno is not None and error.errno not in _MISSING


class ImageError(ValueError):
    """An image that cannot be found, opened or used; the message names the path."""


def resolve_image(relative: str, roots: Sequence[Path | str]) -> Path:
    """The file `relative` names under the first root that has it.

    Absolute paths, `..` components and symlinks that lead outside the root (or round in a loop) are refused.
    """
    if not relative or Path(relative).is_absolute():
        raise ImageError(f"image path {relative!r} must be relative to an image root")
    if ".." in Path(relative).parts:
        raise ImageError(f"image path {relative!r} escapes its image root")
    for root in roots:
        root = Path(root).resolve()
        try:
            candidate = (root / relative).resolve()
        except (RuntimeError, OSError) as error:  # Python 3.11 raises RuntimeError on a loop, later ones OSError
            if isinstance(error, OSError) and error.errno != errno.ELOOP:
                raise
            raise ImageError(f"image path {relative!r} under {root} is a symlink loop") from None
        if not candidate.is_relative_to(root):
            raise ImageError(f"image path {relative!r} escapes its image root {root}")
        if candidate.is_file():
            return candidate
    raise ImageError(f"image {relative!r} not found under {', '.join(str(r) for r in roots)}")


def load_image(path: Path | str, frame: int = 0) -> Image.Image:
    """Open an image as 8-bit RGB, the form every model receives; `frame` of a multi-frame DICOM.

    A file that is not a readable image, or whose size the guard refuses, raises ImageError.
    Errors of the file system itself (permission denied, a disk error) are not the image's
    fault and propagate as they are.
    """
    try:
        if is_dicom(path):
            check_size(path, *dicom_size(path))
            return read_dicom(path, frame)
        with _open(path) as image:
            check_size(path, *image.size)
            image.load()
            return to_rgb8(image)
    except ImageError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageError(f"image {path} is too large: {error}") from None
    except OSError as error:
        if error.errno is not None:  # EACCES, EIO...: the system's problem, not the image's
            raise
        raise ImageError(f"cannot read image {path}: {error}") from None
    except (SyntaxError, ValueError) as error:
        raise ImageError(f"cannot read image {path}: {error}") from None


def _open(path: Path | str) -> Image.Image:
    # PIL warns between its own limit and twice it; our guard refuses those images with a reason anyway.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


def check_size(path: Path | str, width: int, height: int) -> None:
    """Refuse images too big or too elongated for an image processor (limits in the module docstring)."""
    if width < 1 or height < 1:
        raise ImageError(f"image {path} is {width} x {height} pixels: empty")
    if width * height > MAX_PIXELS:
        raise ImageError(f"image {path} is {width} x {height} = {width * height} pixels (limit {MAX_PIXELS})")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageError(
            f"image {path} is {width} x {height} pixels: more elongated than {MAX_ASPECT_RATIO} : 1 (the limit)"
        )


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


def portable_image(path: Path | str) -> tuple[bytes, bool]:
    """The image as bytes any PIL-based tool reads the way our models see it, and whether they are a new PNG.

    An 8-bit grey or RGB file is passed on as it is. DICOM, 16-bit, float, palette and
    transparent images become a PNG of `load_image`'s picture: other tools would fail on
    DICOM, clip 16-bit values to white, or drop transparency instead of compositing it.
    """
    picture = load_image(path)  # checks the image as a model would need it
    if not is_dicom(path):
        with _open(path) as image:
            if image.mode in ("L", "RGB"):
                return Path(path).read_bytes(), False
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue(), True
