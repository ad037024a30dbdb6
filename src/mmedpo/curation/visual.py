"""Visual preference pairs: lesion-region neglect.

Run it:

    mmedpo curate visual --config configs/demo.yaml

For each image a localizer finds the lesion region; the region alone gets DDPM
forward noise (`imaging.noise`), once per image, reused by every question on
it. The target model answers each question on the noised image (greedy); when
that answer is wrong, (clean image, gold answer) is preferred over (noised
image, that answer). The pair differs in the image, which is what makes the
preference multimodal. Everything not paired goes to the rejects file with its
reason, so samples read = samples paired + samples rejected.

With `preview=N` the first N images also get a panel PNG (image, heat map,
region, noised image) under `preview/` beside the pairs file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from mmedpo.config import CurateVisualConfig
from mmedpo.curation.answering import answer_samples
from mmedpo.curation.filters import check_rejected
from mmedpo.curation.preview import Previews
from mmedpo.curation.summary import CHUNK, CurationSummary
from mmedpo.data.images import load_image, resolve_image
from mmedpo.imaging.localizers import build_localizer, localizer_iou
from mmedpo.imaging.noise import image_seed, noise_image_file
from mmedpo.imaging.regions import Region
from mmedpo.progress import progress_bar
from mmedpo.records import JsonlStore, PreferencePair, Reject, Sample, rejects_path


def noised_name(image: str, region: str, timestep: int) -> str:
    """Where the noised copy of `image` goes, relative to the run's image folder."""
    return f"noised/{Path(image).with_suffix('')}_{region}_t{timestep}.png"


def make_noised_image(
    sample: Sample,
    settings: CurateVisualConfig,
    image_roots: Sequence[Path],
    noised_root: Path,
    seed: int,
    localizer,
    noise_region: str = "lesion",
) -> tuple[str, dict, Region]:
    """Noise the lesion of the sample's image, or (`noise_region="whole"`) all of it; once: a file is reused.

    Returns the noised image's relative path, the provenance of the pair and the region.
    Raises ValueError when the image has no usable lesion region, also for the whole
    image: the whole-image ablation pairs exactly the images MMedPO pairs, with the
    same localizer confidence, so only where the noise goes differs.
    """
    region = localizer.localize(sample, image_roots)
    relative = noised_name(sample.image, noise_region, settings.timestep)
    target = noised_root / relative
    mask = np.ones_like(region.mask) if noise_region == "whole" else region.mask
    mask_path = target.with_name(target.stem + "_mask.png")
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path)
        source = resolve_image(sample.image, image_roots)
        noise_image_file(source, mask, target, settings.timestep, image_seed(seed, sample.image), settings.edge_sigma)
    provenance = {
        "localizer": localizer.name,
        "confidence": region.confidence,
        "label": region.label,
        "area_fraction": float(mask.mean()),
        "timestep": settings.timestep,
        "mask": str(Path(relative).with_name(mask_path.name)),
        "seed": image_seed(seed, sample.image),
    }
    return relative, provenance, region


def curate_visual(
    samples: Sequence[Sample],
    out_path: Path,
    settings: CurateVisualConfig,
    image_roots: Sequence[Path],
    noised_root: Path,
    model_dir: Path,
    seed: int = 0,
    show_progress: bool = True,
    localizer=None,
    preview: int = 0,
    noise_region: str = "lesion",
) -> CurationSummary:
    """Write visual pairs for `samples` to `out_path`, resuming what is already there.

    `noised_root` is the run's image folder; it must be one of `image_roots` so
    the trainer finds the noised images. `localizer` defaults to the one
    `settings.localizer` names, with its default options. `noise_region` is
    "lesion" (MMedPO) or "whole" (the ablation; pair ids end in "-visual-whole").
    """
    if noise_region not in ("lesion", "whole"):
        raise ValueError(f"noise_region must be 'lesion' or 'whole', got {noise_region!r}")
    store = JsonlStore(out_path, PreferencePair)
    reject_store = JsonlStore(rejects_path(out_path), Reject)
    done = {pair.sample_id for pair in store} | {reject.id for reject in reject_store}
    todo = [sample for sample in samples if sample.id not in done]
    summary = CurationSummary(read=len(samples), skipped_done=len(samples) - len(todo))
    if not todo:
        return summary
    from mmedpo.models.vlm import load_vlm

    model, processor = load_vlm(model_dir)
    localizer = localizer or build_localizer(settings.localizer)
    noised: dict[str, tuple[str, dict] | str] = {}  # image -> (noised image, provenance) or why there is none
    previews = Previews(out_path.parent / "preview", preview, image_roots, noised_root)
    with progress_bar(f"curate visual ({noise_region})", len(todo), show_progress) as advance:
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start : start + CHUNK]
            for sample in chunk:
                if sample.image not in noised:
                    noised[sample.image] = _noise_once(
                        sample, settings, image_roots, noised_root, seed, localizer, previews, noise_region
                    )
            pairs, rejects = _curate_chunk(chunk, noised, noised_root, model, processor, noise_region)
            store.extend(pairs)
            reject_store.extend(rejects)
            summary.paired += len(pairs)
            summary.rejected += len(rejects)
            summary.pairs_by_generator["noised-target"] += len(pairs)
            summary.drops.update(r.reason.split(":")[0] for r in rejects)
            advance(len(chunk))
    return summary


