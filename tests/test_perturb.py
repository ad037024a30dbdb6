"""Clinical perturbations and the rejected-answer filter."""

import json
import random
from pathlib import Path

import pytest

from mmedpo.clinical.findings import compare_answers
from mmedpo.curation.filters import check_rejected
from mmedpo.curation.perturb import OPERATIONS, perturb_answer

FIXTURES = Path("/work/shared/fixtures/mmedpo-released")
REPORT = "Small right pleural effusion. No pneumothorax. The heart size is normal."


def ops(answer, answer_type, task, seed=0):
    return dict((op, text) for text, op in perturb_answer(answer, answer_type, task, random.Random(seed)))


def test_closed_flip_keeps_case_and_whitespace():
    assert ops("Yes", "closed", "vqa") == {"yes_no_flip": "No"}
    assert ops(" no", "closed", "vqa") == {"yes_no_flip": " yes"}
    assert ops("NO.", "closed", "vqa") == {"yes_no_flip": "YES."}


def test_open_answers():
    assert ops("right", "open", "vqa") == {"laterality_swap": "left"}
    assert ops("Upper Left Lobe", "open", "vqa") == {
        "laterality_swap": "Upper Right Lobe",
        "zone_swap": "Lower Left Lobe",
    }
    assert ops("small", "open", "vqa") == {"severity_change": "large"}
    nodule = ops("Nodule", "open", "vqa")
    assert nodule["negation_flip"] == "None"
    assert nodule["finding_swap"] in {"Consolidation"}  # the one common finding in nodule's category
    assert ops("none", "open", "vqa")["negation_flip"] in {
        "nodule",
        "pleural effusion",
        "consolidation",
        "pneumothorax",
        "cardiomegaly",
    }
    assert ops("Liver", "open", "vqa") == {}  # nothing clinical to perturb


def test_report_laterality_swap_changes_only_the_side():
    changed = ops(REPORT, None, "report")
    assert changed["laterality_swap"] == "Small left pleural effusion. No pneumothorax. The heart size is normal."
    (d,) = compare_answers(REPORT, changed["laterality_swap"])
    assert (d.name, d.aspect) == ("pleural effusion", "side")
    assert changed["severity_change"] == "Large right pleural effusion. No pneumothorax. The heart size is normal."
    # Pleural findings are all named already, so no self-contradicting swap is made.
    assert "finding_swap" not in changed


def test_report_negation_flips():
    negated = [t for seed in range(6) for op, t in ops(REPORT, None, "report", seed).items() if op == "negation_flip"]
    assert set(negated) <= {
        "No pleural effusion. No pneumothorax. The heart size is normal.",
        "Small right pleural effusion. Pneumothorax. The heart size is normal.",
        "Small right pleural effusion. No pneumothorax. The heart size is enlarged.",
    }
    assert len(set(negated)) >= 2
    flipped = ops("There is no focal airspace opacity, pleural effusion, or pneumothorax.", None, "report")
    assert flipped["negation_flip"] == "There is focal airspace opacity, pleural effusion, and pneumothorax."


def iu_xray_reports():
    records = json.loads((FIXTURES / "iuxray_dpo_weighted_sample.json").read_text())
    return [r["conversations"][1]["value"] for r in records]


@pytest.mark.parametrize("seed", [0, 1])
def test_every_perturbation_contradicts_and_keeps_style(seed):
    answers = [
        ("Yes", "closed", "vqa"),
        ("no", "closed", "vqa"),
        ("nodule", "open", "vqa"),
        ("Pleural effusion", "open", "vqa"),
        ("left", "open", "vqa"),
        ("None", "open", "vqa"),
        (REPORT, None, "report"),
    ] + [(r, None, "report") for r in iu_xray_reports()]
    seen = set()
    alternatives = ["liver", "left", "right", "nodule and effusion", "pleural effusion"]  # a split's open answers
    for answer, answer_type, task in answers:
        for text, op in perturb_answer(answer, answer_type, task, random.Random(seed), alternatives):
            seen.add(op)
            assert check_rejected(answer, text, answer_type, task) is None, (answer, text, op)
            assert text[: len(answer) - len(answer.lstrip())] == answer[: len(answer) - len(answer.lstrip())]
            assert text.strip()[0].isupper() == answer.strip()[0].isupper()
            assert text.rstrip()[-1] == answer.rstrip()[-1] or answer.rstrip()[-1] not in ".!?"
    assert seen == set(OPERATIONS)


def test_check_rejected_reasons():
    assert check_rejected("Yes", "  ", "closed", "vqa") == "empty"
    assert check_rejected("Yes", "yes.", "closed", "vqa") == "identical"
    assert check_rejected("Yes", "No, there is a large pleural effusion.", "closed", "vqa") == "too_long"
    assert check_rejected("Yes", "Nodule", "closed", "vqa") == "wrong_type"
    assert check_rejected("yes", "No", "closed", "vqa") is None
    assert check_rejected("No", "No nodule", "closed", "vqa") == "not_contradicting"
    assert check_rejected("right", "right lung", "open", "vqa") == "not_contradicting"
    assert check_rejected("right", "left lung", "open", "vqa") is None
    assert check_rejected("nodule", "none", "open", "vqa") is None
    assert (
        check_rejected("Small right pleural effusion.", "A small right effusion.", None, "report")
        == "not_contradicting"
    )
    assert check_rejected("No pneumothorax.", "Pneumothorax.", None, "report") is None


def test_meta_text_from_the_released_data_is_caught():
    rejected = []
    for name in ("iuxray", "slake", "vqa-rad"):
        for record in json.loads((FIXTURES / f"{name}_dpo_weighted_sample.json").read_text()):
            rejected.append((record["conversations"][1]["value"], record["rejected_conversations"][1]["value"]))
    meta = [(g, r) for g, r in rejected if r.lstrip().startswith(("Based on", "The dispreferred"))]
    assert len(meta) == 6
    for gold, candidate in meta:
        assert check_rejected(gold, candidate, None, "report", max_length_ratio=100) == "meta_text"
    assert check_rejected("Yes", "Dispreferred Answer: No", "closed", "vqa") == "meta_text"
    assert check_rejected("Yes", "As an AI, no", "closed", "vqa") == "meta_text"
    # "There is" is not "Here is".
    assert check_rejected("No pneumothorax.", "There is a pneumothorax.", None, "report") is None
