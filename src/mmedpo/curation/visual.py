"""Visual preference pairs: lesion-region neglect.

Run it:

    mmedpo curate visual --config configs/demo.yaml

For each image a localizer finds the lesion region (an image without a lesion
gets the region where the localizer would look, as MedKLIP gives one for every
image); the region alone gets DDPM forward noise (`imaging.noise`), once per
image, reused by every question on it. The target model answers each question
on the noised image (greedy); when that answer is wrong, (clean image, gold
answer) is preferred over (noised image, that answer). The pair differs in the
image, which is what makes the preference multimodal.

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
read = samples paired + samples rejected. With `preview=N` the first N images
also get a panel PNG (image, heat map, region, noised image) under `preview/`
beside the pairs file.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mmedpo.config import CurateVisualConfig
from mmedpo.curation.answering import answer_samples
from mmedpo.curation.filters import check_rejected
from mmedpo.curation.preview import Previews
from mmedpo.curation.summary import CHUNK, CurationSummary
from mmedpo.data.images import load_image, open_image, resolve_image
from mmedpo.imaging.localizers import localizer_iou
from mmedpo.imaging.noise import image_seed, noise_image_file
from mmedpo.imaging.regions import Region
from mmedpo.imaging.run_localizer import build_run_localizer
from mmedpo.progress import progress_bar
from mmedpo.records import JsonlStore, PreferencePair, Reject, Sample, rejects_path

KEPT = "answer on the noised image kept"  # a reject whose noised answer the filters refused (`check_rejected`)


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
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path)
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


def right_answer(sample: Sample, answer: str) -> bool:
    """Whether `answer` agrees with the sample's gold answer: the same, or contradicting nothing in it."""
    reason = check_rejected(sample.answer, answer, sample.answer_type, sample.task, max_length_ratio=math.inf)
    return reason in ("identical", "not_contradicting")


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
    model_dir: Path,
    seed: int = 0,
    show_progress: bool = True,
    localizer=None,
    preview: int = 0,
    noise_region: str = "lesion",
    rejected: str = "model-answer",
) -> CurationSummary:
    """Write visual pairs for `samples` to `out_path`, resuming what is already there.

    `noised_root` is the run's image folder; it must be one of `image_roots` so
    the trainer finds the noised images. `localizer` defaults to the one
    `settings` configure (`imaging.run_localizer`). `noise_region` is
    "lesion" (MMedPO) or "whole" (the ablation; pair ids end in "-visual-whole").
    `rejected` is "model-answer" (MMedPO) or "gold" (image-conditional pairs; ids
    end in "-gold"). The summary's `pair_classes` counts every pair in the file.
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
        model = None
        if rejected == "model-answer":
            from mmedpo.models.vlm import load_vlm

            model = load_vlm(model_dir)
        pairing = Pairing(image_roots, noised_root, model, noise_region, rejected, settings.keep)
        localizer = localizer or build_run_localizer(settings, samples, (), image_roots, None, model_dir, seed)[0]
        previews = Previews(out_path.parent / "preview", preview, image_roots, noised_root)
        noised: dict[str, tuple[str, dict] | str] = {}  # image -> (noised image, provenance) or why there is none
        with progress_bar(f"curate visual ({noise_region}, {rejected})", len(todo), show_progress) as advance:
            for start in range(0, len(todo), CHUNK):
                chunk = todo[start : start + CHUNK]
                for sample in chunk:
                    if sample.image not in noised:
                        noised[sample.image] = _noise_once(
                            sample, settings, image_roots, noised_root, seed, localizer, previews, noise_region
                        )
                pairs, rejects = pairing.chunk(chunk, noised)
                store.extend(pairs)
                reject_store.extend(rejects)
                summary.paired += len(pairs)
                summary.rejected += len(rejects)
                summary.pairs_by_generator[pairing.generator] += len(pairs)
                summary.drops.update(_drop_reason(r.reason) for r in rejects)
                advance(len(chunk))
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
        return f"no lesion region: image {sample.image}: {str(error).removeprefix(f'sample {sample.id}: ')}"
    previews.add(sample, region, relative)
    return relative, provenance


@dataclass
class Pairing:
    """Turns a chunk of samples whose images are noised into visual pairs and rejects.

    `model` is (model, processor), asked greedily on the noised image and, where that
    answer is wrong, on the clean one; None for image-conditional (gold) pairs.
    """

    image_roots: Sequence[Path]
    noised_root: Path
    model: tuple | None
    noise_region: str = "lesion"
    rejected: str = "model-answer"
    keep: str = "all"

    @property
    def generator(self) -> str:
        return "gold" if self.rejected == "gold" else "noised-target"

    def chunk(self, chunk: Sequence[Sample], noised: dict) -> tuple[list[PreferencePair], list[Reject]]:
        rejects, jobs = [], []
        for sample in chunk:
            made = noised[sample.image]
            if isinstance(made, str):
                rejects.append(Reject(id=sample.id, source=sample.image, reason=made))
            else:
                jobs.append((sample, *made))
        if self.rejected == "gold":
            return [
                self.pair(sample, relative, provenance, sample.answer) for sample, relative, provenance in jobs
            ], rejects
        pairs = []
        for (sample, relative, provenance), noised_answer, clean_answer in self.wrong_answers(jobs, rejects):
            right = right_answer(sample, clean_answer)
            if self.keep == "neglect" and not right:
                reason = f"wrong on the clean image too (keep: neglect): {clean_answer!r}"
                rejects.append(Reject(id=sample.id, source=relative, reason=reason))
                continue
            error = "lesion-neglect" if right else "wrong-on-clean"
            outcome = {"clean_answer": clean_answer, "right_on_clean": right, "error": error}
            pairs.append(self.pair(sample, relative, {**provenance, **outcome}, noised_answer))
        return pairs, rejects

    def wrong_answers(self, jobs: list, rejects: list[Reject]) -> list[tuple[tuple, str, str]]:
        """(job, answer on the noised image, answer on the clean one) for each job whose answer on the noised
        image is a usable rejected answer; the others join `rejects`. Only those are asked on the clean image."""
        wrong = []
        images = [load_image(self.noised_root / relative) for _, relative, _ in jobs]
        for job, answer in zip(jobs, self.answer([job[0] for job in jobs], images)):
            sample, relative, _ = job
            reason = check_rejected(sample.answer, answer, sample.answer_type, sample.task, max_length_ratio=math.inf)
            if reason is None:
                wrong.append((job, answer))
            else:
                rejects.append(Reject(id=sample.id, source=relative, reason=f"{KEPT}: {reason}"))
        samples = [job[0] for job, _ in wrong]
        clean = self.answer(samples, [open_image(sample.image, self.image_roots) for sample in samples])
        return [(job, answer, clean_answer) for (job, answer), clean_answer in zip(wrong, clean)]

    def answer(self, samples: list[Sample], images: list) -> list[str]:
        """The model's greedy answer to each sample on its image."""
        if not samples:
            return []
        model, processor = self.model
        return [candidates[0].strip() for candidates in answer_samples(model, processor, samples, images)]

    def pair(self, sample: Sample, relative: str, provenance: dict, rejected: str) -> PreferencePair:
        suffix = "-visual" if self.noise_region == "lesion" else "-visual-whole"
        return PreferencePair(
            id=f"{sample.id}{suffix}{'-gold' if self.rejected == 'gold' else ''}",
            sample_id=sample.id,
            task=sample.task,
            kind="visual",
            image=sample.image,
            rejected_image=relative,
            region=self.noise_region,
            rejected_text="gold" if self.rejected == "gold" else None,
            question=sample.question,
            chosen=sample.answer,
            rejected=rejected,
            answer_type=sample.answer_type,
            provenance={"generator": self.generator, **provenance},
        )


