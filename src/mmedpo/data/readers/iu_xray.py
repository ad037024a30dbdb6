"""IU-Xray (Demner-Fushman et al. 2016) as R2Gen distributes it
(https://github.com/zhjohnchan/R2Gen):

    ROOT/annotation.json   {"train": [{"id": "CXR2384_IM-0942", "report": "...",
                                       "image_path": ["CXR2384_IM-0942/0.png", "CXR2384_IM-0942/1.png"],
                                       "split": "train"}, ...], "val": [...], "test": [...]}
    ROOT/images/CXR2384_IM-0942/0.png

A study has several images; `image_policy` says which become samples:
"first" (the first listed, id = study id), "all" (one sample per image,
id = STUDY/INDEX), or "frontal" (the first frontal one; needs `projections`, a CSV
under ROOT with columns `image` and `projection`, e.g. "CXR2384_IM-0942/0.png,Frontal").
Images are relative to ROOT.
"""

from __future__ import annotations

from pathlib import Path

from mmedpo.data.json_files import load_json
from mmedpo.data.readers.base import (
    Collector,
    ImageCheck,
    RecordError,
    as_record,
    csv_rows,
    find_file,
    image_path,
    normal_split,
    record_id,
    text,
)
from mmedpo.records import REPORT_INSTRUCTION, Reject, Sample

SPLITS = ("train", "val", "test")
POLICIES = ("first", "frontal", "all")


def read_iu_xray(
    root: Path,
    split: str | None = None,
    image_policy: str = "first",
    projections: str = "",
    instruction: str = REPORT_INSTRUCTION,
    check_images: ImageCheck = "decode",
) -> tuple[list[Sample], list[Reject]]:
    root = Path(root)
    if image_policy not in POLICIES:
        raise ValueError(f"image_policy must be one of {', '.join(POLICIES)}, got {image_policy!r}")
    if image_policy == "frontal" and not projections:
        raise ValueError("image_policy 'frontal' needs projections: a CSV with columns image, projection")
    views = _projections(root / projections) if projections else {}
    splits = list(SPLITS) if split is None else [normal_split(split)]
    path = find_file(root, "annotation.json")
    annotation = load_json(path)
    if not isinstance(annotation, dict):
        raise ValueError(f"{path}: expected an object of split lists (train, val, test)")
    collector = Collector(root, check_images)
    for name in splits:
        records = annotation.get(name)
        if not isinstance(records, list):
            raise ValueError(f"{path}: no list for split {name!r} (it has {', '.join(annotation)})")
        for index, record in enumerate(records):
            build = lambda r=record, n=name: _samples(r, n, image_policy, views, instruction)  # noqa: E731
            collector.add(f"{path}#{name}/{index}", record_id(record, "id"), build)
    return collector.result()


def _projections(path: Path) -> dict[str, str]:
    return {row["image"]: (row.get("projection") or "").strip().lower() for _, row in csv_rows(path)}


def _samples(record, split: str, policy: str, views: dict[str, str], instruction: str) -> list[Sample]:
    record = as_record(record)
    study = text(record, "id")
    paths = record.get("image_path")
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
        raise RecordError("field 'image_path' must be a non-empty list of image paths")
    if policy == "frontal":
        frontal = [p for p in paths if views.get(p) == "frontal"]
        if not frontal:
            raise RecordError(f"no frontal image among {paths} in the projections file")
        chosen = [(study, frontal[0])]
    elif policy == "first":
        chosen = [(study, paths[0])]
    else:
        chosen = [(f"{study}/{index}", path) for index, path in enumerate(paths)]
    report = text(record, "report")
    return [
        Sample(
            id=sample_id,
            task="report",
            image=image_path("images", path),
            question=instruction,
            answer=report,
            split=split,
            meta={"dataset": "iu-xray", "study": study, "view": views.get(path)},
        )
        for sample_id, path in chosen
    ]
