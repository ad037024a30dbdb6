"""Records, the JSONL store, and the MMedPO LLaVA JSON on the released fixture files."""

import json
from pathlib import Path

import pytest

from helpers import make_pair
from mmedpo.data.convert import convert_pairs, read_pairs
from mmedpo.data.llava_json import read_mmedpo_json, write_mmedpo_json
from mmedpo.records import JsonlStore, PreferencePair, Sample, read_jsonl, rejects_path

FIXTURES = sorted((Path(__file__).parent / "data" / "mmedpo-released").glob("*.json"))


def test_there_are_three_fixture_files():
    assert [p.name for p in FIXTURES] == [
        "iuxray_dpo_weighted_sample.json",
        "slake_dpo_weighted_sample.json",
        "vqa-rad_dpo_weighted_sample.json",
    ]


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_released_files_load_as_they_are_and_round_trip_byte_for_byte(path, tmp_path):
    result = read_mmedpo_json(path)
    assert result.rejects == [] and len(result.pairs) == 24
    out = tmp_path / "back.json"
    write_mmedpo_json(result.pairs, out)
    assert out.read_bytes() == path.read_bytes()


def test_written_json_has_the_released_formatting(tmp_path):
    pair = make_pair(1, question="Où est la lésion?", chosen="left", rejected="right", clinical_score=0.5)
    write_mmedpo_json([pair], tmp_path / "a.json")
    text = (tmp_path / "a.json").read_text(encoding="utf-8")
    assert text.startswith('[\n    {\n        "id": "p1",') and text.endswith("}\n]")  # 4 spaces, no final newline
    assert "O\\u00f9 est la l\\u00e9sion?" in text  # ASCII escapes


def test_integer_scores_key_order_and_unknown_keys_survive(tmp_path):
    record = json.loads(FIXTURES[2].read_text())[0]
    odd = {"weighted_score": 1, "note": "kept", **{k: v for k, v in record.items() if k != "weighted_score"}}
    path = tmp_path / "odd.json"
    path.write_text(json.dumps([odd], indent=4), encoding="utf-8")
    pair = read_mmedpo_json(path).pairs[0]
    assert pair.clinical_score == 1.0
    write_mmedpo_json([pair], tmp_path / "back.json")
    assert (tmp_path / "back.json").read_bytes() == path.read_bytes()


def test_released_texts_are_cleaned_for_training():
    pairs = {p.id: p for p in read_mmedpo_json(FIXTURES[1]).pairs}  # slake
    pair = pairs["761"]
    assert pair.question == "What is the organ on the left side of this image?"
    assert pair.chosen == "Right Lung"
    assert pair.clinical_score == 0.0 and pair.weight is None  # weighted_score is the clinical score
    assert pair.kind == "text" and pair.rejected_image is None
    assert read_mmedpo_json(FIXTURES[0]).pairs[0].task == "report"
    assert {p.task for p in read_mmedpo_json(FIXTURES[2]).pairs} == {"vqa"}


def test_edited_text_is_written_fresh_not_from_the_raw_copy(tmp_path):
    pair = read_mmedpo_json(FIXTURES[1]).pairs[0]
    edited = pair.model_copy(update={"rejected": "Liver"})
    write_mmedpo_json([edited], tmp_path / "e.json")
    record = json.loads((tmp_path / "e.json").read_text())[0]
    assert record["rejected_conversations"][1]["value"] == " Liver"
    assert record["id"] == 761  # integer ids stay integers


def test_visual_pairs_keep_their_rejected_image(tmp_path):
    pair = make_pair(1, kind="visual", rejected_image="noised/a.png", region="lesion", clinical_score=0.5, weight=1.7)
    write_mmedpo_json([pair], tmp_path / "v.json")
    record = json.loads((tmp_path / "v.json").read_text())[0]
    # weighted_score is the clinical score in [0, 1], never the training weight.
    assert record["rejected_image"] == "noised/a.png" and record["weighted_score"] == 0.5
    back = read_mmedpo_json(tmp_path / "v.json").pairs[0]
    assert (back.kind, back.rejected_image, back.region, back.clinical_score) == (
        "visual",
        "noised/a.png",
        "lesion",
        0.5,
    )


