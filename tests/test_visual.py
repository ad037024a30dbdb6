"""The visual-pair stage on SynthMed with the tiny LLaVA: counts, one noised image per source image,
bits outside the region, 8/16-bit, RGB and DICOM inputs, previews, and resuming after a kill."""

from __future__ import annotations

import errno
import shutil
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from mmedpo.config import CurateVisualConfig
from mmedpo.curation import visual, visual_pairing
from mmedpo.curation.visual import curate_visual, make_noised_image
from mmedpo.data.images import load_image
from mmedpo.imaging.localizers import AnnotationLocalizer
from mmedpo.imaging.noise import add_regional_noise, image_seed, noise_weight, read_pixels
from mmedpo.models.answerer import Pending, Question
from mmedpo.records import PreferencePair, Reject, Sample, read_jsonl, rejects_path
from mmedpo.synth.synthmed import generate_synthmed

SETTINGS = CurateVisualConfig()


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return root, generate_synthmed(root, {"pref": 10}, seed=0, image_size=64)


def run_stage(root, samples, out, model_dir, pairs_name="pairs.visual.jsonl", settings=SETTINGS, **kwargs):
    return curate_visual(
        samples,
        out / pairs_name,
        settings,
        [root, out / "images"],
        out / "images",
        model_dir,
        seed=0,
        show_progress=False,
        **kwargs,
    )


@dataclass(frozen=True)
class AskedAbout(Question):
    sample: Sample | None = None  # whom the question is about, for the stand-in below


class LookingModel:
    """A stand-in for the target model's answers: well-formed words, from what the image shows.

    The tiny random LLaVA's greedy answers are byte junk ("_ef\x00 consolidation consolidation"), which the
    filters refuse; these tests are about noising and pairing, so the answers come from a model that reads
    the lesion and has a prior: on its clean image it answers closed questions "yes" (right when the truth is
    yes) and the rest rightly; with the region noised it says "no" to what it said "yes" to and names another
    finding (or writes another report) for the rest.
    """

    concurrency = 0
    name = "looking"

    def __init__(self, root):
        self.root = root

    def submit(self, questions):
        answers = [[self.answer(question.sample, question.image)] for question in questions]
        return Pending(lambda: answers)

    def answer(self, sample, image) -> str:
        clean = np.array_equal(np.asarray(image), np.asarray(load_image(self.root / sample.image)))
        if sample.answer_type == "closed":
            return "yes" if clean or sample.answer == "no" else "no"
        if clean:
            return sample.answer
        if sample.task == "report":
            return "Large right pleural effusion. The heart is enlarged."
        return "consolidation" if sample.answer == "nodule" else "nodule"


@pytest.fixture
def looking_model(monkeypatch, synth):
    """Curation asks `LookingModel` instead of loading the tiny model; its questions say whom they are about."""
    root, _ = synth
    real_questions = visual_pairing.sample_questions

    def questions(samples, images, **decoding):
        asked = real_questions(samples, images, **decoding)
        return [AskedAbout(q.image, q.prompt, q.decoding, sample) for q, sample in zip(asked, samples)]

    monkeypatch.setattr(visual_pairing, "sample_questions", questions)
    monkeypatch.setattr(visual, "LocalAnswerer", lambda model_dir: LookingModel(root))


