"""The localizer a run uses, built from `curate_visual`'s settings, for curation and evaluation alike.

`curate_visual.localizer: auto` (the default) is the data's own annotation when
the samples carry lesion masks or boxes (SynthMed, SLAKE) and the target model's
attribution of its answer otherwise (`imaging.attribution`), which needs no
annotation and no outside model. Any registered name (`mmedpo.registry.LOCALIZERS`)
picks one outright. `localizer_problem` says, before any stage runs, why the
configured localizer cannot work on the run's samples; visual dependence
(`evaluation_localizer`) measures against the evaluated split's annotations where
they exist, else against the run's localizer.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import replace
from pathlib import Path

from mmedpo.config import AUTO, CurateVisualConfig
from mmedpo.data.images import ImageError
from mmedpo.imaging.localizers import build_localizer, finding_names, read_mask, write_mask
from mmedpo.imaging.regions import NoRegion, Region
from mmedpo.records import Sample, dump_json
from mmedpo.shards import Shard, shard_path

REGIONS_INDEX = "index.json"


def regions_index(shard: Shard | None = None) -> str:
    """The index file `save_regions` writes: index.json, or a shard's own (index.shard-2-of-4.json)."""
    return REGIONS_INDEX if shard is None else shard_path(Path(REGIONS_INDEX), shard).name


def has_annotation(sample: Sample) -> bool:
    """Whether the sample carries what the annotation localizer reads: a lesion mask or boxes."""
    return bool(sample.meta.get("lesion_mask") or sample.meta.get("lesion_boxes"))


def resolve_localizer(name: str, samples: Sequence[Sample]) -> tuple[str, str]:
    """The localizer `name` stands for on `samples`, and a line saying why (for `auto`)."""
    if name != AUTO:
        return name, f"localizer: {name}"
    annotated = sum(has_annotation(sample) for sample in samples)
    if annotated:
        return "annotation", f"localizer: annotation (auto: {annotated} of {len(samples)} samples carry lesion masks)"
    return "attribution", "localizer: attribution (auto: no sample carries a lesion mask or boxes)"


def localizer_problem(settings: CurateVisualConfig, curated: Sequence[Sample], sft: Sequence[Sample]) -> str | None:
    """Why the configured localizer cannot localize the `curated` samples (one line naming what to set), or None."""
    name, _ = resolve_localizer(settings.localizer, curated)
    if name == "annotation" and not settings.localizer_options.get("boxes_file"):
        if not any(has_annotation(sample) for sample in curated):
            return (
                "curate_visual.localizer 'annotation' reads meta['lesion_mask'] or meta['lesion_boxes'], and no "
                "curated sample has one: set curate_visual.localizer: auto (the target model's attribution)"
            )
    if name == "gradcam" and settings.classifier is None:
        if not any(finding_names(sample) for sample in sft):
            return (
                "curate_visual.localizer 'gradcam' trains its default classifier on meta['findings'] of the sft "
                "split, and no sft sample lists one: set curate_visual.classifier (and classifier_factory) to your "
                "own classifier, or curate_visual.localizer: auto"
            )
    return None


def build_run_localizer(
    settings: CurateVisualConfig,
    samples: Sequence[Sample],
    sft_samples: Sequence[Sample],
    image_roots: Sequence[Path],
    classifier_path: Path | None,
    model_dir: Path,
    seed: int = 0,
):
    """The localizer `settings` configure for `samples`, and the line saying which it is.

    Grad-CAM without a given classifier trains the small default CNN on
    `sft_samples` into `classifier_path` first (reused when already trained on the
    same images); the attribution localizer explains the model in `model_dir`.
    """
    name, note = resolve_localizer(settings.localizer, samples)
    options = dict(settings.localizer_options)
    if name == "gradcam":
        from mmedpo.imaging.gradcam import train_default_classifier

        if settings.classifier is None and classifier_path is None:
            raise ValueError("gradcam needs curate_visual.classifier, or a path to train the default CNN into")
        classifier = settings.classifier or train_default_classifier(
            sft_samples, image_roots, classifier_path, seed=seed
        )
        options.update(classifier=str(classifier), factory=settings.classifier_factory)
    if name == "attribution":
        options.setdefault("model_dir", str(model_dir))
    return build_localizer(name, options), note


def evaluation_localizer(
    settings: CurateVisualConfig,
    test: Sequence[Sample],
    sft: Sequence[Sample],
    image_roots: Sequence[Path],
    classifier_path: Path | None,
    model_dir: Path,
    seed: int = 0,
):
    """Visual dependence's localizer: the evaluated split's annotations where it has any, else the run's localizer.

    The annotations are the samples' own or, with a configured `annotation`
    localizer, those of its options (a COCO `boxes_file`). The run's `annotation`
    localizer on a split without annotations becomes the attribution of
    `model_dir` (the base model, so every variant is measured on the same regions),
    without the annotation's options. Returns (localizer, line saying which).
    """
    own = settings.localizer == "annotation"
    annotation = build_localizer("annotation", settings.localizer_options if own else None)
    if any(annotation.annotated(sample) for sample in test):
        return annotation, "localizer: annotation (the evaluated split's lesion masks)"
    if settings.localizer in (AUTO, "annotation"):
        settings = settings.model_copy(update={"localizer": "attribution", "localizer_options": {}})
    localizer, _ = build_run_localizer(settings, test, sft, image_roots, classifier_path, model_dir, seed)
    return localizer, f"localizer: {settings.localizer} (the evaluated split has no lesion masks)"


