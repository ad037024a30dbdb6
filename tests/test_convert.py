"""`convert` between our JSONL, the MMedPO JSON, HF datasets (disk, Parquet), TRL, ms-swift and LLaMA-Factory.

The ms-swift and LLaMA-Factory exports are read back the way those tools read them, from
their documented formats (ms-swift: docs/source_en/Customization/Custom-dataset.md, RLHF;
LLaMA-Factory: data/README.md, ShareGPT preference and multimodal datasets); the tools
themselves are not installed.
"""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from datasets import load_dataset, load_from_disk
from huggingface_hub import DatasetCard
from PIL import Image

from helpers import make_pair
from mmedpo.data.convert import IDENTICAL, ExportWarning, convert_pairs, pair_format, read_pairs, write_pairs
from mmedpo.data.hf_formats import read_dataset_pairs, save_dataset, trl_dataset
from mmedpo.data.images import load_image
from mmedpo.data.tool_exports import LLAMA_FACTORY_DATASET

FIXTURES = sorted((Path(__file__).parent / "data" / "mmedpo-released").glob("*.json"))
TARGETS = ["p.jsonl", "p.parquet", "p.hf", "p.trl.parquet", "p.trl"]


def fixture_images(fixture: Path, root: Path) -> None:
    """A small image at every path the fixture names (the released files come without images)."""
    for record in json.loads(fixture.read_text(encoding="utf-8")):
        path = root / record["image"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (len(record["image"]) % 256, 0, 0)).save(path)


def released(records: list) -> bytes:
    """How the released files are written (their README)."""
    return json.dumps(records, indent=4, ensure_ascii=True).encode()


def two_images(root: Path) -> None:
    Image.new("RGB", (4, 4), (9, 8, 7)).save(root / "a.png")
    (root / "noised").mkdir(exist_ok=True)
    Image.new("RGB", (4, 4), (1, 2, 3)).save(root / "noised" / "a.png")


def test_format_follows_the_name_or_the_flag():
    names = ["a.jsonl", "a.json", "a.parquet", "a.trl.parquet", "a.trl", "a.hf", "folder", "a.ms-swift"]
    assert [pair_format(n) for n in names] == [
        "jsonl",
        "mmedpo",
        "parquet",
        "trl-parquet",
        "trl",
        "hf",
        "hf",
        "ms-swift",
    ]
    assert pair_format("x.llama-factory") == "llama-factory"
    assert pair_format("x.parquet", "trl-parquet") == "trl-parquet" and pair_format("x.csv", "hf") == "hf"
    with pytest.raises(ValueError, match="formats are jsonl, mmedpo, parquet"):
        pair_format("x", "csv")
    with pytest.raises(ValueError, match=r"x.csv: unknown suffix '.csv' \(known: .trl.parquet, .jsonl, .json"):
        pair_format("x.csv")


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.stem)
def test_released_files_go_through_every_format_and_back_byte_for_byte(fixture, tmp_path):
    fixture_images(fixture, tmp_path / "images")
    original = json.loads(fixture.read_text(encoding="utf-8"))
    # The SLAKE sample holds one pair whose answers are the same (id 704): it is dropped, with its reason.
    same = [r["id"] for r in original if r["conversations"][1]["value"] == r["rejected_conversations"][1]["value"]]
    expected = fixture.read_bytes() if not same else released([r for r in original if r["id"] not in same])
    assert same == ([704] if "slake" in fixture.name else [])
    for target in [*TARGETS, "p.json"]:
        summary = convert_pairs(fixture, tmp_path / target, image_roots=[tmp_path / "images"])
        assert (summary["read"], summary["accepted"], summary["rejected"]) == (24, 24 - len(same), len(same))
        assert summary["identical"] == len(same)
        back = tmp_path / f"back-{target}.json"
        assert convert_pairs(tmp_path / target, back)["accepted"] == 24 - len(same)
        assert back.read_bytes() == expected, target
    if same:
        reject = json.loads(Path(summary["rejects"]).read_text())
        assert reject == {"id": "704", "source": f"{fixture} (pair 704)", "reason": IDENTICAL}


def test_trl_columns_are_what_training_reads(tmp_path):
    two_images(tmp_path)
    pair = make_pair(1, kind="visual", rejected_image="noised/a.png", weight=0.25)
    row = trl_dataset([pair, make_pair(2)], [tmp_path])[0]
    assert row["prompt"] == [
        {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "Is there a nodule?"}]}
    ]
    assert row["chosen"] == [{"role": "assistant", "content": [{"type": "text", "text": "yes"}]}]
    assert row["rejected"][0]["content"][0]["text"] == "no"
    assert (row["weight"], row["kind"], row["id"]) == (0.25, "visual", "p1")
    assert trl_dataset([make_pair(2)], [tmp_path])[0]["weight"] == 1.0  # a missing weight trains as 1


