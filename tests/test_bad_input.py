"""The bad-input corpus: every kind of broken record, image and file we know of, with its exact outcome.

Three levels, as the code treats them:
- a bad record or image is one reject naming its file and record, and the read goes on;
- a bad file (empty, binary, the wrong container, nothing usable) is one error line naming it;
- through the command line, that error is one line on stderr and exit status 2, never a traceback.
Everything is generated here, small, in a temporary folder.
"""

import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from datasets import Dataset, DatasetDict
from PIL import Image
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from helpers import make_pair
from mmedpo.cli import app
from mmedpo.data.convert import IDENTICAL, convert_pairs
from mmedpo.data.readers import read_dataset

FIXTURES = Path(__file__).parent / "data" / "mmedpo-released"
VQA_RAD = FIXTURES / "vqa-rad_dpo_weighted_sample.json"


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height`: all a guard reading the header needs, without the pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def image(path: Path, size=(8, 8), value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], value, dtype=np.uint8)).save(path, format="PNG")


def image_folder(root: Path) -> None:
    """One image file of every kind, good and bad."""
    image(root / "ok.png")
    image(root / "other.png", value=50)
    Image.new("L", (64, 64), 7).save(root / "ok.jpg")
    image(root / "png-named.jpg")  # wrong extension: PIL reads the content, so it is fine
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "truncated.jpg").write_bytes((root / "ok.jpg").read_bytes()[:300])
    (root / "empty.png").write_bytes(b"")
    (root / "text.png").write_text("not an image")
    (root / "bomb.png").write_bytes(png_header(20_000, 20_000))  # PIL's DecompressionBombError
    (root / "huge.png").write_bytes(png_header(8_000, 8_000))  # 64 MP: under PIL's limit, over ours
    image(root / "long.png", size=(65_535, 1))
    shutil.copy(get_testdata_file("rtplan.dcm"), root / "plan.dcm")
    shutil.copy(get_testdata_file("MR_truncated.dcm"), root / "truncated.dcm")
    dicom = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    dicom.Rows, dicom.Columns = 2, 100  # the header says 100 x 2; the guard refuses it before decoding
    dicom.save_as(root / "long.dcm")
    os.symlink("loop.png", root / "loop.png")
    image(root.parent / "outside.png")
    os.symlink(root.parent / "outside.png", root / "link.png")


# --- records and images, through a dataset reader -----------------------------------------------

GOOD = {"image": "ok.png", "text": "Is it normal?", "answer": "yes", "answer_type": "CLOSED"}
# (kind, the JSONL line, the reject's reason; ROOT: the image folder). Question ids are line numbers.
RECORDS = [
    ("missing image", {**GOOD, "image": "missing.png"}, "image 'missing.png' not found under ROOT"),
    ("corrupt image", {**GOOD, "image": "corrupt.png"}, "cannot read image ROOT/corrupt.png: Truncated File Read"),
    (
        "truncated image",
        {**GOOD, "image": "truncated.jpg"},
        "cannot read image ROOT/truncated.jpg: Truncated File Read",
    ),
    (
        "zero-byte image",
        {**GOOD, "image": "empty.png"},
        "cannot read image ROOT/empty.png: cannot identify image file 'ROOT/empty.png'",
    ),
    (
        "text file named .png",
        {**GOOD, "image": "text.png"},
        "cannot read image ROOT/text.png: cannot identify image file 'ROOT/text.png'",
    ),
    (
        "decompression bomb (20000 x 20000)",
        {**GOOD, "image": "bomb.png"},
        "image ROOT/bomb.png is too large: Image size (400000000 pixels) exceeds limit of 178956970 pixels, "
        "could be decompression bomb DOS attack.",
    ),
    (
        "too many pixels (8000 x 8000)",
        {**GOOD, "image": "huge.png"},
        "image ROOT/huge.png is 8000 x 8000 = 64000000 pixels (limit 50000000)",
    ),
    (
        "extreme aspect ratio (65535 x 1)",
        {**GOOD, "image": "long.png"},
        "image ROOT/long.png is 65535 x 1 pixels: more elongated than 20 : 1 (the limit)",
    ),
    (
        "extreme aspect ratio, DICOM",
        {**GOOD, "image": "long.dcm"},
        "image ROOT/long.dcm is 100 x 2 pixels: more elongated than 20 : 1 (the limit)",
    ),
    ("symlink loop", {**GOOD, "image": "loop.png"}, "image path 'loop.png' under ROOT is a symlink loop"),
    ("symlink out of the root", {**GOOD, "image": "link.png"}, "image path 'link.png' escapes its image root ROOT"),
    (
        "DICOM without pixel data",
        {**GOOD, "image": "plan.dcm"},
        "cannot read image ROOT/plan.dcm: DICOM file has no pixel data",
    ),
    (
        "truncated DICOM pixels",
        {**GOOD, "image": "truncated.dcm"},
        "cannot read image ROOT/truncated.dcm: cannot decode DICOM pixel data: The number of bytes of pixel data "
        "is less than expected (8130 vs 8192 bytes) - the dataset may be corrupted, have an invalid group 0028 "
        "element value, or the transfer syntax may be incorrect",
    ),
    ("escaping path", {**GOOD, "image": "../outside.png"}, "image path '../outside.png' escapes its image root"),
    ("absolute path", {**GOOD, "image": "/etc/passwd"}, "image path '/etc/passwd' must be relative to an image root"),
    ("empty answer", {**GOOD, "answer": "   "}, "answer: must not be empty"),
    ("null answer", {**GOOD, "answer": None}, "fields 'answer' and 'gpt4_answer' are both missing or null"),
    ("NaN answer", {**GOOD, "answer": float("nan")}, "field 'answer' is nan, not a value"),
    ("infinite answer", {**GOOD, "answer": float("inf")}, "field 'answer' is inf, not a value"),
    ("missing question", {k: v for k, v in GOOD.items() if k != "text"}, "field 'text' is missing or null"),
    ("wrong field type", {**GOOD, "text": ["Is", "it"]}, "field 'text' must be a string, got list"),
    ("boolean answer", {**GOOD, "answer": True}, "field 'answer' must be a string, got bool"),
    ("unknown answer_type", {**GOOD, "answer_type": "MAYBE"}, "unknown answer_type 'MAYBE' (expected CLOSED or OPEN)"),
    ("huge text", {**GOOD, "text": "x" * 20_001}, "field 'text' is 20001 characters long (limit 20000)"),
    ("record not an object", ["a", "list"], "record must be an object, got list"),
    ("duplicate id", "DUPLICATE", "duplicate id '1'"),
    ("invalid JSON", "BROKEN", "invalid JSON: Expecting value (column 28)"),
    ("invalid UTF-8", "BADUTF8", "field 'text' is not valid UTF-8"),
]
# Odd but fine: read as they are.
FINE = [
    ("PNG named .jpg", {**GOOD, "image": "png-named.jpg"}),
    ("line separator U+2028 inside a question", {**GOOD, "text": "Is it\u2028normal?"}),
]


def record_corpus(root: Path) -> Path:
    image_folder(root)
    lines = [json.dumps({**GOOD, "question_id": 1}).encode()]
    for number, (_, record, _) in enumerate(RECORDS, start=2):
        if record == "DUPLICATE":
            lines.append(json.dumps({**GOOD, "question_id": 1}).encode())
        elif record == "BROKEN":
            lines.append(b'{"question_id": 5, "text": ')
        elif record == "BADUTF8":
            line = json.dumps({**GOOD, "question_id": number, "text": "Is it XX?"}).encode()
            lines.append(line.replace(b"XX", b"\xff\xfe"))
        elif isinstance(record, dict):
            lines.append(json.dumps({**record, "question_id": number}).encode())
        else:
            lines.append(json.dumps(record).encode())
    for number, (_, record) in enumerate(FINE, start=len(RECORDS) + 2):
        lines.append(json.dumps({**record, "question_id": number}, ensure_ascii=False).encode())
    path = root / "test.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_every_bad_record_and_image_is_one_reject_with_its_exact_reason(tmp_path):
    root = tmp_path / "data"
    path = record_corpus(root)
    samples, rejects = read_dataset("llava-med-vqa", root)
    fine_ids = [str(n) for n in range(len(RECORDS) + 2, len(RECORDS) + 2 + len(FINE))]
    assert [s.id for s in samples] == ["1", *fine_ids]
    assert samples[-1].question == "Is it\u2028normal?"
    assert len(samples) + len(rejects) == 1 + len(RECORDS) + len(FINE)  # read = accepted + rejected
    got = [(r.source, r.reason.replace(str(root), "ROOT")) for r in rejects]
    assert got == [(f"{path}:{number}", reason) for number, (_, _, reason) in enumerate(RECORDS, start=2)]


def test_check_images_none_still_refuses_escaping_paths(tmp_path):
    root = tmp_path / "data"
    record_corpus(root)
    samples, rejects = read_dataset("llava-med-vqa", root, check_images="none")
    assert [r.reason for r in rejects if "escapes" in r.reason or "relative" in r.reason] == [
        "image path '../outside.png' escapes its image root",  # refused without looking; the symlinks need a look
        "image path '/etc/passwd' must be relative to an image root",
    ]
    assert {s.image for s in samples} >= {"missing.png", "corrupt.png", "link.png", "loop.png", "bomb.png"}
    with pytest.raises(ValueError, match="check_images must be one of decode, exists, none"):
        read_dataset("llava-med-vqa", root, check_images="yes")


# --- files, through the dataset readers ------------------------------------------------------------


def test_bad_dataset_files_are_one_error_naming_the_file(tmp_path):
    for name, content in (("train.json", b""), ("validate.json", b"\xef\xbb\xbf[]"), ("test.json", b"{}")):
        (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError) as error:
        read_dataset("slake", tmp_path, split="train")
    assert str(error.value) == f"{tmp_path / 'train.json'}: empty file"
    assert read_dataset("slake", tmp_path, split="val") == ([], [])  # a BOM before an empty list: nothing to read
    with pytest.raises(ValueError) as error:
        read_dataset("slake", tmp_path, split="test")
    assert str(error.value) == f"{tmp_path / 'test.json'}: expected a JSON list of questions"
    (tmp_path / "train.json").write_text('{"data": [{"id": "x"}]}')
    with pytest.raises(ValueError) as error:
        read_dataset("llava", tmp_path)
    assert str(error.value) == (
        f"{tmp_path / 'train.json'}: a JSON object (keys: data), not a list of records; "
        "records go in a JSON list, or one per line in a .jsonl file"
    )


# --- files, records and pairs, through convert ----------------------------------------------------


def mmedpo_records() -> list:
    return json.loads(VQA_RAD.read_text(encoding="utf-8"))


def our_lines(*pairs) -> str:
    return "".join(pair.model_dump_json() + "\n" for pair in pairs)


def write(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


# (kind, file name, content (bytes, text, or a function of the folder), the error; {p}: the file, {d}: the folder)
BAD_FILES = [
    ("zero-byte file", "p.json", b"", "{p}: empty file"),
    ("only whitespace", "p.jsonl", "\n  \n", "{p}: empty file"),
    ("an empty list", "p.json", "[]", "{p}: no records in it"),
    ("UTF-16 text", "p.json", "[]".encode("utf-16"), "{p}: UTF-16 text; save it as UTF-8"),
    ("binary data", "p.json", png_header(4, 4), "{p}: binary data, not a UTF-8 text file"),
    (
        "a JSON object instead of a list",
        "p.json",
        json.dumps({"version": 1, "data": mmedpo_records()}),
        "{p}: a JSON object (keys: version, data), not a list of records; records go in a JSON list, "
        "or one per line in a .jsonl file",
    ),
    (
        "a truncated JSON list",
        "p.json",
        json.dumps(mmedpo_records()[:2], indent=4)[:300],
        "{p}: invalid JSON at line 11 column 1: Expecting property name enclosed in double quotes",
    ),
    (
        "records of no known kind",
        "p.json",
        json.dumps([{"question_id": 1, "text": "Q?", "answer": "yes"}]),
        "{p}: records of no known kind (MMedPO records have conversations and rejected_conversations, mmedpo pairs "
        "have question, chosen and rejected; the first record's keys: answer, question_id, text)",
    ),
    (
        "nothing usable",
        "p.jsonl",
        our_lines(make_pair(1, chosen="no"), make_pair(2, chosen="No ")),
        "{p}: none of its 2 records could be used (reasons in {d}/out.rejects.jsonl; the first: " + IDENTICAL + ")",
    ),
    (
        "unknown source suffix",
        "p.csv",
        "id,question\n1,Q?\n",
        "{p}: unknown pair format (expected .jsonl, .json, .parquet or a dataset folder)",
    ),
    (
        "zero-byte Parquet file",
        "p.parquet",
        b"",
        "{p}: not a readable Parquet file (Could not open Parquet input source '{p}': Parquet file size is 0 bytes)",
    ),
    (
        "a folder that is not a dataset",
        "p",
        lambda folder: write(folder / "p" / "notes.txt", "hello"),
        "{p}: not a dataset folder (save_to_disk writes a state.json; this has none)",
    ),
    (
        "a DatasetDict folder",
        "p",
        lambda folder: DatasetDict({"train": Dataset.from_list([{"a": 1}])}).save_to_disk(str(folder / "p")),
        "{p}: a DatasetDict folder; convert one split's folder (e.g. {p}/train)",
    ),
    (
        "an export for another tool",
        "p.ms-swift",
        lambda folder: write(folder / "p.ms-swift" / "train.jsonl", "{}\n"),
        "{p}: an export for another tool, not read back; convert the pairs it was made from",
    ),
]


def make_source(folder: Path, name: str, content) -> Path:
    if callable(content):
        content(folder)
    else:
        write(folder / name, content)
    return folder / name


@pytest.mark.parametrize("kind, name, content, message", BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_a_bad_file_is_one_error_naming_it(kind, name, content, message, tmp_path):
    source = make_source(tmp_path, name, content)
    with pytest.raises(ValueError) as error:
        convert_pairs(source, tmp_path / "out.jsonl")
    expected = message.format(p=source, d=tmp_path)
    assert str(error.value) == expected
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("kind, name, content, message", BAD_FILES[:3], ids=[case[0] for case in BAD_FILES[:3]])
def test_through_the_command_line_a_bad_file_is_one_line_and_status_2(kind, name, content, message, tmp_path):
    source = make_source(tmp_path, name, content)
    result = CliRunner().invoke(app, ["convert", str(source), str(tmp_path / "out.jsonl")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output == f"error: {message.format(p=source)}\n"


def test_missing_source_and_bad_targets_through_the_command_line(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(app, ["convert", str(tmp_path / "gone.json"), str(tmp_path / "out.jsonl")])
    assert (missing.exit_code, missing.output) == (2, f"error: {tmp_path / 'gone.json'}: no such file or folder\n")
    csv = runner.invoke(app, ["convert", str(VQA_RAD), str(tmp_path / "x.csv")])
    assert csv.exit_code == 2 and csv.output.startswith(f"error: {tmp_path / 'x.csv'}: unknown suffix '.csv'")
    assert not (tmp_path / "x.csv").exists()
    trl = runner.invoke(app, ["convert", str(VQA_RAD), str(tmp_path / "x.trl")])
    assert trl.exit_code == 2 and trl.output == (
        f"error: {tmp_path / 'x.trl'}: a trl export carries the images its tool opens: give their image root(s) "
        "(--image-root)\n"
    )


def bad_record(records: list, index: int, raw: bytes) -> bytes:
    """The records as a released file, with record `index` replaced by raw bytes."""
    parts = [json.dumps(r, indent=4).encode() for r in records]
    parts[index] = raw
    return b"[\n" + b",\n".join(parts) + b"\n]"


# (kind, file name, content, (read, accepted, rejected), the rejects {source: reason}; {p}: the file)
BAD_RECORDS = [
    ("a UTF-8 byte-order mark", "p.json", b"\xef\xbb\xbf" + VQA_RAD.read_bytes(), (24, 24, 0), {}),
    (
        "MMedPO records as JSON Lines",
        "p.jsonl",
        "".join(json.dumps(r) + "\n" for r in mmedpo_records()),
        (24, 24, 0),
        {},
    ),
    ("our records as a JSON list", "p.json", json.dumps([make_pair(1).model_dump()]), (1, 1, 0), {}),
    (
        "bytes that are not UTF-8 in one record",
        "p.json",
        bad_record(mmedpo_records(), 1, json.dumps(mmedpo_records()[1]).encode().replace(b"Is", b"\xffIs", 1)),
        (24, 23, 1),
        {"{p}#1": "conversations[0].value is not valid UTF-8"},
    ),
    (
        "NaN and out-of-range scores",
        "p.json",
        bad_record(mmedpo_records(), 2, json.dumps({**mmedpo_records()[2], "weighted_score": float("nan")}).encode()),
        (24, 23, 1),
        {"{p}#2": "weighted_score must be a number, got nan"},
    ),
    (
        "duplicate ids",
        "p.json",
        json.dumps(mmedpo_records()[:2] + mmedpo_records()[:1]),
        (3, 2, 1),
        {"{p}#2": f"duplicate id {str(mmedpo_records()[0]['id'])!r}"},
    ),
    (
        "a broken line among MMedPO lines",
        "p.jsonl",
        json.dumps(mmedpo_records()[0]) + "\n{\n",
        (2, 1, 1),
        {"{p}:2": "invalid JSON: Expecting property name enclosed in double quotes (column 2)"},
    ),
    (
        "the same answer twice, in a text and in a visual pair",
        "p.jsonl",
        our_lines(
            make_pair(1, chosen="Left lung", rejected="left  lung"),
            make_pair(2, kind="visual", rejected_image="other.png", region="lesion", rejected="yes"),
            make_pair(3),
        ),
        (3, 2, 1),
        {"{p} (pair p1)": IDENTICAL},  # a visual pair may say the same on another image: that is its point
    ),
]


@pytest.mark.parametrize("kind, name, content, counts, reasons", BAD_RECORDS, ids=[case[0] for case in BAD_RECORDS])
def test_a_bad_record_is_one_reject_and_the_rest_go_on(kind, name, content, counts, reasons, tmp_path):
    source = make_source(tmp_path, name, content)
    summary = convert_pairs(source, tmp_path / "out.jsonl")
    assert (summary["read"], summary["accepted"], summary["rejected"]) == counts
    rejects = [json.loads(line) for line in Path(summary["rejects"]).read_text().splitlines()] if reasons else []
    assert {r["source"]: r["reason"] for r in rejects} == {k.format(p=source): v for k, v in reasons.items()}


IMAGE_REASONS = {
    "corrupt.png": "cannot read image ROOT/corrupt.png: Truncated File Read",
    "bomb.png": "image ROOT/bomb.png is too large: Image size (400000000 pixels) exceeds limit of 178956970 "
    "pixels, could be decompression bomb DOS attack.",
    "long.png": "image ROOT/long.png is 65535 x 1 pixels: more elongated than 20 : 1 (the limit)",
    "loop.png": "image path 'loop.png' under ROOT is a symlink loop",
    "text.png": "cannot read image ROOT/text.png: cannot identify image file 'ROOT/text.png'",
}


@pytest.mark.parametrize("target", ["out.jsonl", "out.trl"])
def test_convert_with_image_roots_decodes_every_image(target, tmp_path):
    root = tmp_path / "images"
    image_folder(root)
    pairs = [make_pair(index, image=name) for index, name in enumerate(IMAGE_REASONS)]
    pairs += [make_pair(10, kind="visual", rejected_image="corrupt.png", region="lesion"), make_pair(11)]
    source = write(tmp_path / "p.jsonl", our_lines(*pairs).replace('"image":"a.png"', '"image":"ok.png"'))
    summary = convert_pairs(source, tmp_path / target, image_roots=[root])
    assert (summary["read"], summary["accepted"], summary["rejected"]) == (7, 1, 6)
    rejects = [json.loads(line) for line in Path(summary["rejects"]).read_text().splitlines()]
    expected = [reason.replace("ROOT", str(root.resolve())) for reason in IMAGE_REASONS.values()]
    assert [r["reason"] for r in rejects] == expected + [expected[0]]
    assert [r["source"] for r in rejects] == [f"{source} (pair p{i})" for i in (0, 1, 2, 3, 4, 10)]


def test_pairs_with_the_same_answer_twice_are_counted_on_the_command_line(tmp_path):
    slake = FIXTURES / "slake_dpo_weighted_sample.json"  # one of its 24 pairs answers "Right" twice
    result = CliRunner().invoke(app, ["convert", str(slake), str(tmp_path / "out.jsonl")])
    assert (result.exit_code, result.output) == (
        0,
        f"read 24 = accepted 23 + rejected 1 (reasons in {tmp_path / 'out.rejects.jsonl'}; "
        "1 with the same answer twice)\n",
    )
