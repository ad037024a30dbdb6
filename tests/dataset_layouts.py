"""Small datasets in the layouts their owners publish, drawn by the tests (imported as `dataset_layouts`).

Each writer puts a handful of images and questions (or reports) under a folder,
exactly where the dataset's reader and the shipped config expect them:

- `write_vqa_rad`: the official JSON and image folder; no masks, no findings, no reports;
- `write_slake`: train/validate/test JSON, imgs/xmlabN/source.jpg with mask.png and detection.json;
- `write_iu_xray`: R2Gen's annotation.json and images/STUDY/0.png, reports in chest-X-ray words;
- `write_llava_generic`: LLaVA conversation JSON in separate train.json and test.json, coloured shapes.

Every image shows a bright blob on one side (or a coloured shape), and the answers
follow the image, so a model can learn them and a localizer has something to find.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 48


def blob_image(path: Path, side: str, mask_path: Path | None = None, fmt: str | None = None) -> None:
    """A grey image with a bright blob on the image's `side` ("left"/"right"); its mask beside it if asked."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("L", (SIZE, SIZE), 40)
    draw = ImageDraw.Draw(image)
    draw.ellipse((8, 8, SIZE - 8, SIZE - 8), fill=90)  # a body
    box = (10, 18, 22, 30) if side == "left" else (26, 18, 38, 30)
    draw.ellipse(box, fill=230)
    image.convert("RGB").save(path, format=fmt)
    if mask_path is not None:
        mask = Image.new("L", (SIZE, SIZE), 0)
        ImageDraw.Draw(mask).ellipse(box, fill=255)
        mask.save(mask_path)


def side_of(index: int) -> str:
    return "left" if index % 2 == 0 else "right"


def write_vqa_rad(root: Path, images: int = 12, test_from: int = 8) -> None:
    """VQA-RAD: questions of images >= `test_from` have a test phrase_type."""
    records = []
    for i in range(images):
        name = f"synpic{100 + i}.jpg"
        blob_image(root / "VQA_RAD Image Folder" / name, side_of(i), fmt="JPEG")
        phrase = "test_freeform" if i >= test_from else "freeform"
        modality = "CT" if i % 3 else "MRI"
        asked = [
            ("Is the mass on the left?", "yes" if side_of(i) == "left" else "no", "CLOSED", "PRES"),
            ("Which side is the mass on?", side_of(i), "OPEN", "POS"),
            ("Is this a CT or an MRI?", modality, "CLOSED", "MODALITY"),
            ("What organ is shown?", "liver" if i % 4 < 2 else "spleen", "OPEN", "ORGAN"),
        ]
        for k, (question, answer, answer_type, question_type) in enumerate(asked):
            records.append(
                {
                    "qid": 1000 + 10 * i + k,
                    "image_name": name,
                    "question": question,
                    "answer": answer,
                    "answer_type": answer_type,
                    "question_type": question_type,
                    "phrase_type": phrase,
                    "image_organ": "ABD",
                }
            )
    (root / "VQA_RAD Dataset Public.json").write_text(json.dumps(records))


def write_slake(root: Path) -> None:
    """SLAKE: images 0-7 train, 8-9 validate, 10-11 test; every image has a mask, one question is Chinese."""
    splits = {"train.json": range(0, 8), "validate.json": range(8, 10), "test.json": range(10, 12)}
    for file, indices in splits.items():
        records = []
        for i in indices:
            folder = root / "imgs" / f"xmlab{i}"
            blob_image(folder / "source.jpg", side_of(i), mask_path=folder / "mask.png", fmt="JPEG")
            box = [10, 18, 12, 12] if side_of(i) == "left" else [26, 18, 12, 12]
            (folder / "detection.json").write_text(json.dumps([{"Liver": box}]))
            asked = [
                ("Where is the liver?", f"{side_of(i)} side", "OPEN", "Position"),
                ("Is the liver on the left?", "Yes" if side_of(i) == "left" else "No", "CLOSED", "Position"),
                ("What modality is used?", "CT" if i % 3 else "MRI", "OPEN", "Modality"),
            ]
            for k, (question, answer, answer_type, content_type) in enumerate(asked):
                records.append(
                    {
                        "qid": 10 * i + k,
                        "img_name": f"xmlab{i}/source.jpg",
                        "question": question,
                        "answer": answer,
                        "q_lang": "en",
                        "answer_type": answer_type,
                        "content_type": content_type,
                        "modality": "CT",
                        "location": "Abdomen",
                    }
                )
            if i == 0:
                records.append({"qid": 9, "img_name": "xmlab0/source.jpg", "question": "肝脏在哪里?", "answer": "左侧",
                                "q_lang": "zh", "answer_type": "OPEN"})  # fmt: skip
        (root / file).write_text(json.dumps(records, ensure_ascii=False))


REPORTS = {
    "left": "Small right pleural effusion. No pneumothorax. The heart size is normal.",
    "right": "The lungs are clear. No pleural effusion. No pneumothorax. The heart is enlarged.",
}


def write_iu_xray(root: Path) -> None:
    """IU-Xray as R2Gen gives it: 12 train studies, 2 val, 4 test, two images each."""
    annotation: dict[str, list] = {"train": [], "val": [], "test": []}
    splits = ["train"] * 12 + ["val"] * 2 + ["test"] * 4
    for i, split in enumerate(splits):
        study = f"CXR{100 + i}_IM-{2000 + i}"
        for view in range(2):
            blob_image(root / "images" / study / f"{view}.png", side_of(i))
        paths = [f"{study}/0.png", f"{study}/1.png"]
        annotation[split].append({"id": study, "report": REPORTS[side_of(i)], "image_path": paths, "split": split})
    (root / "annotation.json").write_text(json.dumps(annotation))


COLOURS = {"red": (220, 40, 40), "blue": (40, 60, 220)}


def shape_image(path: Path, shape: str, colour: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (SIZE, SIZE), (250, 250, 250))
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse((10, 10, 38, 38), fill=COLOURS[colour])
    else:
        draw.rectangle((10, 10, 38, 38), fill=COLOURS[colour])
    image.save(path)


def write_llava_generic(root: Path, train: int = 16, test: int = 6) -> None:
    """Coloured shapes in LLaVA conversation JSON: train.json and test.json, ids unique across both."""
    for file, indices in (("train.json", range(train)), ("test.json", range(train, train + test))):
        records = []
        for i in indices:
            shape, colour = ("circle", "square")[i % 2], ("red", "blue")[(i // 2) % 2]
            shape_image(root / "images" / f"shape{i}.png", shape, colour)
            turns = [
                ("<image>\nWhat color is the shape?", colour),
                ("What is the shape?", shape),
                ("Is the shape a circle?", "yes" if shape == "circle" else "no"),
            ]
            conversations = [
                {"from": who, "value": text}
                for question, answer in turns
                for who, text in (("human", question), ("gpt", answer))
            ]
            records.append({"id": f"shape{i}", "image": f"images/shape{i}.png", "conversations": conversations})
        (root / file).write_text(json.dumps(records))
