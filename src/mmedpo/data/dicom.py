"""DICOM images as the 8-bit pictures every model receives.

The steps follow the DICOM grayscale pipeline (PS3.3 C.11): stored values go
through the modality transform (rescale slope/intercept or a Modality LUT) into
physical units, then through the VOI transform (the first window centre/width,
or a VOI LUT) into display values; MONOCHROME1 is inverted so that bright always
means dense. Without a window the frame's own range is stretched to 0..255.
PALETTE COLOR goes through its colour table. Multi-frame files give the frame
asked for.

    >>> from pydicom.data import get_testdata_file
    >>> read_dicom(get_testdata_file("MR_small.dcm")).size
    (64, 64)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def is_dicom(path: Path | str) -> bool:
    """By extension, or by the 'DICM' marker after the 128-byte preamble."""
    path = Path(path)
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with path.open("rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def dicom_size(path: Path | str) -> tuple[int, int]:
    """(width, height) of the file's frames, from its header alone; ValueError when it has none."""
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError) as error:
        if isinstance(error, OSError) and error.errno is not None:
            raise  # the file system's problem, not the file's
        raise ValueError(f"not a readable DICOM file: {error}") from None
    if "Rows" not in dataset or "Columns" not in dataset:
        raise ValueError("DICOM file has no pixel data")
    return int(dataset.Columns), int(dataset.Rows)


def read_dicom(path: Path | str, frame: int = 0) -> Image.Image:
    """Frame `frame` of a DICOM file as 8-bit RGB; ValueError saying why when it cannot."""
    try:
        dataset = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError) as error:
        if isinstance(error, OSError) and error.errno is not None:
            raise  # the file system's problem, not the file's
        raise ValueError(f"not a readable DICOM file: {error}") from None
    if not any(tag in dataset for tag in _PIXEL_TAGS):
        raise ValueError("DICOM file has no pixel data")
    frames = int(dataset.get("NumberOfFrames") or 1)
    if not 0 <= frame < frames:
        raise ValueError(f"frame {frame} asked for, the file has {frames} frame(s)")
    try:
        pixels = dataset.pixel_array
    except (ValueError, AttributeError, NotImplementedError, RuntimeError) as error:
        raise ValueError(f"cannot decode DICOM pixel data: {error}") from None
    if frames > 1:
        pixels = pixels[frame]
    if dataset.get("PhotometricInterpretation") == "PALETTE COLOR":
        colours = apply_color_lut(pixels, dataset)
        if colours.dtype == np.uint16:  # a 16-bit colour table: keep its scale, not the image's range
            colours = np.round(colours / 257.0).astype(np.uint8)
        return Image.fromarray(colours, mode="RGB")
    if int(dataset.get("SamplesPerPixel") or 1) == 3:
        # pydicom already converted YBR to RGB; only the bit depth remains.
        return Image.fromarray(_stretch(pixels), mode="RGB")
    return Image.fromarray(grayscale_display(pixels, dataset), mode="L").convert("RGB")


def grayscale_display(pixels: np.ndarray, dataset: pydicom.Dataset) -> np.ndarray:
    """Stored grayscale values -> 8-bit display values (modality, VOI, MONOCHROME1)."""
    values = np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float64)
    if "VOILUTSequence" in dataset:
        display = _stretch(apply_voi_lut(values, dataset, index=0, prefer_lut=True))
    elif dataset.get("WindowWidth") is not None and dataset.get("WindowCenter") is not None:
        display = window(values, _first(dataset.WindowCenter), _first(dataset.WindowWidth))
    else:
        display = _stretch(values)
    if dataset.get("PhotometricInterpretation") == "MONOCHROME1":
        display = 255 - display
    return display


def window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """The DICOM linear window (PS3.3 C.11.2.1.2.1) onto 0..255."""
    width = max(width, 1.0)
    scaled = (values - (center - 0.5)) / (width - 1.0) + 0.5 if width > 1 else (values >= center).astype(float)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def _first(value) -> float:
    # Window centre/width may hold several alternative windows; the first is the default one.
    return float(value[0] if isinstance(value, pydicom.multival.MultiValue) else value)


def _stretch(values: np.ndarray) -> np.ndarray:
    if values.dtype == np.uint8:
        return values
    values = np.asarray(values, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) / (high - low) * 255.0).astype(np.uint8)
