"""Every dataset reader on a small folder that mimics its published layout (bad input: test_bad_input.py)."""

import csv
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmedpo.data.readers import read_dataset
from mmedpo.data.readers.mimic_cxr import report_sections
from mmedpo.records import REPORT_INSTRUCTION
from mmedpo.registry import READERS


def image(path: Path, value: int = 100, size=(8, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], value, dtype=np.uint8)).save(path)


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def test_registry_names_and_unknown_name():
    assert sorted(READERS.names()) == ["iu-xray", "llava", "llava-med-vqa", "mimic-cxr", "pathvqa", "slake", "vqa-rad"]
    with pytest.raises(ValueError, match="unknown dataset 'vqarad'; did you mean 'vqa-rad'\\? valid: vqa-rad, "):
        read_dataset("vqarad", ".")


def test_vqa_rad_official_json(tmp_path):
    image(tmp_path / "VQA_RAD Image Folder" / "synpic1.jpg")
    image(tmp_path / "VQA_RAD Image Folder" / "synpic2.jpg")
    base = {"image_organ": "CHEST", "question_type": "PRES", "image_name": "synpic1.jpg"}
    write_json(
        tmp_path / "VQA_RAD Dataset Public.json",
        [
            {
                **base,
                "qid": 1,
                "question": "Is there a mass?",
                "answer": "Yes",
                "answer_type": "CLOSED",
                "phrase_type": "freeform",
            },
            {
                **base,
                "qid": 2,
                "question": "Where?",
                "answer": "left lung",
                "answer_type": "OPEN ",
                "phrase_type": "test_para",
            },
            {
                **base,
                "qid": 3,
                "image_name": "synpic2.jpg",
                "question": "How many?",
                "answer": 2,
                "answer_type": "OPEN",
                "phrase_type": "test_freeform",
            },
        ],
    )
    samples, rejects = read_dataset("vqa-rad", tmp_path)
    assert rejects == []
    assert [(s.id, s.split, s.answer_type, s.answer) for s in samples] == [
        ("1", "train", "closed", "Yes"),
        ("2", "test", "open", "left lung"),
        ("3", "test", "open", "2"),
    ]
    assert samples[0].image == "VQA_RAD Image Folder/synpic1.jpg"
    assert samples[0].meta == {
        "dataset": "vqa-rad",
        "image_organ": "CHEST",
        "question_type": "PRES",
        "phrase_type": "freeform",
    }
    assert [s.id for s in read_dataset("vqa-rad", tmp_path, split="test")[0]] == ["2", "3"]


def test_llava_med_vqa_jsonl(tmp_path):
    image(tmp_path / "images" / "a.png")
    lines = [
        {"question_id": 7, "image": "a.png", "text": "<image>\nIs it normal?", "answer": "no", "answer_type": "CLOSED"},
        {"question_id": 8, "image": "a.png", "text": "What organ?", "gpt4_answer": "liver"},
    ]
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    samples, rejects = read_dataset("llava-med-vqa", tmp_path, image_dir="images")
    assert rejects == []
    assert [(s.id, s.question, s.answer, s.answer_type, s.split, s.image) for s in samples] == [
        ("7", "Is it normal?", "no", "closed", "test", "images/a.png"),
        ("8", "What organ?", "liver", "open", "test", "images/a.png"),
    ]


def test_slake_english_by_default_with_masks_and_boxes(tmp_path):
    image(tmp_path / "imgs" / "xmlab1" / "source.jpg", size=(20, 10))
    image(tmp_path / "imgs" / "xmlab1" / "mask.png", value=255, size=(20, 10))
    write_json(tmp_path / "imgs" / "xmlab1" / "detection.json", [{"Tumor": [2, 3, 4, 5]}])
    image(tmp_path / "imgs" / "xmlab2" / "source.jpg")
    row = {"img_name": "xmlab1/source.jpg", "modality": "CT", "location": "Abdomen", "content_type": "Organ"}
    write_json(
        tmp_path / "train.json",
        [
            {
                **row,
                "qid": 11,
                "question": "Is there a tumor?",
                "answer": "Yes",
                "q_lang": "en",
                "answer_type": "CLOSED",
            },
            {**row, "qid": 12, "question": "有肿瘤吗?", "answer": "是", "q_lang": "zh", "answer_type": "CLOSED"},
        ],
    )
    write_json(
        tmp_path / "validate.json",
        [
            {
                "img_name": "xmlab2/source.jpg",
                "qid": 21,
                "question": "Modality?",
                "answer": "MRI",
                "q_lang": "en",
                "answer_type": "OPEN",
            }
        ],
    )
    write_json(tmp_path / "test.json", [])
    samples, rejects = read_dataset("slake", tmp_path)
    assert [(s.id, s.split) for s in samples] == [("11", "train"), ("21", "val")]
    assert len(rejects) == 1 and rejects[0].reason == "skipped: q_lang 'zh' (language 'en' selected)"
    assert rejects[0].source.endswith("train.json#1") and rejects[0].id == "12"
    meta = samples[0].meta
    assert samples[0].image == "imgs/xmlab1/source.jpg" and meta["lesion_mask"] == "imgs/xmlab1/mask.png"
    assert meta["lesion_boxes"] == [{"label": "Tumor", "box": [2.0, 3.0, 6.0, 8.0]}] and meta["findings"] == ["Tumor"]
    assert "lesion_mask" not in samples[1].meta
    chinese, rejects = read_dataset("slake", tmp_path, split="train", language="zh")
    assert [s.answer for s in chinese] == ["是"] and len(rejects) == 1
    assert len(read_dataset("slake", tmp_path, split="validate", language="all")[0]) == 1


