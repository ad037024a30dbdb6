"""`convert` between our JSONL, the MMedPO JSON, HF datasets (disk, Parquet) and TRL's format."""

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from helpers import make_pair
from mmedpo.data.convert import convert_pairs, pair_format, read_pairs
from mmedpo.data.hf_formats import read_dataset_pairs, save_dataset, trl_dataset

FIXTURES = sorted((Path(__file__).parent / "data" / "mmedpo-released").glob("*.json"))
TARGETS = ["p.jsonl", "p.parquet", "p.trl.parquet", "p.trl", "p.hf"]


def test_format_follows_the_name_or_the_flag():
    names = ["a.jsonl", "a.json", "a.parquet", "a.trl.parquet", "a.trl", "folder"]
    assert [pair_format(n) for n in names] == ["jsonl", "mmedpo", "parquet", "trl-parquet", "trl", "hf"]
    assert pair_format("x.parquet", "trl-parquet") == "trl-parquet"
    with pytest.raises(ValueError, match="formats are jsonl, mmedpo, parquet"):
        pair_format("x", "csv")


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.stem)
def test_released_files_go_through_every_format_and_back_unchanged(fixture, tmp_path):
    original = json.loads(fixture.read_text(encoding="utf-8"))
    for target in TARGETS:
        summary = convert_pairs(fixture, tmp_path / target)
        assert (summary["read"], summary["accepted"], summary["rejected"]) == (24, 24, 0), target
        back = tmp_path / f"back-{target}.json"
        assert convert_pairs(tmp_path / target, back)["accepted"] == 24
        assert json.loads(back.read_text(encoding="utf-8")) == original, target


def test_trl_columns_are_what_training_reads(tmp_path):
    pair = make_pair(1, kind="visual", rejected_image="noised/a.png", weight=0.25)
    row = trl_dataset([pair, make_pair(2)])[0]
    assert row["prompt"] == [
        {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "Is there a nodule?"}]}
    ]
    assert row["chosen"] == [{"role": "assistant", "content": [{"type": "text", "text": "yes"}]}]
    assert row["rejected"][0]["content"][0]["text"] == "no"
    assert (row["weight"], row["kind"], row["id"]) == (0.25, "visual", "p1")
    assert trl_dataset([make_pair(2)])[0]["weight"] == 1.0  # a missing weight trains as 1


def test_trl_embeds_images_given_roots_and_reads_back_paths(tmp_path):
    Image.new("RGB", (4, 4), (9, 8, 7)).save(tmp_path / "a.png")
    (tmp_path / "noised").mkdir()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "noised" / "a.png")
    pairs = [make_pair(1, kind="visual", rejected_image="noised/a.png", weight=0.5), make_pair(2)]
    dataset = trl_dataset(pairs, [tmp_path])
    save_dataset(dataset, tmp_path / "out.trl")
    row = dataset[0]
    assert row["images"][0].getpixel((0, 0)) == (9, 8, 7) and row["rejected_images"][0].getpixel((0, 0)) == (1, 2, 3)
    back, rejects = read_dataset_pairs(tmp_path / "out.trl")
    assert rejects == [] and back == pairs


def test_edits_made_in_trl_format_survive_the_way_back(tmp_path):
    dataset = trl_dataset([make_pair(1, weight=0.5)])
    edited = dataset.map(
        lambda row: {
            "weight": 0.75,
            "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "maybe"}]}],
        }
    )
    save_dataset(edited, tmp_path / "e.trl.parquet")
    pair = read_dataset_pairs(tmp_path / "e.trl.parquet")[0][0]
    assert (pair.weight, pair.rejected, pair.chosen) == (0.75, "maybe", "yes")


def test_foreign_trl_dataset_without_our_pair_column(tmp_path):
    dataset = trl_dataset([make_pair(1, kind="visual", rejected_image="n/a.png", weight=0.5)]).remove_columns(["pair"])
    save_dataset(dataset, tmp_path / "f.parquet")
    pair = read_dataset_pairs(tmp_path / "f.parquet")[0][0]
    assert (pair.id, pair.kind, pair.image, pair.rejected_image, pair.weight, pair.question) == (
        "p1",
        "visual",
        "a.png",
        "n/a.png",
        0.5,
        "Is there a nodule?",
    )


def test_malformed_pairs_are_rejects_naming_file_and_record(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")  # exists: that is all a pair's check needs
    good = make_pair(1).model_dump_json()
    lines = [
        good,
        good.replace('"weight":null', '"weight":NaN'),  # NaN weight
        make_pair(3).model_dump_json().replace('"weight":null', '"weight":-0.5'),  # negative weight
        make_pair(4, kind="visual").model_dump_json(),  # visual pair without rejected image
        make_pair(5, kind="visual", rejected_image="noised/gone.png").model_dump_json(),  # rejected image missing
        make_pair(6, image="../escape.png").model_dump_json(),  # escaping path
        make_pair(7).model_dump_json().replace('"chosen":"yes"', '"chosen":null'),  # null answer
        '{"id": "p8", "question": 5}',  # wrong types, missing fields
        good,  # duplicate id
    ]
    source = tmp_path / "pairs.jsonl"
    source.write_bytes("\n".join(lines).encode() + b"\n" + b'{"id": "p9", "chosen": "\xff"}\n')
    summary = convert_pairs(source, tmp_path / "out.parquet", image_roots=[tmp_path])
    assert (summary["read"], summary["accepted"], summary["rejected"]) == (10, 1, 9)
    rejects = [json.loads(line) for line in Path(summary["rejects"]).read_text().splitlines()]
    by_source = {r["source"]: r["reason"] for r in rejects}
    assert "weight" in by_source[f"{source}:2"] and "weight" in by_source[f"{source}:3"]
    assert "chosen" in by_source[f"{source}:7"] and "question" in by_source[f"{source}:8"]
    assert "duplicate id 'p1'" in by_source[f"{source}:9"] and "UTF-8" in by_source[f"{source}:10"]
    assert by_source[f"{source} (pair p4)"] == "visual pair without a rejected_image"
    assert "'noised/gone.png' not found" in by_source[f"{source} (pair p5)"]
    assert "escapes its image root" in by_source[f"{source} (pair p6)"]


def test_out_of_range_weight_in_mmedpo_json_and_parquet(tmp_path):
    record = json.loads(FIXTURES[2].read_text())[0]
    (tmp_path / "w.json").write_text(
        json.dumps([{**record, "weighted_score": 1.5}, {**record, "id": 5, "weighted_score": -0.1}])
    )
    pairs, rejects = read_pairs(tmp_path / "w.json")
    assert pairs == [] and ["[0, 1]" in r.reason for r in rejects] == [True, True]
    dataset = trl_dataset([make_pair(1)]).map(lambda row: {"weight": math.nan})
    save_dataset(dataset, tmp_path / "n.trl.parquet")
    pairs, rejects = read_pairs(tmp_path / "n.trl.parquet")
    assert pairs == [] and "finite" in rejects[0].reason and rejects[0].source == f"{tmp_path / 'n.trl.parquet'}#0"