def test_counts_add_up_and_each_image_is_noised_once(synth, tmp_path, tiny_vlm_dir, looking_model):
    root, samples = synth
    summary = run_stage(root, samples, tmp_path, tiny_vlm_dir, preview=2)
    pairs = read_jsonl(tmp_path / "pairs.visual.jsonl", PreferencePair)
    rejects = read_jsonl(rejects_path(tmp_path / "pairs.visual.jsonl"), Reject)
    assert summary.read == len(samples) == summary.paired + summary.rejected == len(pairs) + len(rejects)
    assert sorted([p.sample_id for p in pairs] + [r.id for r in rejects]) == sorted(s.id for s in samples)
    lesion_images = {s.image for s in samples if s.meta["lesion_mask"]}
    noised = sorted((tmp_path / "images" / "noised").rglob("*_t500.png"))
    assert len(noised) == len(lesion_images)  # one per source image, whatever its number of questions
    no_lesion = [s for s in samples if not s.meta["lesion_mask"]]
    assert {r.id for r in rejects if r.reason.startswith("no lesion region")} == {s.id for s in no_lesion}
    assert summary.drops["no lesion region"] == len(no_lesion)  # counted under one reason, not per image
    for sample in no_lesion:  # each of an image's samples gets the image's reason, naming no other sample
        reason = next(r.reason for r in rejects if r.id == sample.id)
        assert reason == f"no lesion region: image {sample.image}: no lesion_mask or lesion_boxes annotation"
    for pair in pairs:
        assert pair.kind == "visual" and pair.rejected_image == f"noised/{pair.image[:-4]}_lesion_t500.png"
        assert pair.rejected != pair.chosen
        provenance = pair.provenance
        assert provenance["localizer"] == "annotation" and 0 <= provenance["confidence"] < 1
        assert provenance["timestep"] == 500 and 0 < provenance["area_fraction"] < 0.6
        mask = np.asarray(Image.open(tmp_path / "images" / provenance["mask"])) > 0
        clean = np.asarray(Image.open(root / pair.image))
        noised_pixels = np.asarray(Image.open(tmp_path / "images" / pair.rejected_image))
        beyond = noise_weight(mask, SETTINGS.edge_sigma) == 0
        assert np.array_equal(noised_pixels[beyond], clean[beyond])
        assert (noise_weight(mask, SETTINGS.edge_sigma)[mask] == 1).all()  # every lesion pixel: the full step
        assert np.mean(noised_pixels[mask] != clean[mask]) > 0.9
        assert mask.mean() == pytest.approx(provenance["area_fraction"])
    assert len({pair.provenance["confidence"] for pair in pairs}) > 1  # conspicuity differs between images
    panels = sorted((tmp_path / "preview").rglob("*.png"))
    assert len(panels) == 2 and Image.open(panels[0]).size == (4 * 192, 192 + 16)


def test_every_pair_records_the_clean_answer_and_lesion_free_images_get_pairs(
    synth, tmp_path, tiny_vlm_dir, looking_model
):
    root, samples = synth
    localizer = AnnotationLocalizer().drawing_from(samples, seed=0)  # as the pipeline's stage does
    summary = run_stage(root, samples, tmp_path, tiny_vlm_dir, localizer=localizer)
    pairs = read_jsonl(tmp_path / "pairs.visual.jsonl", PreferencePair)
    rejects = read_jsonl(rejects_path(tmp_path / "pairs.visual.jsonl"), Reject)
    assert summary.read == len(pairs) + len(rejects) and not any(r.reason.startswith("no lesion") for r in rejects)
    assert len(list((tmp_path / "images" / "noised").rglob("*_t500.png"))) == len({s.image for s in samples})
    by_id = {sample.id: sample for sample in samples}
    for pair in pairs:
        provenance = pair.provenance
        right = visual_pairing.right_answer(by_id[pair.sample_id], provenance["clean_answer"])
        assert provenance["right_on_clean"] == right
        assert provenance["error"] == ("lesion-neglect" if provenance["right_on_clean"] else "wrong-on-clean")
        free = not by_id[pair.sample_id].meta["lesion_mask"]
        assert provenance["lesion_found"] is not free
        if free:  # a lesion-free image: the pair prefers the truth over what the model read into the noise
            assert provenance["confidence"] == 0.1 and provenance["label"].startswith("no finding (region of ")
    free_pairs = [pair for pair in pairs if not pair.provenance["lesion_found"]]
    assert free_pairs and all(pair.chosen == by_id[pair.sample_id].answer for pair in free_pairs)
    classes = Counter(pair.provenance["error"] for pair in pairs)
    assert classes["lesion-neglect"] and classes["wrong-on-clean"]  # both classes occur
    assert summary.pair_classes == {**classes, "no lesion found": len(free_pairs)}

    neglect = tmp_path / "neglect"
    only = run_stage(
        root,
        samples,
        neglect,
        tiny_vlm_dir,
        localizer=localizer,
        settings=SETTINGS.model_copy(update={"keep": "neglect"}),
    )
    kept = read_jsonl(neglect / "pairs.visual.jsonl", PreferencePair)
    assert kept == [pair for pair in pairs if pair.provenance["error"] == "lesion-neglect"]
    assert only.drops["wrong on the clean image too (keep"] == classes["wrong-on-clean"]
    assert only.read == only.paired + only.rejected