def test_slake_mask_feeds_the_annotation_localizer(tmp_path):
    from mmedpo.imaging.localizers import AnnotationLocalizer

    image(tmp_path / "imgs" / "x" / "source.jpg", size=(40, 40))
    mask = np.zeros((40, 40), dtype=np.uint8)
    mask[10:20, 10:20] = 255
    Image.fromarray(mask).save(tmp_path / "imgs" / "x" / "mask.png")
    write_json(
        tmp_path / "train.json",
        [{"img_name": "x/source.jpg", "qid": 1, "question": "Q?", "answer": "Yes", "q_lang": "en"}],
    )
    samples, _ = read_dataset("slake", tmp_path, split="train")
    region = AnnotationLocalizer(dilation=0).localize(samples[0], [tmp_path])
    assert region.area_fraction == pytest.approx(100 / 1600)


def test_pathvqa_pickles_are_read_as_plain_data_only(tmp_path):
    image(tmp_path / "images" / "train" / "train_0001.jpg")
    image(tmp_path / "images" / "test" / "test_0001.png")
    for split, name in (("train", "train_0001"), ("val", "train_0001"), ("test", "test_0001")):
        (tmp_path / "qas" / split).mkdir(parents=True)
        records = [
            {"image": name, "question": "Is this a tumor?", "answer": "yes"},
            {"image": name, "question": "What stain?", "answer": "h&e"},
        ]
        (tmp_path / "qas" / split / f"{split}_qa.pkl").write_bytes(pickle.dumps(records))
    samples, rejects = read_dataset("pathvqa", tmp_path, split="test")
    assert rejects == []
    assert [(s.id, s.image, s.answer_type) for s in samples] == [
        ("test-0", "images/test/test_0001.png", "closed"),
        ("test-1", "images/test/test_0001.png", "open"),
    ]
    samples, rejects = read_dataset("pathvqa", tmp_path)  # val names a train image that is not in images/val
    assert len(samples) == 4 and len(rejects) == 2 and "not found" in rejects[0].reason
    (tmp_path / "qas" / "test" / "test_qa.pkl").write_bytes(pickle.dumps([Path("x")]))
    with pytest.raises(ValueError, match="refusing to build pathlib"):
        read_dataset("pathvqa", tmp_path, split="test")


def iu_folder(root: Path) -> None:
    for study in ("CXR1", "CXR2"):
        image(root / "images" / study / "0.png", 10)
        image(root / "images" / study / "1.png", 20)
    write_json(
        root / "annotation.json",
        {
            "train": [
                {
                    "id": "CXR1",
                    "report": "The heart is normal.",
                    "image_path": ["CXR1/0.png", "CXR1/1.png"],
                    "split": "train",
                }
            ],
            "val": [],
            "test": [
                {"id": "CXR2", "report": "Small effusion.", "image_path": ["CXR2/0.png", "CXR2/1.png"], "split": "test"}
            ],
        },
    )
    (root / "projections.csv").write_text(
        "image,projection\nCXR1/0.png,Lateral\nCXR1/1.png,Frontal\nCXR2/0.png,Frontal\n"
    )


