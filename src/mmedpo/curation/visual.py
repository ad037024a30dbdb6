"""Visual preference pairs: lesion-region neglect.

Run it:

    mmedpo curate visual --config configs/demo.yaml

For each image a localizer finds the lesion region (an image without a lesion
gets the region where the localizer would look, as MedKLIP gives one for every
image); the region alone gets DDPM forward noise (`imaging.noise`), once per
image, reused by every question on it. The target model answers each question
on the noised image (greedy); when that answer is wrong, (clean image, gold
answer) is preferred over (noised image, that answer). The pair differs in the
image, which is what makes the preference multimodal. The model is loaded in
process, or served (`model.endpoint`; `models.answerer`).

Every such pair also records the model's greedy answer on the clean image and
whether it was right there: `lesion-neglect` (right on the clean image, wrong
on the noised one: the error the method is for) or `wrong-on-clean` (wrong on
both: the pair still prefers the gold answer, but hiding the lesion did not
cause the error). `keep: neglect` keeps only the first class; `all` (the
paper's pairs) keeps both.

With `rejected="gold"` the pair is image-conditional instead (as mDPO's; an
extension beyond the paper): (clean image, gold answer) over (noised image,
the same gold answer). Only the image differs, so no answer is pushed down in
general; no model is asked.

Everything not paired goes to the rejects file with its reason, so samples
read = samples paired + samples rejected (+ failed, in a stage a served model
left incomplete). With `preview=N` the first N images also get a panel PNG
(image, heat map, region, noised image) under `preview/` beside the pairs file.

Many machines can split the work by image (`mmedpo curate visual --shard i/n`,
then `--merge n`; see `curate_visual_regions`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mmedpo.config import CurateVisualConfig
from mmedpo.curation.merge import image_of, sort_curated
from mmedpo.curation.preview import Previews
from mmedpo.curation.summary import CHUNK, CurationSummary
from mmedpo.curation.visual_pairing import KEPT, Pairing
from mmedpo.data.images import resolve_image
from mmedpo.errors import StageIncomplete
from mmedpo.imaging.localizers import localizer_iou, write_mask
from mmedpo.imaging.noise import image_seed, noise_image_file
from mmedpo.imaging.regions import Region
from mmedpo.imaging.run_localizer import (
    BrokenRegions,
    FixedRegions,
    SavedRegions,
    bare_reason,
    build_run_localizer,
    regions_index,
    write_regions,
)
from mmedpo.models.answerer import LocalAnswerer, answer_stream, one_ahead
from mmedpo.progress import progress_bar
from mmedpo.records import JsonlStore, PreferencePair, Reject, Sample, rejects_path
from mmedpo.shards import Shard, shard_path, take_shard


def noised_name(image: str, region: str, timestep: int) -> str:
    """Where the noised copy of `image` goes, relative to the run's image folder."""
    return f"noised/{Path(image).with_suffix('')}_{region}_t{timestep}.png"


