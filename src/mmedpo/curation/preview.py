"""Preview panels of the visual stage: image | heat map | region | noised image, one PNG per sample.

`mmedpo curate visual --preview N` writes them for the first N images, so a
user can see at a glance whether the localizer finds the lesion and how much
the noise hides. Drawn with Pillow (and a matplotlib colour map), no display needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw

from mmedpo.data.images import load_image, open_image
from mmedpo.imaging.regions import Region
from mmedpo.records import Sample

TILE = 192  # pixels per panel tile
TITLE_HEIGHT = 16


def write_panel(
    path: Path, image: np.ndarray, heat: np.ndarray, mask: np.ndarray, noised: np.ndarray, title: str = ""
) -> Path:
    """Write the four-tile panel PNG to `path`. `image`/`noised` are uint8/uint16 pixels, `heat` HxW
    (any scale), `mask` HxW bool."""
    gray = _to_rgb(image)
    heat = np.asarray(heat, dtype=np.float64)
    span = heat.max() - heat.min()
    heat = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    heat_rgb = (colormaps["inferno"](heat)[..., :3] * 255).astype(np.uint8)
    overlay = gray.copy()
    overlay[mask] = (0.5 * overlay[mask] + [127, 0, 0]).astype(np.uint8)  # region tinted red
    tiles = [gray, heat_rgb, overlay, _to_rgb(noised)]
    panel = Image.new("RGB", (TILE * len(tiles), TILE + TITLE_HEIGHT), "white")
    for index, tile in enumerate(tiles):
        panel.paste(Image.fromarray(tile).resize((TILE, TILE), Image.Resampling.NEAREST), (index * TILE, TITLE_HEIGHT))
    ImageDraw.Draw(panel).text((4, 2), title, fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    panel.save(path)
    return path


class Previews:
    """Writes the panel of each of the first `count` images it is given."""

    def __init__(self, folder: Path, count: int, image_roots: Sequence[Path], noised_root: Path):
        self.folder, self.left, self.image_roots, self.noised_root = Path(folder), count, image_roots, noised_root

    def add(self, sample: Sample, region: Region, noised_relative: str) -> None:
        if self.left <= 0:
            return
        self.left -= 1
        # What the model is shown, clean and noised, so the panel compares like with like.
        clean = np.asarray(open_image(sample.image, self.image_roots))
        noised = np.asarray(load_image(self.noised_root / noised_relative))
        heat = region.heat if region.heat is not None else region.mask
        title = f"{sample.image}: {region.label} (confidence {region.confidence:.2f}, area {region.area_fraction:.1%})"
        write_panel(self.folder / f"{Path(sample.image).with_suffix('')}.png", clean, heat, region.mask, noised, title)


def _to_rgb(pixels: np.ndarray) -> np.ndarray:
    """8-bit RGB for display; 16-bit data scaled by their dtype's range (not stretched, so tiles compare)."""
    pixels = np.asarray(pixels)
    if pixels.dtype == np.uint16:
        pixels = (pixels // 257).astype(np.uint8)
    return np.repeat(pixels[..., None], 3, axis=2) if pixels.ndim == 2 else pixels[..., :3].astype(np.uint8)