class CountingLocalizer:
    """The annotation localizer with a model of its own, as attribution's is: says when it localizes and frees."""

    name = "counting"

    def __init__(self, events: list):
        self.events, self.annotation = events, AnnotationLocalizer()

    def localize(self, sample, image_roots):
        self.events.append(("localize", sample.image))
        return self.annotation.localize(sample, image_roots)

    def release(self):
        self.events.append(("release", None))


def test_every_pairs_file_shares_one_region_per_image_found_before_the_answerer_loads(
    synth, tmp_path, tiny_vlm_dir, looking_model, monkeypatch
):
    root, samples = synth
    events = []
    monkeypatch.setattr(visual, "build_run_localizer", lambda *args, **kwargs: (CountingLocalizer(events), "note"))

    def answerer(model_dir):
        events.append(("answerer", None))
        return LookingModel(root)

    monkeypatch.setattr(visual, "LocalAnswerer", answerer)
    files = {
        (region, rejected): tmp_path / f"pairs.{region}-{rejected}.jsonl"
        for region in ("lesion", "whole")
        for rejected in ("model-answer", "gold")
    }
    roots = [root, tmp_path / "images"]
    visual.curate_visual_regions(samples, files, SETTINGS, roots, tmp_path / "images", tiny_vlm_dir)
    localized = Counter(image for event, image in events if event == "localize")
    assert localized == Counter({sample.image: 1 for sample in samples})  # once each, for all four files
    # Every region was found, and the localizer's model freed, before the target model loaded.
    assert [event for event, _ in events[len(localized) :]] == ["release", "answerer"]
    lesion_free = next(sample for sample in samples if not sample.meta["lesion_mask"])
    for path in files.values():
        reasons = {reject.id: reject.reason for reject in read_jsonl(rejects_path(path), Reject)}
        assert reasons[lesion_free.id] == (
            f"no lesion region: image {lesion_free.image}: no lesion_mask or lesion_boxes annotation"
        )


def test_a_resumed_stage_reads_its_saved_regions_instead_of_localizing_again(
    synth, tmp_path, tiny_vlm_dir, looking_model, monkeypatch
):
    root, samples = synth
    events = []
    monkeypatch.setattr(visual, "build_run_localizer", lambda *args, **kwargs: (CountingLocalizer(events), "note"))
    files = {(region, "model-answer"): tmp_path / f"pairs.{region}.jsonl" for region in ("lesion", "whole")}
    roots, regions = [root, tmp_path / "images"], tmp_path / "images" / "regions"

    def curate():
        return visual.curate_visual_regions(
            samples, files, SETTINGS, roots, tmp_path / "images", tiny_vlm_dir, regions_dir=regions
        )

    first = curate()
    written = {path: (path.read_bytes(), rejects_path(path).read_bytes()) for path in files.values()}
    assert first["localizer_iou"]["mean"] > 0.5 and (regions / "index.json").exists()
    noised = {path: path.read_bytes() for path in (tmp_path / "images" / "noised").rglob("*.png")}

    def kill():  # the first pairs written, no rejects yet, no noised image of the images still to pair
        for path in files.values():
            path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:3]))
            rejects_path(path).unlink()
        shutil.rmtree(tmp_path / "images" / "noised")
        events.clear()

    kill()
    real_build = visual.build_run_localizer
    monkeypatch.setattr(visual, "build_run_localizer", lambda *args, **kwargs: pytest.fail("localized again"))
    again = curate()
    assert events == []
    assert {path: (path.read_bytes(), rejects_path(path).read_bytes()) for path in files.values()} == written
    # Noised from the saved regions, the images (and masks) are the ones the regions found in memory gave.
    assert {path: path.read_bytes() for path in (tmp_path / "images" / "noised").rglob("*.png")} == noised
    assert again["already_done"] == 3 and again["localizer_iou"] == first["localizer_iou"]
    assert again["notes"] == first["notes"]
    # A saved mask a kill left damaged: the regions are found again, never an image "without a region".
    next(regions.rglob("*.png.png")).write_bytes(b"")
    kill()
    monkeypatch.setattr(visual, "build_run_localizer", real_build)
    curate()
    assert {path: (path.read_bytes(), rejects_path(path).read_bytes()) for path in files.values()} == written
    assert len([event for event in events if event[0] == "localize"]) == len({sample.image for sample in samples})