def test_iu_xray_image_policies(tmp_path):
    iu_folder(tmp_path)
    first, rejects = read_dataset("iu-xray", tmp_path)
    assert rejects == []
    assert [(s.id, s.image, s.split, s.task, s.question) for s in first] == [
        ("CXR1", "images/CXR1/0.png", "train", "report", REPORT_INSTRUCTION),
        ("CXR2", "images/CXR2/0.png", "test", "report", REPORT_INSTRUCTION),
    ]
    assert first[1].answer == "Small effusion."
    every, _ = read_dataset("iu-xray", tmp_path, split="train", image_policy="all")
    assert [(s.id, s.image) for s in every] == [("CXR1/0", "images/CXR1/0.png"), ("CXR1/1", "images/CXR1/1.png")]
    frontal, _ = read_dataset("iu-xray", tmp_path, image_policy="frontal", projections="projections.csv")
    assert [s.image for s in frontal] == ["images/CXR1/1.png", "images/CXR2/0.png"]
    with pytest.raises(ValueError, match="needs projections"):
        read_dataset("iu-xray", tmp_path, image_policy="frontal")


REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)
 INDICATION:  Cough.
 FINDINGS:
 The lungs are clear.  No pleural
 effusion.
 IMPRESSION:  No acute process.
"""


def test_report_sections():
    assert report_sections(REPORT) == {
        "findings": "The lungs are clear. No pleural effusion.",
        "impression": "No acute process.",
    }
    assert report_sections("IMPRESSION: Normal.") == {"impression": "Normal."}


def mimic_folder(root: Path) -> None:
    rows = [
        ("d1", "501", "10000032", "train", "PA"),
        ("d2", "501", "10000032", "train", "LATERAL"),
        ("d3", "501", "10000032", "train", "AP"),
        ("d4", "502", "10000032", "test", "AP"),
        ("d5", "503", "11000001", "train", "PA"),
    ]
    with (root / "mimic-cxr-2.0.0-split.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dicom_id", "study_id", "subject_id", "split"])
        writer.writerows(r[:4] for r in rows)
    with (root / "mimic-cxr-2.0.0-metadata.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dicom_id", "subject_id", "study_id", "ViewPosition"])
        writer.writerows((r[0], r[2], r[1], r[4]) for r in rows)
    for dicom, study, subject, *_ in rows:
        image(root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg")
    reports = root / "files" / "p10" / "p10000032"
    (reports / "s501.txt").write_text(REPORT)
    (reports / "s502.txt").write_text(" IMPRESSION: Stable.\n")
    (root / "files" / "p11" / "p11000001" / "s503.txt").write_text(" FINDINGS: Cardiomegaly.\n")


def test_mimic_cxr_views_policies_and_sections(tmp_path):
    mimic_folder(tmp_path)
    samples, rejects = read_dataset("mimic-cxr", tmp_path)
    assert [(s.id, s.split, s.answer) for s in samples] == [
        ("501", "train", "The lungs are clear. No pleural effusion."),
        ("503", "train", "Cardiomegaly."),
    ]
    assert (
        samples[0].image == "files/p10/p10000032/s501/d1.jpg" and samples[0].meta["impression"] == "No acute process."
    )
    assert [r.reason for r in rejects] == [
        "skipped: view 'LATERAL' (views PA, AP selected)",
        "skipped: study 501 already gave its first image",
        f"report {tmp_path}/files/p10/p10000032/s502.txt has no findings section",
    ]
    assert len(samples) + len(rejects) == 5
    test, _ = read_dataset("mimic-cxr", tmp_path, split="test", section="impression")
    assert [(s.id, s.answer) for s in test] == [("502", "Stable.")]
    every, rejects = read_dataset(
        "mimic-cxr", tmp_path, split="train", image_policy="all", views=["PA", "AP", "LATERAL"], section="both"
    )
    assert [s.id for s in every] == ["501/d1", "501/d2", "501/d3", "503/d5"] and rejects == []
    assert every[0].answer == "The lungs are clear. No pleural effusion. No acute process."


def test_generic_llava_multi_turn(tmp_path):
    image(tmp_path / "a.png")
    write_json(
        tmp_path / "train.json",
        [
            {
                "id": "x",
                "image": "a.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nIs there a nodule?"},
                    {"from": "gpt", "value": "Yes"},
                    {"from": "human", "value": "Where?"},
                    {"from": "gpt", "value": "Left upper lobe"},
                ],
            }
        ],
    )
    samples, rejects = read_dataset("llava", tmp_path)
    assert rejects == []
    assert [(s.id, s.question, s.answer, s.answer_type) for s in samples] == [
        ("x", "Is there a nodule?", "Yes", "closed"),
        ("x-2", "Where?", "Left upper lobe", "open"),
    ]