def _noise_once(
    sample, settings, image_roots, noised_root, seed, localizer, previews, noise_region
) -> tuple[str, dict] | str:
    try:
        relative, provenance, region = make_noised_image(
            sample, settings, image_roots, noised_root, seed, localizer, noise_region
        )
    except (ValueError, OSError) as error:
        # The reason is shared by every sample of this image: name the image, not the sample asked first.
        return f"no lesion region: image {sample.image}: {str(error).removeprefix(f'sample {sample.id}: ')}"
    previews.add(sample, region, relative)
    return relative, provenance


def _curate_chunk(chunk, noised, noised_root, model, processor, noise_region):
    rejects, jobs = [], []
    for sample in chunk:
        made = noised[sample.image]
        if isinstance(made, str):
            rejects.append(Reject(id=sample.id, source=sample.image, reason=made))
        else:
            jobs.append((sample, *made))
    images = [load_image(noised_root / relative) for _, relative, _ in jobs]
    answers = answer_samples(model, processor, [job[0] for job in jobs], images) if jobs else []
    pairs = []
    for (sample, relative, provenance), (answer, *_) in zip(jobs, answers):
        reason = check_rejected(sample.answer, answer, sample.answer_type, sample.task, max_length_ratio=math.inf)
        if reason is not None:
            rejects.append(Reject(id=sample.id, source=relative, reason=f"answer on the noised image kept: {reason}"))
            continue
        pairs.append(
            PreferencePair(
                id=f"{sample.id}-visual" if noise_region == "lesion" else f"{sample.id}-visual-whole",
                sample_id=sample.id,
                task=sample.task,
                kind="visual",
                image=sample.image,
                rejected_image=relative,
                region=noise_region,
                question=sample.question,
                chosen=sample.answer,
                rejected=answer.strip(),
                answer_type=sample.answer_type,
                provenance={"generator": "noised-target", **provenance},
            )
        )
    return pairs, rejects


def curate_visual_regions(
    samples: Sequence[Sample],
    out_paths: dict[str, Path],
    settings: CurateVisualConfig,
    image_roots: Sequence[Path],
    noised_root: Path,
    model_dir: Path,
    seed: int = 0,
    show_progress: bool = True,
    sft_samples: Sequence[Sample] = (),
    classifier_path: Path | None = None,
) -> dict:
    """Visual pairs for every noise region of `settings.regions` (region -> its pairs file); returns a summary.

    The localizer is the configured one. Grad-CAM without a given classifier trains
    the small default CNN on `sft_samples` into `classifier_path` first. Where the
    samples carry true lesion masks and the localizer is not the annotation itself,
    the summary says how well its regions match them (`localizer_iou`).
    """
    localizer = _configured_localizer(settings, sft_samples, image_roots, classifier_path, seed)
    summaries = {}
    for region, out_path in out_paths.items():
        summaries[region] = curate_visual(
            samples,
            out_path,
            settings,
            image_roots,
            noised_root,
            model_dir,
            seed=seed,
            show_progress=show_progress,
            localizer=localizer,
            preview=settings.preview if region == "lesion" else 0,
            noise_region=region,
        ).as_dict()
    has_masks = any(sample.meta.get("lesion_mask") for sample in samples)
    iou = localizer_iou(samples, image_roots, localizer) if settings.localizer != "annotation" and has_masks else None
    first = summaries[next(iter(out_paths))]
    return {**first, "by_region": summaries if len(summaries) > 1 else None, "localizer_iou": iou}


def _configured_localizer(settings: CurateVisualConfig, sft_samples, image_roots, classifier_path, seed: int):
    options = dict(settings.localizer_options)
    if settings.localizer == "gradcam":
        from mmedpo.imaging.gradcam import train_default_classifier

        if settings.classifier is None and classifier_path is None:
            raise ValueError("gradcam needs curate_visual.classifier, or a path to train the default CNN into")
        classifier = settings.classifier or train_default_classifier(
            sft_samples, image_roots, classifier_path, seed=seed
        )
        options.update(classifier=str(classifier), factory=settings.classifier_factory)
    return build_localizer(settings.localizer, options)