def test_trl_embeds_images_and_reads_back_paths(tmp_path):
    two_images(tmp_path)
    pairs = [make_pair(1, kind="visual", rejected_image="noised/a.png", weight=0.5), make_pair(2)]
    dataset = trl_dataset(pairs, [tmp_path])
    save_dataset(dataset, tmp_path / "out.trl")
    row = dataset[0]
    assert row["images"][0].getpixel((0, 0)) == (9, 8, 7) and row["rejected_images"][0].getpixel((0, 0)) == (1, 2, 3)
    back, rejects = read_dataset_pairs(tmp_path / "out.trl")
    assert rejects == [] and back == pairs


def test_trl_export_refuses_to_run_without_its_images(tmp_path):
    source = tmp_path / "p.jsonl"
    source.write_text(make_pair(1).model_dump_json() + "\n")
    for target in ("out.trl", "out.trl.parquet", "out.ms-swift", "out.llama-factory"):
        with pytest.raises(ValueError, match=r"export carries the images its tool opens: give their image root"):
            convert_pairs(source, tmp_path / target)
        assert not (tmp_path / target).exists()
    with pytest.raises(ValueError, match="a TRL dataset embeds its images"):
        trl_dataset([make_pair(1)], [])


def test_trl_export_loads_as_plain_trl_reads_it_and_16_bit_images_come_as_the_model_sees_them(tmp_path):
    Image.fromarray(np.array([[1000, 2000], [3000, 5000]], dtype=np.uint16)).save(tmp_path / "a.png")
    source = tmp_path / "p.jsonl"
    source.write_text(make_pair(1).model_dump_json() + "\n")
    convert_pairs(source, tmp_path / "out.trl.parquet", image_roots=[tmp_path])
    row = load_dataset("parquet", data_files=str(tmp_path / "out.trl.parquet"))["train"][0]
    image = row["images"][0]  # decoded by datasets into PIL, as DPOTrainer receives it
    assert image.mode == "RGB" and np.asarray(image).tolist() == np.asarray(load_image(tmp_path / "a.png")).tolist()
    assert np.asarray(image)[..., 0].tolist() == [[0, 64], [128, 255]]  # not clipped to white by PIL's I;16 -> RGB


def test_trl_export_warns_what_plain_trl_ignores(tmp_path):
    two_images(tmp_path)
    pairs = [make_pair(1, kind="visual", rejected_image="noised/a.png", weight=0.5), make_pair(2, weight=1.5)]
    with pytest.warns(ExportWarning) as caught:
        write_pairs(pairs, tmp_path / "out.trl", image_roots=[tmp_path])
    assert [str(w.message) for w in caught] == [
        "plain TRL's DPOTrainer ignores `rejected_images`: 1 visual pairs would train on the clean image, "
        "as text pairs (mmedpo's `train_weighted_dpo` uses them)",
        "plain TRL's DPOTrainer ignores `weight`: 2 pairs' clinical weights would count as 1 "
        "(mmedpo's `train_weighted_dpo` uses them)",
    ]
    card = (tmp_path / "out.trl" / "README.md").read_text()
    assert "## What the target tool ignores" in card and "1 visual pairs would train on the clean image" in card


def test_edits_made_in_trl_format_survive_the_way_back(tmp_path):
    two_images(tmp_path)
    dataset = trl_dataset([make_pair(1, weight=0.5)], [tmp_path])
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
    two_images(tmp_path)
    pair = make_pair(1, kind="visual", rejected_image="noised/a.png", weight=0.5)
    save_dataset(trl_dataset([pair], [tmp_path]).remove_columns(["pair"]), tmp_path / "f.parquet")
    back = read_dataset_pairs(tmp_path / "f.parquet")[0][0]
    assert (back.id, back.kind, back.image, back.rejected_image, back.weight, back.question) == (
        "p1",
        "visual",
        "a.png",
        "noised/a.png",
        0.5,
        "Is there a nodule?",
    )