def test_bad_records_are_rejected_with_a_reason_naming_the_record(tmp_path):
    good = json.loads(FIXTURES[2].read_text())[0]
    records = [
        good,
        {**good, "id": 99, "weighted_score": 1.5},
        {**good, "id": 98, "conversations": []},
        {**good, "id": 97, "weighted_score": "high"},
        good,  # duplicate id
        "not an object",
    ]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(records))
    result = read_mmedpo_json(path)
    assert len(result.pairs) == 1 and len(result.rejects) == 5 and result.read == 6
    reasons = [r.reason for r in result.rejects]
    assert "[0, 1]" in reasons[0] and "conversations" in reasons[1] and "number" in reasons[2]
    assert "duplicate id" in reasons[3] and "object" in reasons[4]
    assert result.rejects[0].source == f"{path}#1" and result.rejects[0].id == "99"


def test_convert_writes_rejects_and_counts_add_up(tmp_path):
    source = tmp_path / "pairs.jsonl"
    lines = [
        make_pair(1).model_dump_json(),
        '{"id": "x"}',
        "not json",
        make_pair(2).model_dump_json().replace('"weight":null', '"weight":-1'),
    ]
    source.write_text("\n".join(lines) + "\n")
    summary = convert_pairs(source, tmp_path / "out.json")
    assert (summary["read"], summary["accepted"], summary["rejected"]) == (4, 1, 3)
    rejects = [json.loads(line) for line in Path(summary["rejects"]).read_text().splitlines()]
    assert [r["source"] for r in rejects] == [f"{source}:2", f"{source}:3", f"{source}:4"]
    assert "weight" in rejects[2]["reason"]
    assert len(read_pairs(tmp_path / "out.json")[0]) == 1


def test_store_appends_resumes_and_repairs_a_torn_last_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    store = JsonlStore(path, PreferencePair)
    store.extend([make_pair(1), make_pair(2)])
    with path.open("a") as handle:  # a kill in the middle of writing the third record
        handle.write(make_pair(3).model_dump_json()[:40])
    store = JsonlStore(path, PreferencePair)
    assert store.done_ids() == {"p1", "p2"}
    store.append(make_pair(3))
    assert [p.id for p in read_jsonl(path, PreferencePair)] == ["p1", "p2", "p3"]


def test_a_batch_interrupted_before_its_write_leaves_none_of_its_records(tmp_path):
    """A sample's pairs go in one `extend`: stopped halfway, none of them is on disk, so resume redoes the sample."""
    path = tmp_path / "pairs.jsonl"
    store = JsonlStore(path, PreferencePair)
    store.extend([make_pair(1)])

    def interrupted():
        yield make_pair(2)
        yield make_pair(3)
        raise KeyboardInterrupt  # stopped while the batch is being made

    with pytest.raises(KeyboardInterrupt):
        store.extend(interrupted())
    assert JsonlStore(path, PreferencePair).done_ids() == {"p1"}
    store.extend([make_pair(2), make_pair(3)])
    assert [p.id for p in read_jsonl(path, PreferencePair)] == ["p1", "p2", "p3"]


def test_samples_validate_and_ids_become_text():
    sample = Sample(id=7, task="vqa", image="x.png", question="Q?", answer="yes", answer_type="closed")
    assert sample.id == "7"
    with pytest.raises(ValueError, match="answer"):
        Sample(id="a", task="vqa", image="x.png", question="Q?", answer="  ")
    with pytest.raises(ValueError, match="answer_type"):
        Sample(id="a", task="vqa", image="x.png", question="Q?", answer="x", answer_type="maybe")


def test_rejects_path_sits_beside_the_output():
    assert rejects_path(Path("runs/x/pairs.text.jsonl")) == Path("runs/x/pairs.text.rejects.jsonl")