def curate_visual_regions(
    samples: Sequence[Sample],
    out_paths: dict[tuple[str, str], Path],
    settings: CurateVisualConfig,
    image_roots: Sequence[Path],
    noised_root: Path,
    model_dir: Path,
    seed: int = 0,
    show_progress: bool = True,
    sft_samples: Sequence[Sample] = (),
    classifier_path: Path | None = None,
) -> dict:
    """Visual pairs for every (noise region, rejected text) of `out_paths` (-> its pairs file); returns a summary.

    The localizer is the configured one (`imaging.run_localizer`: `auto` is the
    data's annotation, else the attribution of the model in `model_dir`); the
    annotation localizer draws regions for images without annotation from the
    lesions of `samples` of the same split. Grad-CAM without a given classifier
    trains the small default CNN on `sft_samples` into `classifier_path` first.
    Where the samples carry true lesion masks and the localizer is not the
    annotation itself, the summary says how well its regions match them
    (`localizer_iou`); otherwise it says why that was not measured.
    """
    localizer, note = build_run_localizer(
        settings, samples, sft_samples, image_roots, classifier_path, model_dir, seed=seed
    )
    if localizer.name == "annotation":  # a region for every image: unannotated ones get a real lesion's place
        localizer = localizer.drawing_from(samples, seed)
    summaries = {}
    for (region, rejected), out_path in out_paths.items():
        summaries[out_path.name.removeprefix("pairs.").removesuffix(".jsonl")] = curate_visual(
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
            rejected=rejected,
        ).as_dict()
    first = summaries[next(iter(summaries))]
    iou = _localizer_iou(samples, image_roots, localizer)
    notes = [note] + ([f"localizer_iou {iou}"] if isinstance(iou, str) else [])
    return {**first, "by_file": summaries if len(summaries) > 1 else None, "localizer_iou": iou, "notes": notes}


def _localizer_iou(samples, image_roots, localizer) -> dict | str:
    """`localizer_iou` against the samples' true masks, or why it was not measured."""
    if localizer.name == "annotation":
        return "not measured: the localizer is the annotation itself"
    if not any(sample.meta.get("lesion_mask") for sample in samples):
        return "not measured: no curated sample has a lesion_mask to compare with"
    return localizer_iou(samples, image_roots, localizer)