def test_malformed_pairs_are_rejects_naming_file_and_record(tmp_path):
    Image.new("L", (4, 4)).save(tmp_path / "a.png")
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
    assert by_source[f"{source}:2"] == "weight: weight must be a finite number >= 0, got nan"
    assert by_source[f"{source}:3"] == "weight: weight must be a finite number >= 0, got -0.5"
    assert by_source[f"{source}:7"] == "chosen: Input should be a valid string"
    assert by_source[f"{source}:8"].startswith("sample_id: Field required; task: Field required")
    assert by_source[f"{source}:9"] == "duplicate id 'p1'" and by_source[f"{source}:10"] == "chosen is not valid UTF-8"
    assert by_source[f"{source} (pair p4)"] == "visual pair without a rejected_image"
    assert by_source[f"{source} (pair p5)"] == f"image 'noised/gone.png' not found under {tmp_path}"
    assert by_source[f"{source} (pair p6)"] == "image path '../escape.png' escapes its image root"


def test_out_of_range_weight_in_mmedpo_json_and_parquet(tmp_path):
    record = json.loads(FIXTURES[2].read_text())[0]
    (tmp_path / "w.json").write_text(
        json.dumps([{**record, "weighted_score": 1.5}, {**record, "id": 5, "weighted_score": -0.1}])
    )
    pairs, rejects = read_pairs(tmp_path / "w.json")
    assert pairs == [] and [r.reason for r in rejects] == [
        "weighted_score must lie in [0, 1], got 1.5",
        "weighted_score must lie in [0, 1], got -0.1",
    ]
    two_images(tmp_path)
    dataset = trl_dataset([make_pair(1)], [tmp_path]).map(lambda row: {"weight": math.nan})
    save_dataset(dataset, tmp_path / "n.trl.parquet")
    pairs, rejects = read_pairs(tmp_path / "n.trl.parquet")
    assert pairs == [] and rejects[0].source == f"{tmp_path / 'n.trl.parquet'}#0"
    assert rejects[0].reason == "weight: weight must be a finite number >= 0, got nan"


def visual_and_text_pairs(root: Path) -> list:
    two_images(root)
    Image.fromarray(np.array([[0, 4000], [8000, 65535]], dtype=np.uint16)).save(root / "deep.png")
    return [
        make_pair(1, weight=0.5, clinical_score=0.8),
        make_pair(2, image="deep.png", question="Where?", chosen="left lung", rejected="right lung"),
        make_pair(3, kind="visual", rejected_image="noised/a.png", region="lesion", weight=1.5, clinical_score=0.9),
        make_pair(4, kind="visual", rejected_image="noised/a.png", region="lesion", rejected="yes"),  # same words
    ]


def test_ms_swift_export_reads_as_ms_swift_documents_it(tmp_path):
    pairs = visual_and_text_pairs(tmp_path)
    folder = tmp_path / "out.ms-swift"
    with pytest.warns(ExportWarning, match=r"^ms-swift's DPO has no per-pair weight: 2 pairs' clinical weights"):
        write_pairs(pairs, folder, image_roots=[tmp_path])
    rows = load_dataset("json", data_files=str(folder / "train.jsonl"))["train"].to_list()
    assert [row["id"] for row in rows] == ["p1", "p2", "p3", "p4"]
    for row in rows:
        messages = row["messages"]  # the standard format: user then assistant, the image tag in the text
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert messages[0]["content"].count("<image>") == len(row["images"]) == 1
        # DPO rows need rejected_response or rejected_images, and a rejected_response unlike the answer
        assert row["rejected_response"] is not None or row["rejected_images"] is not None
        assert row["rejected_response"] != messages[-1]["content"]
        for image in row["images"] + (row["rejected_images"] or []):  # relative to ROOT_IMAGE_DIR = the folder
            with Image.open(os.path.join(folder, image)) as opened:
                assert opened.convert("RGB").size == (4, 4) or image.endswith("deep.png.png")
    assert rows[0]["rejected_response"] == "no" and rows[0]["rejected_images"] is None  # text: images reused
    assert (rows[2]["rejected_response"], rows[2]["rejected_images"]) == ("no", ["images/noised/a.png"])
    assert (rows[3]["rejected_response"], rows[3]["rejected_images"]) == (None, ["images/noised/a.png"])
    assert rows[1]["images"] == ["images/deep.png.png"]  # 16-bit: the 8-bit picture the model sees
    shown = np.asarray(Image.open(folder / "images" / "deep.png.png").convert("RGB"))
    assert shown.tolist() == np.asarray(load_image(tmp_path / "deep.png")).tolist()


