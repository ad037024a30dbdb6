"""data.split_map: dataset splits renamed or cut by image into the pipeline's; the llava readers' split files."""

from __future__ import annotations

import json

import pytest

from dataset_layouts import write_llava_generic
from mmedpo.config import DataConfig, load_config
from mmedpo.data.readers import read_dataset
from mmedpo.data.sources import read_samples
from mmedpo.data.splits import image_fractions, map_splits, shared_images, split_notes, unused_splits
from mmedpo.records import Sample


def samples_of(images: int, per_image: int = 3, split: str = "train") -> list[Sample]:
    return [
        Sample(id=f"{split}{i}-{k}", task="vqa", image=f"{split}/{i}.png", question="q?", answer="a", split=split)
        for i in range(images)
        for k in range(per_image)
    ]


def test_a_fraction_cut_is_by_image_seeded_and_rounded():
    rows = samples_of(11) + samples_of(4, split="test")
    mapped = map_splits(rows, {"train": {"sft": 0.5, "pref": 0.3, "val": 0.2}, "test": "test"}, seed=0)
    images = {name: {s.image for s in mapped if s.split == name} for name in ("sft", "pref", "val", "test")}
    # Cumulative cuts at round(0.5 * 11) = 6 and round(0.8 * 11) = 9: 6, 3 and 2 images.
    assert [len(images[name]) for name in ("sft", "pref", "val", "test")] == [6, 3, 2, 4]
    assert shared_images(mapped) == {}  # every question of an image goes where the image goes
    assert len(mapped) == len(rows) and [s.id for s in mapped] == [s.id for s in rows]  # order and count kept
    assert map_splits(rows, {"train": {"sft": 0.5, "pref": 0.5}}, seed=0) == map_splits(
        rows, {"train": {"sft": 0.5, "pref": 0.5}}, seed=0
    )
    other_seed = image_fractions(rows, "train", {"sft": 0.5, "pref": 0.5}, seed=1)
    assert other_seed != image_fractions(rows, "train", {"sft": 0.5, "pref": 0.5}, seed=0)


def test_renaming_keeps_unmapped_splits_and_reports_what_no_stage_reads():
    rows = samples_of(2) + samples_of(2, split="val") + samples_of(1, split="extra")
    mapped = map_splits(rows, {"train": "pref"}, seed=0)
    assert {s.split for s in mapped} == {"pref", "val", "extra"}
    assert unused_splits(mapped) == {"extra": 3}
    shared = [s.model_copy(update={"split": "test", "id": s.id + "t"}) for s in mapped if s.split == "pref"]
    assert shared_images(mapped + shared) == {"pref and test": 2}  # a dataset's own splits may share images
    assert split_notes(mapped + shared) == [
        "3 samples of split 'extra' are used by no stage: map it in data.split_map",
        "2 images are in both pref and test",
    ]


@pytest.mark.parametrize(
    "split_map, message",
    [
        ({"train": "prefs"}, "data.split_map: train: ['prefs'] are not pipeline splits (sft, pref, test, val)"),
        ({"train": {"sft": 0.5, "pref": 0.4}}, "data.split_map: train: fractions {'sft': 0.5, 'pref': 0.4} must"),
        ({"train": {"sft": 1.5, "pref": -0.5}}, "must each lie in (0, 1] and sum to 1"),
        ({"train": {"sft": 1.0, "tset": 0.0}}, "['tset'] are not pipeline splits"),
    ],
)
def test_a_bad_split_map_fails_on_load_naming_it(split_map, message):
    with pytest.raises(ValueError) as error:
        load_config(None, [f"data.split_map={json.dumps(split_map)}"])
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_the_llava_reader_reads_separate_train_and_test_files(tmp_path):
    write_llava_generic(tmp_path, train=4, test=2)
    samples, rejects = read_dataset("llava", tmp_path)  # no split: every split file there
    assert rejects == [] and {s.split for s in samples} == {"train", "test"}
    assert sum(s.split == "train" for s in samples) == 12 and sum(s.split == "test" for s in samples) == 6
    (tmp_path / "train.json").rename(tmp_path / "vqa_train.json")
    named, _ = read_dataset("llava", tmp_path, files={"train": "vqa_train.json", "validation": "test.json"})
    assert {s.split for s in named} == {"train", "val"}
    only_val, _ = read_dataset("llava", tmp_path, split="val", files={"train": "vqa_train.json", "val": "test.json"})
    assert len(only_val) == 6 and {s.split for s in only_val} == {"val"}
    with pytest.raises(ValueError, match="give either 'file' or 'files'"):
        read_dataset("llava", tmp_path, file="test.json", files={"test": "test.json"})
    with pytest.raises(ValueError, match="split 'sft' is not among the files option's splits"):
        read_dataset("llava", tmp_path, split="sft", files={"test": "test.json"})
    (tmp_path / "test.json").unlink()
    with pytest.raises(FileNotFoundError, match="none of train.json, val.json, validate.json, validation.json"):
        read_dataset("llava", tmp_path)


def test_read_samples_maps_a_dataset_and_a_sample_file(tmp_path):
    write_llava_generic(tmp_path / "shapes", train=8, test=2)
    settings = DataConfig(
        source="dataset",
        dataset="llava",
        image_root=str(tmp_path / "shapes"),
        split_map={"train": {"sft": 0.5, "pref": 0.5}, "test": "test"},
    )
    samples, _ = read_samples(settings, tmp_path / "images", seed=0)
    counts = {name: sum(s.split == name for s in samples) for name in ("sft", "pref", "test")}
    assert counts == {"sft": 12, "pref": 12, "test": 6}
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(s.model_copy(update={"split": "train"}).model_dump_json() + "\n" for s in samples))
    from_file, _ = read_samples(DataConfig(source="samples", samples=str(path)), tmp_path / "images", seed=0)
    assert {s.split for s in from_file} == {"pref"}  # the default map: train -> pref