def test_image_conditional_pairs_reject_the_gold_answer_on_the_noised_image(synth, tmp_path):
    root, samples = synth
    localizer = AnnotationLocalizer().drawing_from(samples, seed=0)
    # No model is asked: the model folder does not even exist.
    summary = run_stage(
        root, samples, tmp_path, tmp_path / "no-model", "pairs.visual-gold.jsonl", localizer=localizer, rejected="gold"
    )
    pairs = read_jsonl(tmp_path / "pairs.visual-gold.jsonl", PreferencePair)
    assert summary.paired == len(pairs) == len(samples) and summary.pairs_by_generator == {"gold": len(samples)}
    for pair, sample in zip(pairs, samples):
        assert pair.id == f"{sample.id}-visual-gold" and pair.rejected_text == "gold"
        assert pair.chosen == pair.rejected == sample.answer and pair.rejected_image.endswith("_lesion_t500.png")
        assert "error" not in pair.provenance
    assert summary.pair_classes == {"no lesion found": sum(1 for s in samples if not s.meta["lesion_mask"])}


def test_right_answer_on_hand_cases():
    def sample(answer, answer_type):
        return Sample(id="s", task="vqa", image="x.png", question="q", answer=answer, answer_type=answer_type)

    assert visual_pairing.right_answer(sample("yes", "closed"), "Yes")
    assert not visual_pairing.right_answer(sample("yes", "closed"), "no")
    assert visual_pairing.right_answer(sample("no finding", "open"), "no finding")
    assert not visual_pairing.right_answer(sample("no finding", "open"), "consolidation")
    assert not visual_pairing.right_answer(sample("nodule", "open"), "")


