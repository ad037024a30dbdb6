"""The whole visual stage on SynthMed with the tiny target model: wall time per part.

Draws N SynthMed images (default 1,000; every question on them is a sample),
builds an untrained tiny LLaVA, and runs `curate_visual` with the annotation
localizer; then times localize + noise alone (the part this stage adds to
plain generation). Goal: the whole stage on 1,000 images in under 2 minutes.

    python bench/visual_stage.py [N]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from mmedpo.config import CurateVisualConfig
from mmedpo.curation.visual import curate_visual, make_noised_image
from mmedpo.imaging.localizers import AnnotationLocalizer
from mmedpo.models.tiny import build_tiny_llava
from mmedpo.synth.synthmed import generate_synthmed, synthmed_corpus


def main(n_images: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        samples = generate_synthmed(root / "data", {"pref": n_images}, seed=0)
        model_dir = build_tiny_llava(synthmed_corpus(samples), root / "model", image_size=64, seed=0)
        settings = CurateVisualConfig()
        start = time.perf_counter()
        summary = curate_visual(
            samples,
            root / "pairs.jsonl",
            settings,
            [root / "data", root / "images"],
            root / "images",
            model_dir,
            show_progress=False,
        )
        stage = time.perf_counter() - start
        start = time.perf_counter()
        localizer, seen = AnnotationLocalizer(), set()
        for sample in samples:
            if sample.image not in seen and sample.meta["lesion_mask"]:
                seen.add(sample.image)
                make_noised_image(sample, settings, [root / "data"], root / "again", 0, localizer)
        noising = time.perf_counter() - start
    print(f"{n_images} images, {len(samples)} samples: {summary.paired} pairs, {summary.rejected} rejects")
    print(
        f"whole visual stage: {stage:6.1f} s   ({len(samples) / stage:.0f} samples/s)   goal < 120 s for 1,000 images"
    )
    print(
        f"localize + noise + write only: {noising:6.1f} s for {len(seen)} images ({len(seen) / noising:.0f} images/s)"
    )
    print(f"share of the stage spent localizing and noising: {noising / stage:.0%}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
