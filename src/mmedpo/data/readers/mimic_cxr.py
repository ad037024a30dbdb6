"""MIMIC-CXR-JPG (Johnson et al. 2019), https://physionet.org/content/mimic-cxr-jpg/ ,
with the report texts of MIMIC-CXR (https://physionet.org/content/mimic-cxr/ ,
mimic-cxr-reports.zip) unpacked into the same tree:

    ROOT/mimic-cxr-2.0.0-split.csv(.gz)      dicom_id, study_id, subject_id, split
    ROOT/mimic-cxr-2.0.0-metadata.csv(.gz)   dicom_id, ..., ViewPosition, ...
    ROOT/files/p10/p10000032/s50414267/02aa804e-....jpg
    ROOT/files/p10/p10000032/s50414267.txt   the study's report (folder: `reports_dir`)

One split-CSV row is one image. Images whose ViewPosition is not in `views`
are skipped with a reason; with `image_policy` "first" a study gives one sample
(its first kept image, id = study id), with "all" one per kept image
(id = STUDY/DICOM_ID). The answer is the report's `section`: "findings",
"impression", or "both" (findings, then impression); a report without it is
rejected. Both sections are kept in meta. Images are relative to ROOT.
"""

from __future__ import annotations

import re
from pathlib import Path

from mmedpo.data.json_files import read_text
from mmedpo.data.readers.base import (
    Collector,
    ImageCheck,
    RecordError,
    check_text,
    csv_rows,
    find_file,
    image_path,
    normal_split,
)
from mmedpo.records import REPORT_INSTRUCTION, Reject, Sample

POLICIES = ("first", "all")
SECTIONS = ("findings", "impression", "both")
# A section heading: a line starting with capitals and a colon ("FINDINGS:", "PA AND LATERAL VIEWS:").
_HEADING = re.compile(r"^\s*([A-Z][A-Z &/()-]*[A-Z)])\s*:", re.MULTILINE)


def read_mimic_cxr(
    root: Path,
    split: str | None = None,
    views: tuple[str, ...] | list[str] = ("PA", "AP"),
    image_policy: str = "first",
    section: str = "findings",
    reports_dir: str = "files",
    instruction: str = REPORT_INSTRUCTION,
    check_images: ImageCheck = "exists",
) -> tuple[list[Sample], list[Reject]]:
    """Samples of one split (train, val/validate, test) or of all (None).

    Images are only checked to exist by default: decoding all 377,000 would take hours.
    """
    root = Path(root)
    if image_policy not in POLICIES:
        raise ValueError(f"image_policy must be one of {', '.join(POLICIES)}, got {image_policy!r}")
    if section not in SECTIONS:
        raise ValueError(f"section must be one of {', '.join(SECTIONS)}, got {section!r}")
    split_path = find_file(root, "mimic-cxr-2.0.0-split.csv")
    view_of = _views(find_file(root, "mimic-cxr-2.0.0-metadata.csv"))
    wanted = None if split is None else normal_split(split)
    collector = Collector(root, check_images)
    studies_done: set[str] = set()
    options = (image_policy, section, reports_dir, instruction)
    for number, row in csv_rows(split_path):
        source, dicom = f"{split_path}:{number}", row.get("dicom_id")
        row_split = normal_split(row.get("split") or "")
        if wanted is not None and row_split != wanted:
            continue  # another split's image, read when that split is asked for
        view = view_of.get(dicom or "", "")
        if view not in views:
            collector.reject(source, dicom, f"skipped: view {view or 'unknown'!r} (views {', '.join(views)} selected)")
            continue
        study = row.get("study_id") or ""
        if image_policy == "first" and study in studies_done:
            collector.reject(source, dicom, f"skipped: study {study} already gave its first image")
            continue
        before = len(collector.samples)
        collector.add(source, dicom, lambda r=row, s=row_split, v=view: [_sample(root, r, s, v, *options)])
        if len(collector.samples) > before:
            studies_done.add(study)
    return collector.result()


def _views(path: Path) -> dict[str, str]:
    return {row.get("dicom_id", ""): (row.get("ViewPosition") or "").strip() for _, row in csv_rows(path)}


def _sample(root, row, split, view, policy, section, reports_dir, instruction) -> Sample:
    dicom, study, subject = (row.get(key) or "" for key in ("dicom_id", "study_id", "subject_id"))
    if not (dicom and study.isdigit() and subject.isdigit()):
        raise RecordError(f"dicom_id, study_id and subject_id must be set (got {dicom!r}, {study!r}, {subject!r})")
    folder = f"p{subject[:2]}/p{subject}"
    report_path = root / reports_dir / folder / f"s{study}.txt"
    if not report_path.is_file():
        raise RecordError(f"report {report_path} not found")
    report = read_text(report_path)
    check_text("report", report)
    sections = report_sections(report)
    answer = _answer(sections, section)
    if not answer:
        raise RecordError(f"report {report_path} has no {section} section")
    return Sample(
        id=study if policy == "first" else f"{study}/{dicom}",
        task="report",
        image=image_path("files", folder, f"s{study}", f"{dicom}.jpg"),
        question=instruction,
        answer=answer,
        split=split,
        meta={"dataset": "mimic-cxr", "study": study, "subject": subject, "view": view, **sections},
    )


def _answer(sections: dict[str, str], section: str) -> str:
    if section == "both":
        return " ".join(s for s in (sections.get("findings"), sections.get("impression")) if s)
    return sections.get(section, "")


def report_sections(report: str) -> dict[str, str]:
    """The FINDINGS and IMPRESSION sections of a radiology report, whitespace collapsed.

    >>> report_sections("FINAL REPORT\\n FINDINGS: No  effusion.\\n IMPRESSION: Normal.")
    {'findings': 'No effusion.', 'impression': 'Normal.'}
    """
    headings = list(_HEADING.finditer(report))
    found = {}
    for heading, following in zip(headings, headings[1:] + [None]):
        name = heading.group(1).strip().lower()
        if name in ("findings", "impression") and name not in found:
            body = report[heading.end() : following.start() if following else len(report)]
            found[name] = " ".join(body.split())
    return {name: body for name, body in found.items() if body}
