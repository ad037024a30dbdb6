"""SynthMed: determinism, answers that agree with the masks, visible lesions and a prior that fails on test."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmedpo.records import Sample
from mmedpo.synth import answer_statistics, draw_case, generate_synthmed, prior_baseline, synthmed_corpus
from mmedpo.synth.drawing import Finding, draw_radiograph
from mmedpo.synth.questions import PRIORS

# Written out by hand (not imported) so a template change that breaks the meaning is caught.
PHRASES = {
    "a nodule": "nodule",
    "a pleural effusion": "effusion",
    "consolidation": "consolidation",
    "a pneumothorax": "pneumothorax",
    "cardiomegaly": "cardiomegaly",
}
NOUNS = {
    "nodule": "nodule",
    "pleural effusion": "effusion",
    "consolidation": "consolidation",
    "pneumothorax": "pneumothorax",
}
REPORT_WORDS = {
    "nodule": "nodule",
    "effusion": "pleural effusion",
    "consolidation": "consolidation",
    "pneumothorax": "pneumothorax",
    "cardiomegaly": "heart is enlarged",
}
SIZE = 64


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthmed")
    samples = generate_synthmed(root, {"sft": 60, "pref": 10, "test": 60}, seed=0, image_size=SIZE)
    return root, samples


def file_hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.png"))
    }


def load_mask(root: Path, relative: str) -> np.ndarray:
    pixels = np.asarray(Image.open(root / relative))
    assert set(np.unique(pixels)) <= {0, 255}
    return pixels == 255


def answer_from_masks(root: Path, sample: Sample) -> str:
    """A "looking" oracle: answers each question from the mask files alone."""
    masks = {f["name"]: load_mask(root, f["mask"]) for f in sample.meta["findings"]}
    attributes = {f["name"]: f for f in sample.meta["findings"]}
    question = sample.question
    if match := re.fullmatch(r"Is there (.+) in the (right|left) lung\?", question):
        mask = masks.get(PHRASES[match[1]])
        if mask is None:
            return "no"
        columns = np.nonzero(mask)[1]
        # Patient's right is the image left.
        on_right = columns.max() < SIZE // 2
        assert on_right or columns.min() >= SIZE // 2, "a lung finding straddles the midline"
        return "yes" if on_right == (match[2] == "right") else "no"
    if match := re.fullmatch(r"Is there (.+)\?", question):
        return "yes" if PHRASES[match[1]] in masks else "no"
    if question == "What abnormality is seen?":
        return " and ".join(sorted(masks, key=list(REPORT_WORDS).index)) or "no finding"
    if match := re.fullmatch(r"Which lung has the (.+)\?", question):
        return "right" if np.nonzero(masks[NOUNS[match[1]]])[1].mean() < SIZE / 2 else "left"
    if match := re.fullmatch(r"Which zone is the (.+) in\?", question):
        return attributes[NOUNS[match[1]]]["zone"]
    if match := re.fullmatch(r"How large is the (.+)\?", question):
        return attributes[NOUNS[match[1]]]["size"]
    raise AssertionError(f"unexpected question {question!r}")


def test_same_seed_same_bytes_and_samples_different_seed_differs(tmp_path):
    sizes = {"sft": 4, "pref": 2, "test": 3}
    first = generate_synthmed(tmp_path / "a", sizes, seed=7)
    second = generate_synthmed(tmp_path / "b", sizes, seed=7)
    other = generate_synthmed(tmp_path / "c", sizes, seed=8)
    assert first == second
    hashes = file_hashes(tmp_path / "a")
    assert hashes == file_hashes(tmp_path / "b")
    other_hashes = file_hashes(tmp_path / "c")
    images = [name for name in hashes if re.fullmatch(r".*/\d{5}\.png", name)]
    assert len(images) == 9
    assert all(hashes[name] != other_hashes[name] for name in images)
    assert [s.answer for s in first] != [s.answer for s in other]


def test_a_split_size_does_not_change_other_images(tmp_path):
    generate_synthmed(tmp_path / "a", {"sft": 2, "test": 3}, seed=0)
    generate_synthmed(tmp_path / "b", {"sft": 5, "test": 3, "val": 2}, seed=0)
    a, b = file_hashes(tmp_path / "a"), file_hashes(tmp_path / "b")
    assert a == {name: digest for name, digest in b.items() if name in a}
    assert len(b) > len(a)


def test_validation_split_is_the_test_distribution_on_other_images(tmp_path):
    samples = generate_synthmed(tmp_path, {"test": 3, "val": 3}, seed=0)
    test = [s for s in samples if s.split == "test"]
    val = [s for s in samples if s.split == "val"]
    assert PRIORS["val"] == PRIORS["test"]
    assert {s.image for s in val}.isdisjoint(s.image for s in test)
    hashes = file_hashes(tmp_path)
    test_files = {digest for name, digest in hashes.items() if "/test/" in name}
    assert test_files and test_files.isdisjoint(digest for name, digest in hashes.items() if "/val/" in name)


def test_layout_ids_and_meta(dataset):
    root, samples = dataset
    sample = samples[0]
    assert sample.id == "synthmed-sft-00000-0" and sample.image == "synthmed/sft/00000.png"
    assert (root / sample.image).is_file()
    assert Image.open(root / sample.image).mode == "L" and Image.open(root / sample.image).size == (SIZE, SIZE)
    assert sample.meta["modality"] == "x-ray" and sample.meta["organ"] == "chest"
    assert len({s.id for s in samples}) == len(samples)
    per_image: dict[str, list[Sample]] = {}
    for s in samples:
        per_image.setdefault(s.meta["image_id"], []).append(s)
    for image_id, group in per_image.items():
        kinds = [s.meta["question_kind"] for s in group]
        assert kinds[:3] == ["presence", "presence_side", "which"] and kinds[-1] == "report"
        assert [s.answer_type for s in group[:3]] == ["closed", "closed", "open"]
        assert group[-1].task == "report" and group[-1].answer_type is None
        findings = group[0].meta["findings"]
        assert (group[0].meta["lesion_mask"] is None) == (not findings)
        assert len(findings) <= 2
        sides = [f["side"] for f in findings if f["side"]]
        assert len(set(sides)) == len(sides), "one lung finding per lung"
        assert [s.id for s in group] == [f"{image_id}-{k}" for k in range(len(group))]


def test_masks_are_nonempty_with_matching_bbox_area_and_union(dataset):
    root, samples = dataset
    images = {s.meta["image_id"]: s.meta for s in samples}
    checked = 0
    for meta in images.values():
        masks = []
        for finding in meta["findings"]:
            mask = load_mask(root, finding["mask"])
            rows, cols = np.nonzero(mask)
            assert rows.size > 0, finding
            assert finding["bbox"] == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
            assert finding["area"] == pytest.approx(rows.size / SIZE**2, abs=1e-6)
            masks.append(mask)
            checked += 1
        if masks:
            assert np.array_equal(load_mask(root, meta["lesion_mask"]), np.logical_or.reduce(masks))
    assert checked > 50


def test_every_answer_agrees_with_the_masks(dataset):
    root, samples = dataset
    vqa = [s for s in samples if s.task == "vqa"]
    wrong = [(s.id, s.question, s.answer) for s in vqa if answer_from_masks(root, s) != s.answer]
    assert not wrong
    assert {s.meta["question_kind"] for s in vqa} == {"presence", "presence_side", "which", "side", "zone", "size"}


def test_nodule_zone_and_size_are_drawn_as_said(dataset):
    root, samples = dataset
    nodules = {f["mask"]: f for s in samples for f in s.meta["findings"] if f["name"] == "nodule"}
    assert len(nodules) > 10
    for path, finding in nodules.items():
        rows, _ = np.nonzero(load_mask(root, path))
        # Upper-zone centres sit at most 0.452 of the height down, lower-zone ones at least 0.472.
        assert ((rows.mean() + 0.5) / SIZE < 0.462) == (finding["zone"] == "upper"), finding
        # Radii 5.5-6.5 vs 8-9 px at 128, i.e. 2.75-3.25 vs 4-4.5 px at 64: areas ~24-33 vs ~50-64.
        assert (rows.size < 42) == (finding["size"] == "small"), (finding, rows.size)


def test_report_mentions_exactly_the_findings_present(dataset):
    _, samples = dataset
    for report in (s for s in samples if s.task == "report"):
        sentences = report.answer.split(". ")
        assert 3 <= len(sentences) <= 5
        positive = " ".join(s for s in sentences if not s.startswith("No ")).lower()
        present = {f["name"]: f for f in report.meta["findings"]}
        for name, words in REPORT_WORDS.items():
            assert (words in positive) == (name in present), (report.answer, name)
        for finding in present.values():
            if finding["side"]:
                sentence = next(s for s in sentences if REPORT_WORDS[finding["name"]] in s.lower())
                assert finding["side"] in sentence.lower()
    normal = next(s for s in samples if s.task == "report" and not s.meta["findings"])
    assert normal.answer == "The lungs are clear. No pleural effusion. No pneumothorax. The heart size is normal."


def test_masks_lie_inside_their_lung_and_match_a_redraw(dataset):
    root, samples = dataset
    metas = {s.meta["image_id"]: s for s in samples if s.meta["findings"]}
    for image_id, sample in list(metas.items())[:25]:
        split, index = sample.split, int(image_id.rsplit("-", 1)[1])
        findings, drawing, _ = draw_case(0, split, index, SIZE)
        assert np.array_equal(np.asarray(Image.open(root / sample.image)), drawing.pixels)
        for finding in sample.meta["findings"]:
            mask = load_mask(root, finding["mask"])
            assert np.array_equal(mask, drawing.masks[finding["name"]])
            if finding["side"]:
                assert not (mask & ~drawing.lungs[finding["side"]]).any(), finding
            else:  # cardiomegaly: the heart straddles the midline, mostly toward the patient's left
                cols = np.nonzero(mask)[1]
                assert cols.min() < SIZE / 2 < cols.max() and cols.mean() > SIZE / 2


@pytest.mark.parametrize("side", ["right", "left"])
def test_regional_findings_look_as_they_should(side):
    rng = np.random.default_rng(3)
    for finding, darker in (
        (Finding("pneumothorax", side), True),
        (Finding("effusion", side, None, "large"), False),
        (Finding("consolidation", side, "upper"), False),
    ):
        drawing = draw_radiograph([finding], rng)
        mask, lung = drawing.masks[finding.name], drawing.lungs[side]
        pixels = drawing.pixels.astype(float)
        # The mask covers the abnormal region only: the rest of the lung looks different.
        gap = pixels[lung & ~mask].mean() - pixels[mask].mean()
        assert gap > 25 if darker else gap < -25, (finding, gap)
        if darker:  # air all over the mask: only ribs and the pleural line are lighter
            assert np.percentile(pixels[mask], 90) < 45
    effusion_rows = np.nonzero(drawing_of(Finding("effusion", side, None, "small")).masks["effusion"])[0]
    lung_rows = np.nonzero(drawing_of(Finding("effusion", side, None, "small")).lungs[side])[0]
    assert effusion_rows.max() == lung_rows.max()  # fluid lies at the base
    assert effusion_rows.min() > lung_rows.min() + 0.6 * (lung_rows.max() - lung_rows.min())


def drawing_of(finding: Finding):
    return draw_radiograph([finding], np.random.default_rng(0))


@pytest.mark.parametrize(
    "finding",
    [
        Finding("nodule", "right", "upper", "small"),
        Finding("nodule", "left", "lower", "small"),
        Finding("effusion", "left", None, "small"),
        Finding("consolidation", "right", "lower"),
        Finding("pneumothorax", "left"),
        Finding("cardiomegaly"),
    ],
)
def test_each_finding_is_visible_at_64_px(finding):
    def at_64(array):
        return np.asarray(Image.fromarray(array).resize((64, 64), Image.BILINEAR)).astype(float)

    for seed in range(3):
        # The anatomy is drawn before the findings, so the same generator state gives the same chest.
        sick = draw_radiograph([finding], np.random.default_rng(seed))
        healthy = draw_radiograph([], np.random.default_rng(seed))
        inside = at_64(sick.masks[finding.name].astype(np.uint8) * 255) > 127
        contrast = np.abs(at_64(sick.pixels) - at_64(healthy.pixels))[inside].mean()
        assert contrast > (15 if finding.name == "cardiomegaly" else 25), (finding, seed, contrast)


def test_prior_is_right_on_sft_and_wrong_on_test_while_looking_is_right(dataset):
    root, samples = dataset
    sft = [s for s in samples if s.split == "sft"]
    test = [s for s in samples if s.split == "test"]
    on_test = prior_baseline(sft, test)
    assert on_test["n_closed"] == 120
    assert on_test["closed_accuracy"] <= 0.5
    assert prior_baseline(sft, sft)["closed_accuracy"] >= 0.7
    looking = [answer_from_masks(root, s) == s.answer for s in test if s.task == "vqa"]
    assert np.mean(looking) == 1.0
    closed = answer_statistics(samples)
    sft_yes = closed["sft"]["presence"]["answers"]["yes"]
    test_yes = closed["test"]["presence"]["answers"]["yes"]
    assert sft_yes >= 0.7 and test_yes <= 0.45
    assert closed["sft"]["side"]["answers"]["right"] >= 0.6


def sample(id, question, answer, answer_type="closed", split="sft", kind="presence"):
    return Sample(
        id=id,
        task="vqa",
        image="x.png",
        question=question,
        answer=answer,
        answer_type=answer_type,
        split=split,
        meta={"question_kind": kind},
    )


def test_prior_baseline_by_hand():
    sft = [
        sample("1", "Q1", "yes"),
        sample("2", "Q1", "yes"),
        sample("3", "Q1", "no"),
        sample("4", "Q2", "no"),
        sample("5", "Q4", "right", "open", kind="side"),
        sample("6", "Q4", "right", "open", kind="side"),
        sample("7", "Q4", "left", "open", kind="side"),
    ]
    test = [
        sample("a", "Q1", "no", split="test"),  # guess yes: wrong
        sample("b", "Q2", "no", split="test"),  # guess no: right
        sample("c", "Q3", "yes", split="test"),  # unseen; closed answers tie 2-2, "no" first: wrong
        sample("d", "Q4", " Right", "open", split="test", kind="side"),  # guess right: right
    ]
    result = prior_baseline(sft, test)
    assert result == {"closed_accuracy": pytest.approx(1 / 3), "open_accuracy": 1.0, "n_closed": 3, "n_open": 1}


def test_answer_statistics_and_corpus_by_hand():
    samples = [
        sample("1", "Q1", "yes"),
        sample("2", "Q1", "yes"),
        sample("3", "Q2", "no"),
        sample("4", "Q4", "left", "open", kind="side"),
        sample("5", "Q1", "no", split="test"),
    ]
    assert answer_statistics(samples) == {
        "sft": {
            "presence": {"n": 3, "answers": {"yes": pytest.approx(2 / 3), "no": pytest.approx(1 / 3)}},
            "side": {"n": 1, "answers": {"left": 1.0}},
        },
        "test": {"presence": {"n": 1, "answers": {"no": 1.0}}},
    }
    assert synthmed_corpus(samples[:2]) == ["Q1", "yes", "Q1", "yes"]


def test_vocabulary_is_small_and_answers_short(dataset):
    _, samples = dataset
    words = {w for text in synthmed_corpus(samples) for w in re.findall(r"[a-z]+", text.lower())}
    assert len(words) < 60
    for s in samples:
        if s.task == "vqa":
            assert 1 <= len(s.answer.split()) <= 3, s.answer


def test_splits_are_disjoint(dataset):
    root, samples = dataset
    by_split: dict[str, set[str]] = {}
    for s in samples:
        by_split.setdefault(s.split, set()).add(hashlib.sha256((root / s.image).read_bytes()).hexdigest())
    assert set(by_split) == {"sft", "pref", "test"}
    assert not (by_split["sft"] & by_split["test"]) and not (by_split["sft"] & by_split["pref"])
    assert not (by_split["pref"] & by_split["test"])
    assert len(by_split["sft"]) == 60  # no two images alike, even inside a split


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown SynthMed split 'train'"):
        generate_synthmed(tmp_path, {"train": 3})
    with pytest.raises(ValueError, match="'sft'.*integer >= 0"):
        generate_synthmed(tmp_path, {"sft": -1})
    with pytest.raises(ValueError, match="image_size"):
        generate_synthmed(tmp_path, {"sft": 1}, image_size=16)
    with pytest.raises(ValueError, match="one lung finding per lung"):
        draw_radiograph(
            [Finding("nodule", "right", "upper", "small"), Finding("pneumothorax", "right")], np.random.default_rng(0)
        )
    with pytest.raises(ValueError, match="zone"):
        draw_radiograph([Finding("nodule", "right", None, "small")], np.random.default_rng(0))


def test_drawing_is_fast():
    start = time.perf_counter()
    for index in range(200):
        draw_case(0, "sft", index)
    # About 2 s on a loaded 2-core machine at 128 px.
    assert time.perf_counter() - start < 8