def noised_files(samples: Sequence[Sample], settings: CurateVisualConfig, noised_root: Path) -> list[Path]:
    """Every noised image and mask `samples` would get under `settings`, one per image and region."""
    files = []
    for image in dict.fromkeys(sample.image for sample in samples):
        for region in settings.regions:
            target = noised_root / noised_name(image, region, settings.timestep)
            files += [target, target.with_name(target.stem + "_mask.png")]
    return files


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
    Raises ValueError when the image has no usable region, also for the whole image:
    the whole-image ablation pairs exactly the images MMedPO pairs, with the same
    localizer confidence, so only where the noise goes differs.
    """
    region = localizer.localize(sample, image_roots)
    relative = noised_name(sample.image, noise_region, settings.timestep)
    target = noised_root / relative
    mask = np.ones_like(region.mask) if noise_region == "whole" else region.mask
    mask_path = target.with_name(target.stem + "_mask.png")
    if not target.exists():
        write_mask(mask_path, mask)
        source = resolve_image(sample.image, image_roots)
        noise_image_file(source, mask, target, settings.timestep, image_seed(seed, sample.image), settings.edge_sigma)
    provenance = {
        "localizer": localizer.name,
        "confidence": region.confidence,
        "lesion_found": region.found,
        "label": region.label,
        "area_fraction": float(mask.mean()),
        "timestep": settings.timestep,
        "mask": str(Path(relative).with_name(mask_path.name)),
        "seed": image_seed(seed, sample.image),
    }
    return relative, provenance, region


def pair_classes(pairs: Sequence[PreferencePair]) -> dict[str, int]:
    """How many visual pairs show each error (`lesion-neglect`, `wrong-on-clean`; image-conditional pairs
    have none) and how many are on images where the localizer found no lesion (`no lesion found`)."""
    classes = Counter(pair.provenance["error"] for pair in pairs if pair.provenance.get("error"))
    classes["no lesion found"] = sum(1 for pair in pairs if pair.provenance.get("lesion_found") is False)
    return dict(classes)


def curate_visual(
    samples: Sequence[Sample],
    out_path: Path,
    settings: CurateVisualConfig,
    image_roots: Sequence[Path],
    noised_root: Path,
    model_dir: Path | None,
    seed: int = 0,
    show_progress: bool = True,
    localizer=None,
    preview: int = 0,
    noise_region: str = "lesion",
    rejected: str = "model-answer",
    answerer=None,
) -> CurationSummary:
    """Write visual pairs for `samples` to `out_path`, resuming what is already there.

    `noised_root` is the run's image folder; it must be one of `image_roots` so
    the trainer finds the noised images. `localizer` defaults to the one
    `settings` configure (`imaging.run_localizer`). `noise_region` is
    "lesion" (MMedPO) or "whole" (the ablation; pair ids end in "-visual-whole").
    `rejected` is "model-answer" (MMedPO) or "gold" (image-conditional pairs; ids
    end in "-gold"). The summary's `pair_classes` counts every pair in the file.
    `answerer` is the target model (`models.answerer`, e.g. a served one); None
    loads it from `model_dir`. A sample whose request failed is left for the next
    run (counted in the summary's `failed`); `curate_visual_regions` then ends the
    stage incomplete.
    """
    if noise_region not in ("lesion", "whole"):
        raise ValueError(f"noise_region must be 'lesion' or 'whole', got {noise_region!r}")
    if rejected not in ("model-answer", "gold"):
        raise ValueError(f"rejected must be 'model-answer' or 'gold', got {rejected!r}")
    store = JsonlStore(out_path, PreferencePair)
    reject_store = JsonlStore(rejects_path(out_path), Reject)
    done = {pair.sample_id for pair in store} | {reject.id for reject in reject_store}
    todo = [sample for sample in samples if sample.id not in done]
    summary = CurationSummary(read=len(samples), skipped_done=len(samples) - len(todo))
    if todo:
        if rejected == "model-answer":
            answerer = answerer or LocalAnswerer(model_dir)
        pairing = Pairing(image_roots, noised_root, answerer, noise_region, rejected, settings.keep)
        localizer = localizer or build_run_localizer(settings, samples, (), image_roots, None, model_dir, seed)[0]
        previews = Previews(out_path.parent / "preview", preview, image_roots, noised_root)
        noised: dict[str, tuple[str, dict] | str] = {}  # image -> (noised image, provenance) or why there is none

        def jobs():  # prepared lazily: a chunk's images are noised while earlier chunks' questions are answered
            for start in range(0, len(todo), CHUNK):
                chunk = todo[start : start + CHUNK]
                for sample in chunk:
                    if sample.image not in noised:
                        noised[sample.image] = _noise_once(
                            sample, settings, image_roots, noised_root, seed, localizer, previews, noise_region
                        )
                yield pairing.questions(chunk, noised)

        answered = answer_stream(answerer, jobs()) if rejected == "model-answer" else ((job, []) for job, _ in jobs())
        # A chunk's clean-image questions go out as soon as its noised answers are in, and are collected a
        # chunk later, while the next chunks' questions are answered too.
        screened = ((job, pairing.screen(job[2], answers, job[1], summary)) for job, answers in answered)
        with progress_bar(f"curate visual ({noise_region}, {rejected})", len(todo), show_progress) as advance:
            for (chunk, rejects, asked), (wrong, clean) in one_ahead(screened):
                pairs = pairing.pairs(asked, wrong, clean, rejects, summary)
                order = {sample.id: position for position, sample in enumerate(chunk)}
                rejects.sort(key=lambda reject: order[reject.id])  # in sample order, as every curation file
                store.extend(pairs)
                reject_store.extend(rejects)
                summary.paired += len(pairs)
                summary.rejected += len(rejects)
                summary.pairs_by_generator[pairing.generator] += len(pairs)
                summary.drops.update(_drop_reason(r.reason) for r in rejects)
                advance(len(chunk))
    if summary.skipped_done and todo and not summary.failed:
        sort_curated(samples, out_path)  # samples a failed request held back were appended after the others
    summary.pair_classes.update(pair_classes(store.read()))
    return summary


def _drop_reason(reason: str) -> str:
    """The reason a reject is counted under: "no lesion region", or the filter's code of a kept answer."""
    if reason.startswith(KEPT):
        return f"{KEPT}: {reason.removeprefix(KEPT + ': ')}"
    return reason.split(":")[0]


def _noise_once(
    sample, settings, image_roots, noised_root, seed, localizer, previews, noise_region
) -> tuple[str, dict] | str:
    try:
        relative, provenance, region = make_noised_image(
            sample, settings, image_roots, noised_root, seed, localizer, noise_region
        )
    except ValueError as error:  # what the image holds; a system error (a full disk, no permission) propagates
        # The reason is shared by every sample of this image: name the image, not the sample asked first.
        return f"no lesion region: image {sample.image}: {bare_reason(error, sample)}"
    previews.add(sample, region, relative)
    return relative, provenance


def curate_visual_regions(
    samples: Sequence[Sample],
    out_paths: dict[tuple[str, str], Path],
    settings: CurateVisualConfig,
    image_roots: Sequence[Path],
    noised_root: Path,
    model_dir: Path | None,
    seed: int = 0,
    show_progress: bool = True,
    sft_samples: Sequence[Sample] = (),
    classifier_path: Path | None = None,
    shard: Shard | None = None,
    answerer=None,
    regions_dir: Path | None = None,
) -> dict:
    """Visual pairs for every (noise region, rejected text) of `out_paths` (-> its pairs file); returns a summary.

    The localizer is the configured one (`imaging.run_localizer`: `auto` is the
    data's annotation, else the attribution of the model in `model_dir`, which needs
    the weights in process even when the answers come from a server); the
    annotation localizer draws regions for images without annotation from the
    lesions of `samples` of the same split. Grad-CAM without a given classifier
    trains the small default CNN on `sft_samples` into `classifier_path` first.
    Where the samples carry true lesion masks and the localizer is not the
    annotation itself, the summary says how well its regions match them
    (`localizer_iou`); otherwise it says why that was not measured. Every image is
    localized once, up front (from its first sample), for all the pairs files, and
    the localizer's own model, if it has one, is released before the answerer loads.
    With `regions_dir` the regions are saved there (`write_regions`; a shard's under
    its own index) and a resumed stage reads them back instead of localizing again
    (its previews then show the region where the heat map was).

    `shard=(i, n)` curates the samples of every n-th image from the i-th into each
    pairs file's shard file (`shards.shard_path`); every question on an image stays in
    one shard, so each image is noised once, and the localizer still learns from all
    `samples`. `curation.merge.merge_visual_shards` joins the shards. `answerer` is the target model
    (None: loaded from `model_dir`). When requests failed, every file is still
    curated, then `StageIncomplete` says how many samples wait for the next run.
    """
    everything, preview = samples, settings.preview
    if shard is not None:
        first_images = list(dict.fromkeys(sample.image for sample in samples))[:preview]
        samples = take_shard(samples, shard, key=image_of)
        preview = len(set(first_images) & {sample.image for sample in samples})  # the shard's share of them
        out_paths = {key: shard_path(path, shard) for key, path in out_paths.items()}
    previewed = set(list(dict.fromkeys(sample.image for sample in samples))[:preview])
    index = regions_index(shard)
    saved = _saved_regions(regions_dir, index, samples, image_roots) if regions_dir is not None else None
    if saved is not None:
        localizer, note = saved
    else:
        # The localizer learns from every sample (a shard's too) and localizes this stage's (or shard's) images.
        localizer, note = _find_regions(
            settings, everything, samples, sft_samples, image_roots, classifier_path, model_dir, seed, previewed
        )
        if regions_dir is not None:
            write_regions(localizer, regions_dir, note, index)
    if any(rejected == "model-answer" for _, rejected in out_paths):
        answerer = answerer or LocalAnswerer(model_dir)  # loaded once, for every file
    summaries = {}
    for (region, rejected), out_path in out_paths.items():
        summaries[_file_name(out_path, shard)] = curate_visual(
            samples,
            out_path,
            settings,
            image_roots,
            noised_root,
            model_dir,
            seed=seed,
            show_progress=show_progress,
            localizer=localizer,
            preview=preview if region == "lesion" else 0,
            noise_region=region,
            rejected=rejected,
            answerer=answerer,
        )
    failed = {name: summary for name, summary in summaries.items() if summary.failed}
    if failed:
        raise StageIncomplete(_incomplete_message(failed), {name: s.as_dict() for name, s in summaries.items()})
    summaries = {name: summary.as_dict() for name, summary in summaries.items()}
    first = summaries[next(iter(summaries))]
    iou = _localizer_iou(samples, image_roots, localizer)
    notes = [note] + ([f"localizer_iou {iou}"] if isinstance(iou, str) else [])
    return {**first, "by_file": summaries if len(summaries) > 1 else None, "localizer_iou": iou, "notes": notes}


def _saved_regions(regions_dir: Path, index: str, samples, image_roots) -> tuple[FixedRegions, str] | None:
    """The regions an earlier attempt of the stage saved, each mask read once and held for every pairs file, and
    the line naming the localizer; None when there are none or one cannot be read back: they are found again."""
    if not (regions_dir / index).exists():
        return None
    try:
        saved = SavedRegions(regions_dir, index)
        return FixedRegions(saved, samples, image_roots), saved.note
    except BrokenRegions:  # a kill while they were written, or a damaged file: a cache, so find them again
        return None


def _find_regions(
    settings, learn_from, samples, sft_samples, image_roots, classifier_path, model_dir, seed, previewed
) -> tuple[FixedRegions, str]:
    """The region of every image of `samples`, found once for every pairs file, and the line naming the localizer.

    A localizer with a model of its own (attribution: the target model) is done with it
    before the answerer loads, so the model is never held twice.
    """
    localizer, note = build_run_localizer(
        settings, learn_from, sft_samples, image_roots, classifier_path, model_dir, seed=seed
    )
    if localizer.name == "annotation":  # a region for every image: unannotated ones get a real lesion's place
        localizer = localizer.drawing_from(learn_from, seed)
    return FixedRegions(localizer, samples, image_roots, keep_heat=previewed), note


def _file_name(path: Path, shard: Shard | None) -> str:
    """`pairs.visual-whole.jsonl` (or its shard file) -> "visual-whole"."""
    name = path.name.removeprefix("pairs.").removesuffix(".jsonl")
    return name.removesuffix(f".shard-{shard[0]}-of-{shard[1]}") if shard else name


def _incomplete_message(failed: dict[str, CurationSummary]) -> str:
    count = sum(summary.failed for summary in failed.values())
    grouped = ", ".join(f"{name}: {dict(summary.failures)}" for name, summary in failed.items())
    first = next(iter(failed.values())).first_failure
    return (
        f"curate visual: {count} samples left unpaired because requests to the target model failed ({grouped}); "
        f"first: {first[:200]}. The other samples are written: run again to retry these"
    )


def _localizer_iou(samples, image_roots, localizer) -> dict | str:
    """`localizer_iou` against the samples' true masks, or why it was not measured."""
    if localizer.name == "annotation":
        return "not measured: the localizer is the annotation itself"
    if not any(sample.meta.get("lesion_mask") for sample in samples):
        return "not measured: no curated sample has a lesion_mask to compare with"
    return localizer_iou(samples, image_roots, localizer)