class FixedRegions:
    """Regions computed once per image, up front, so the localizer's own model can be freed before another loads.

    `localize` returns the image's region (or raises the reason it has none), like
    the localizer it was made from; that localizer's model, if it loaded one, is
    released once every region is found. `regions` holds, per image, its region
    or the reason it has none. A region keeps its heat map (an image-sized array)
    only for the images in `keep_heat` (those shown in a preview): held for every
    image of a real dataset's split they would not fit in memory.
    """

    def __init__(
        self, localizer, samples: Sequence[Sample], image_roots: Sequence[Path], keep_heat: Collection[str] = ()
    ):
        self.name = localizer.name
        self.regions: dict[str, Region | str] = {}
        for sample in samples:
            if sample.image in self.regions:
                continue
            try:
                region = localizer.localize(sample, image_roots)
                self.regions[sample.image] = region if sample.image in keep_heat else replace(region, heat=None)
            except (NoRegion, ImageError) as error:
                self.regions[sample.image] = bare_reason(error, sample)
        if hasattr(localizer, "release"):
            localizer.release()

    def localize(self, sample: Sample, image_roots: Sequence[Path]) -> Region:
        return _region_or_reason(self.regions.get(sample.image, "not localized"), sample)


def bare_reason(error: Exception, sample: Sample) -> str:
    """Why an image has no region, without the sample or image a localizer may have named: every question on the
    image shares the reason, and whoever reports it names the image once."""
    return str(error).removeprefix(f"sample {sample.id}: ").removeprefix(f"image {sample.image}: ")


def region_mask_name(image: str) -> str:
    """The mask file of an image's saved region, relative to the regions folder: the image's own relative path
    (`resolve_image` refuses any other) with .png added, so no two images share one."""
    return f"{image}.png"


def save_regions(
    localizer,
    samples: Sequence[Sample],
    image_roots: Sequence[Path],
    out_dir: Path,
    note: str,
    index: str = REGIONS_INDEX,
) -> dict:
    """Localize every image of `samples` once (from its first sample) and write what `SavedRegions` reads
    (`write_regions`); returns how many images got a region and how many did not."""
    return write_regions(FixedRegions(localizer, samples, image_roots), out_dir, note, index)


def write_regions(fixed: FixedRegions, out_dir: Path, note: str, index: str = REGIONS_INDEX) -> dict:
    """Write the regions `fixed` found where `SavedRegions` reads them; returns `save_regions`'s summary.

    out_dir/`index` (index.json) holds the localizer's name, `note` (the line saying
    which it is), and per image its region's confidence, label, area and mask file (a
    PNG beside it, `region_mask_name`), or the reason it has none. The index is
    written last: a folder without one is unfinished. A shard writes an index of its
    own (`merge_region_shards` joins them). Heat maps are not kept.
    """
    entries: dict[str, dict] = {}
    for image, region in fixed.regions.items():
        if isinstance(region, str):
            entries[image] = {"reason": region}
            continue
        mask = region_mask_name(image)
        write_mask(out_dir / mask, region.mask)
        entries[image] = {
            "mask": mask,
            "confidence": float(region.confidence),
            "label": region.label,
            "area_fraction": float(region.area_fraction),
            "found": bool(region.found),
        }
    dump_json({"localizer": fixed.name, "note": note, "regions": entries}, out_dir / index)
    return _regions_summary(entries)


def merge_region_shards(out_dir: Path, indexes: Sequence[str]) -> dict:
    """Join the shards' `indexes` (each `save_regions` of a part of the images) into out_dir/index.json, the one
    the whole split gives; returns its summary."""
    parts = [json.loads((out_dir / index).read_text(encoding="utf-8")) for index in indexes]
    entries = {image: entry for part in parts for image, entry in part["regions"].items()}
    merged = {"localizer": parts[0]["localizer"], "note": parts[0]["note"], "regions": entries}
    dump_json(merged, out_dir / REGIONS_INDEX)
    return _regions_summary(entries)


def _regions_summary(entries: dict[str, dict]) -> dict:
    found = sum("mask" in entry for entry in entries.values())
    return {"images": len(entries), "regions": found, "no_region": len(entries) - found}


class BrokenRegions(OSError):
    """Saved regions that cannot be read back (a torn index, a missing or damaged mask): a fault of the run
    folder, never a fact about an image, so no stage records it as an image's reason to be skipped."""


class SavedRegions:
    """The regions `save_regions` wrote, as a localizer: every evaluation reads the same ones, found once.

    `index` is the index file to read (a shard's own, `regions_index`). What cannot
    be read back raises `BrokenRegions`, naming the file and `mmedpo regions --force`.
    """

    def __init__(self, out_dir: Path, index: str = REGIONS_INDEX):
        path = out_dir / index
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            self.name, self.note, self._entries = saved["localizer"], saved["note"], dict(saved["regions"])
        except FileNotFoundError:
            raise ValueError(f"{path}: no saved regions; run the regions stage first") from None
        except (ValueError, KeyError, TypeError) as error:
            raise BrokenRegions(f"{path}: not a regions index ({error!r}); run `mmedpo regions --force`") from None
        self._dir = out_dir

    def localize(self, sample: Sample, image_roots: Sequence[Path]) -> Region:
        entry = self._entries.get(sample.image)
        if entry is None or "reason" in entry:
            return _region_or_reason(entry["reason"] if entry else "not localized", sample)
        try:
            mask = read_mask(self._dir / entry["mask"])
        except ImageError as error:  # missing or damaged: ours, written by the stage that saved the regions
            raise BrokenRegions(f"{error}; run `mmedpo regions --force`") from None
        return Region(mask, entry["confidence"], entry["label"], entry["area_fraction"], found=entry["found"])


def _region_or_reason(region: Region | str, sample: Sample) -> Region:
    if isinstance(region, str):
        raise NoRegion(f"image {sample.image}: {region}")
    return region