def test_resume_after_a_kill_gives_the_uninterrupted_result(synth, tmp_path, tiny_vlm_dir, monkeypatch):
    root, samples = synth
    assert len(samples) > visual.CHUNK  # two chunks at least
    whole = tmp_path / "whole"
    run_stage(root, samples, whole, tiny_vlm_dir)

    killed = tmp_path / "killed"
    real_pairs, calls = visual_pairing.Pairing.pairs, []

    def dies_on_the_second_chunk(self, *args):
        calls.append(1)
        if len(calls) == 2:  # the first chunk is written, the second one is being paired
            raise KeyboardInterrupt
        return real_pairs(self, *args)

    monkeypatch.setattr(visual_pairing.Pairing, "pairs", dies_on_the_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        run_stage(root, samples, killed, tiny_vlm_dir)
    monkeypatch.setattr(visual_pairing.Pairing, "pairs", real_pairs)
    summary = run_stage(root, samples, killed, tiny_vlm_dir)
    assert summary.skipped_done == visual.CHUNK
    for name in ("pairs.visual.jsonl", "pairs.visual.rejects.jsonl"):
        assert (killed / name).read_text() == (whole / name).read_text()
    for path in (whole / "images").rglob("*.png"):
        assert (killed / path.relative_to(whole)).read_bytes() == path.read_bytes()
    assert not list(killed.rglob("*.partial"))


def test_whole_image_ablation_pairs_the_same_samples_with_noise_everywhere(synth, tmp_path, tiny_vlm_dir):
    root, samples = synth
    lesion = run_stage(root, samples, tmp_path, tiny_vlm_dir)
    summary = run_stage(root, samples, tmp_path, tiny_vlm_dir, "pairs.visual-whole.jsonl", noise_region="whole")
    pairs = read_jsonl(tmp_path / "pairs.visual-whole.jsonl", PreferencePair)
    rejects = read_jsonl(rejects_path(tmp_path / "pairs.visual-whole.jsonl"), Reject)
    assert summary.read == len(pairs) + len(rejects) == lesion.read
    # The same images are noised (the localizer decides which), each once, under its own name.
    assert len(list((tmp_path / "images" / "noised").rglob("*_whole_t500.png"))) == len(
        list((tmp_path / "images" / "noised").rglob("*_lesion_t500.png"))
    )
    for pair in pairs:
        assert pair.id == f"{pair.sample_id}-visual-whole" and pair.rejected_image.endswith("_whole_t500.png")
        assert pair.region == "whole" and pair.provenance["area_fraction"] == 1.0
        clean = np.asarray(Image.open(root / pair.image), dtype=float)
        noised = np.asarray(Image.open(tmp_path / "images" / pair.rejected_image), dtype=float)
        assert np.mean(np.abs(noised - clean) > 0) > 0.9  # nearly every pixel changed, not just the lesion's
    with pytest.raises(ValueError, match="noise_region must be 'lesion' or 'whole'"):
        run_stage(root, samples, tmp_path, tiny_vlm_dir, noise_region="border")


def lesion_case(tmp_path, pixels: np.ndarray, name: str) -> tuple[Sample, np.ndarray]:
    mask = np.zeros(pixels.shape[:2], dtype=np.uint8)
    mask[8:20, 10:24] = 255
    Image.fromarray(mask).save(tmp_path / f"{name}_mask.png")
    sample = Sample(
        id=name,
        task="vqa",
        image=name,
        question="Is there a nodule?",
        answer="yes",
        meta={"lesion_mask": f"{name}_mask.png"},
    )
    return sample, mask > 0


def write_dicom(path, pixels: np.ndarray, bits_stored: int) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize("kind", ["L8", "RGB8", "L16", "DICOM12"])
def test_8_16_bit_rgb_and_dicom_inputs_keep_every_outside_pixel_the_model_sees(tmp_path, kind):
    rng = np.random.default_rng(1)
    # 16-bit and DICOM data use part of their range, as real scans do: rendering them is not the identity.
    if kind == "DICOM12":
        pixels = rng.integers(1000, 3000, size=(32, 40), dtype=np.uint16)
        name = "scan.dcm"
        write_dicom(tmp_path / name, pixels, bits_stored=12)
    else:
        dtype, shape = (
            (np.uint16, (32, 40)) if kind == "L16" else (np.uint8, (32, 40, 3) if kind == "RGB8" else (32, 40))
        )
        high = 20000 if kind == "L16" else 256
        pixels = rng.integers(5000 if kind == "L16" else 0, high, size=shape, dtype=dtype)
        name = "scan.png"
        Image.fromarray(pixels).save(tmp_path / name)
    sample, mask = lesion_case(tmp_path, pixels, name)
    relative, provenance, region = make_noised_image(
        sample, SETTINGS, [tmp_path], tmp_path / "out", 0, AnnotationLocalizer(dilation=0)
    )
    written, _ = read_pixels(tmp_path / "out" / relative)
    # 8-bit files are noised as stored; 16-bit and DICOM ones as the 8-bit picture the model is shown.
    shown = np.asarray(load_image(tmp_path / name))
    source = pixels if kind in ("L8", "RGB8") else shown[..., 0]
    assert written.dtype == np.uint8 and written.shape == source.shape
    beyond = noise_weight(mask, SETTINGS.edge_sigma) == 0
    assert np.array_equal(written[beyond], source[beyond])
    assert np.mean(written[mask] != source[mask]) > 0.9
    assert np.array_equal(written, add_regional_noise(source, mask, 500, image_seed(0, name)))
    # What the model sees of the noised image equals what it sees of the clean one, outside the lesion.
    noised_view = np.asarray(load_image(tmp_path / "out" / relative))
    assert np.array_equal(noised_view[beyond], shown[beyond])
    assert provenance["area_fraction"] == pytest.approx(mask.mean()) == pytest.approx(region.area_fraction)


def test_a_full_disk_is_an_error_of_the_run_not_a_reject(synth, tmp_path, monkeypatch):
    root, samples = synth
    localizer = AnnotationLocalizer().drawing_from(samples, seed=0)

    def full(self, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(Image.Image, "save", full)
    with pytest.raises(OSError, match="No space left on device"):
        run_stage(root, samples, tmp_path, tmp_path / "no-model", "pairs.visual-gold.jsonl", localizer=localizer,
                  rejected="gold")  # fmt: skip
    # Nothing was recorded as the image's fault: a rerun with room on the disk pairs every sample.
    rejects = tmp_path / "pairs.visual-gold.rejects.jsonl"
    assert not rejects.exists() or rejects.read_text() == ""
    monkeypatch.undo()
    summary = run_stage(root, samples, tmp_path, tmp_path / "no-model", "pairs.visual-gold.jsonl", localizer=localizer,
                        rejected="gold")  # fmt: skip
    assert summary.paired == len(samples)