def test_llama_factory_export_reads_as_llama_factory_documents_it(tmp_path):
    pairs = visual_and_text_pairs(tmp_path)
    source = tmp_path / "p.jsonl"
    source.write_text("".join(p.model_dump_json() + "\n" for p in pairs))
    folder = tmp_path / "out.llama-factory"
    with pytest.warns(ExportWarning, match="^LLaMA-Factory's DPO has no per-pair weight: 1 pairs' clinical weights"):
        summary = convert_pairs(source, folder, image_roots=[tmp_path])
    assert (summary["read"], summary["accepted"], summary["rejected"]) == (4, 2, 2)
    reasons = {r["id"]: r["reason"] for r in map(json.loads, Path(summary["rejects"]).read_text().splitlines())}
    assert (
        reasons["p3"]
        == reasons["p4"]
        == (
            "a visual pair: LLaMA-Factory's preference format has one image set for chosen and rejected, "
            "so the rejected answer's own image cannot be written"
        )
    )
    info = json.loads((folder / "dataset_info.json").read_text())[LLAMA_FACTORY_DATASET]
    assert (info["formatting"], info["ranking"]) == ("sharegpt", True)
    columns = info["columns"]
    rows = load_dataset("json", data_files=str(folder / info["file_name"]))["train"].to_list()
    assert [row["id"] for row in rows] == ["p1", "p2"]
    for row in rows:
        turns = row[columns["messages"]]  # a preference prompt has an odd number of turns, human first
        assert len(turns) % 2 == 1 and [t["from"] for t in turns] == ["human"]
        assert row[columns["chosen"]]["from"] == row[columns["rejected"]]["from"] == "gpt"
        images = row[columns["images"]]
        assert turns[0]["value"].count("<image>") == len(images) == 1
        assert all(os.path.isfile(os.path.join(folder, image)) for image in images)  # media_dir = dataset_dir
    assert (rows[1]["chosen"]["value"], rows[1]["rejected"]["value"]) == ("left lung", "right lung")
    card = (folder / "README.md").read_text()
    assert "| text (one image) | 2 | 2 |" in card and "| visual (own rejected image) | 0 | 0 |" in card


def test_cards_say_what_the_data_are(tmp_path):
    pairs = visual_and_text_pairs(tmp_path)
    source = tmp_path / "p.jsonl"
    source.write_text("".join(p.model_dump_json() + "\n" for p in pairs))
    convert_pairs(source, tmp_path / "out.parquet")
    path = tmp_path / "out.parquet.README.md"
    card = DatasetCard.load(path)
    assert card.data.license == "unknown" and card.data.task_categories == ["visual-question-answering"]
    assert card.data.size_categories == ["n<1K"] and "medical" in card.data.tags
    text = path.read_text()
    assert "**A research artefact, not for clinical use.**" in text
    assert "Converted by `mmedpo convert` from `p.jsonl`: 4 records read." in text
    assert "| text (one image) | 2 | 2 |" in text and "| visual (own rejected image) | 2 | 2 |" in text
    assert "Set on 2 of 4 pairs, mean 0.850." in text  # clinical scores 0.8 and 0.9
    assert "Set on 2 of 4 pairs, mean 1.000." in text  # weights 0.5 and 1.5
    assert "3 distinct images. Not included" in text
    convert_pairs(source, tmp_path / "out.hf", image_roots=[tmp_path])
    with pytest.warns(ExportWarning):
        convert_pairs(source, tmp_path / "out.trl", image_roots=[tmp_path])
    for card_file in ("out.hf/README.md", "out.trl/README.md"):
        assert "not for clinical use" in (tmp_path / card_file).read_text()
    assert len(load_from_disk(str(tmp_path / "out.hf"))) == 4  # the card does not disturb the dataset


def test_the_command_line_prints_each_warning_on_one_line(tmp_path):
    from typer.testing import CliRunner

    from mmedpo.cli import app

    pairs = visual_and_text_pairs(tmp_path)
    source = tmp_path / "p.jsonl"
    source.write_text("".join(p.model_dump_json() + "\n" for p in pairs))
    result = CliRunner().invoke(app, ["convert", str(source), str(tmp_path / "out.trl"), "--image-root", str(tmp_path)])
    assert result.exit_code == 0
    lines = [line for line in result.output.splitlines() if line.startswith(("read ", "warning: "))]
    assert lines == [
        "read 4 = accepted 4 + rejected 0",
        "warning: plain TRL's DPOTrainer ignores `rejected_images`: 2 visual pairs would train on the clean image, "
        "as text pairs (mmedpo's `train_weighted_dpo` uses them)",
        "warning: plain TRL's DPOTrainer ignores `weight`: 2 pairs' clinical weights would count as 1 "
        "(mmedpo's `train_weighted_dpo` uses them)",
    ]
