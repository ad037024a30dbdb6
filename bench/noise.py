"""Throughput of regional DDPM noise at 224x224, decode excluded.

Prints noised images per second for `noise_batch` (lesion masks, and whole-image
masks for the ablation) and the ratio to a naive per-image loop: float64 over
the whole image, the fade's distance map over the whole image, noise drawn
for every pixel. Goal: >= 500 lesion images per second on 2 CPU cores.

    python bench/noise.py
"""

from __future__ import annotations

import time

import numpy as np
from scipy import ndimage

from mmedpo.imaging.noise import alphas_cumprod, noise_batch

SIZE, COUNT, TIMESTEP, SIGMA = 224, 256, 500, 2.0


def lesion_masks(count: int, rng: np.random.Generator) -> np.ndarray:
    """Discs of radius 15..60 px (1.4% to 23% of the image) at random places."""
    y, x = np.ogrid[:SIZE, :SIZE]
    masks = np.zeros((count, SIZE, SIZE), dtype=bool)
    for mask in masks:
        radius = rng.integers(15, 61)
        cy, cx = rng.integers(radius, SIZE - radius, size=2)
        mask[(y - cy) ** 2 + (x - cx) ** 2 <= radius**2] = True
    return masks


def naive(image: np.ndarray, mask: np.ndarray, seed: int) -> np.ndarray:
    """The obvious per-image version: whole image, float64."""
    abar = alphas_cumprod()[TIMESTEP]
    clean = image / 127.5 - 1.0
    eps = np.random.default_rng(seed).standard_normal(image.shape)
    noised = np.clip(np.sqrt(abar) * clean + np.sqrt(1 - abar) * eps, -1, 1)
    distance = ndimage.distance_transform_edt(~mask)  # 0 inside: the full step on every lesion pixel
    weight = np.where(distance <= 3 * SIGMA, np.exp(-(distance**2) / (2 * SIGMA**2)), 0.0)[..., None]
    blended = np.rint((clean + weight * (noised - clean) + 1) * 127.5).astype(np.uint8)
    return np.where(weight > 0, blended, image)


def rate(run, repeats: int = 3) -> tuple[float, float]:
    """Best images per wall-clock second and per CPU second over `repeats` runs of COUNT images.

    The CPU figure is what an otherwise idle machine would give; on a shared one
    the wall figure drops with the load.
    """
    wall = cpu = float("inf")
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return COUNT / wall, COUNT / cpu


def main() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(COUNT, SIZE, SIZE, 3), dtype=np.uint8)
    masks = lesion_masks(COUNT, rng)
    whole = np.ones((COUNT, SIZE, SIZE), dtype=bool)
    seeds = list(range(COUNT))
    batched = rate(lambda: noise_batch(images, masks, TIMESTEP, seeds, SIGMA))
    batched_whole = rate(lambda: noise_batch(images, whole, TIMESTEP, seeds, SIGMA))
    looped = rate(lambda: [naive(i, m, s) for i, m, s in zip(images, masks, seeds)])
    area = masks.mean()
    print(f"{SIZE}x{SIZE} RGB uint8, {COUNT} images, t={TIMESTEP}, lesions cover {area:.1%} on average")
    print("                            images/s  (per CPU second)")
    print(f"noise_batch, lesion masks:  {batched[0]:7.0f}   ({batched[1]:5.0f})   goal >= 500")
    print(f"noise_batch, whole image:   {batched_whole[0]:7.0f}   ({batched_whole[1]:5.0f})")
    print(f"naive per-image loop:       {looped[0]:7.0f}   ({looped[1]:5.0f})")
    print(f"batched / naive: {batched[0] / looped[0]:.1f}x")


if __name__ == "__main__":
    main()
