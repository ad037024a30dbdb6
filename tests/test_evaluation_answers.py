"""Strict answer scoring on VQA-RAD- and SLAKE-style answers, the majority baseline, and R2Gen's report cleaning."""

from __future__ import annotations

import pytest

from mmedpo.evaluation.answers import closed_correct, exact_match, open_recall, other_option, token_f1
from mmedpo.evaluation.baselines import majority_answers, question_type
from mmedpo.evaluation.compare import compare_results
from mmedpo.evaluation.metrics import report_metrics, score_predictions
from mmedpo.evaluation.text import normalize_report, r2gen_clean
from mmedpo.records import Sample


@pytest.mark.parametrize(
    ("question", "gold", "prediction", "right"),
    [
        # VQA-RAD style: a side, named as two options.
        ("Is the lesion on the left or right side of the brain?", "left", "left and right", False),
        ("Is the lesion on the left or right side of the brain?", "left", "Left.", True),
        ("Is the lesion on the left or right side of the brain?", "left", "the left side", True),
        ("Is the lesion on the left or right side of the brain?", "right", "left", False),
        ("Is the left or right lung more opaque?", "left", "left lung", True),  # "lung" is no option
        ("Is the left or right lung more opaque?", "left", "left, not right", False),
        # Modality with articles on the options.
        ("Is this a CT or an MRI?", "MRI", "an MRI scan", True),
        ("Is this a CT or an MRI?", "MRI", "CT and MRI", False),
        # Multi-word options: only the words that tell them apart count.
        ("Is the mass in the right upper lobe or the left lower lobe?", "left lower lobe", "the left lower lobe", True),
        (
            "Is the mass in the right upper lobe or the left lower lobe?",
            "left lower lobe",
            "left lower and upper",
            False,
        ),
        # SLAKE style: options after a comma, capitalised gold.
        ("Which is bigger in this image, kidney or spleen?", "Kidney", "kidney", True),
        ("Which is bigger in this image, kidney or spleen?", "Kidney", "kidney or spleen", False),
        # No named options: the contiguous-run rule alone.
        ("What modality is used?", "MRI", "It is an MRI scan", True),
        ("What modality is used?", "MRI", "fMRI", False),
        # Yes/no gold answers are read as yes/no, whatever the question names.
        ("Is there an effusion or not?", "no", "No, there is not", True),
    ],
)
def test_closed_answers_that_name_another_option_are_wrong(question, gold, prediction, right):
    assert closed_correct(prediction, gold, question) is right


def test_other_option_is_anchored_on_the_gold_answer():
    question = "Is the mass in the right upper lobe or the left lower lobe?"
    assert other_option(question, "left lower lobe") == ["right", "upper", "lobe"]
    assert other_option(question, "right upper lobe") == ["left", "lower", "lobe"]
    assert other_option("Is the lesion in the brain or in the spine?", "spine") == []  # not next to the "or"
    assert other_option("Is there a nodule?", "yes") == []


def test_open_scores_drop_articles():
    # The case: "left lung" against "the left lung" scored 2/3 when "the" was a word to find.
    assert open_recall("left lung", "the left lung") == 1.0
    assert open_recall("The left lung", "Left Lung") == 1.0  # SLAKE capitalises its answers
    assert exact_match("left lung", "the left lung") == 1.0
    assert token_f1("a left lung", "the left lung") == 1.0
    assert open_recall("lung", "the left lung") == 0.5
    assert open_recall("a", "A") == 1.0  # an answer that is only an article keeps it


def _vqa(id, question, answer, answer_type, **meta):
    return Sample(
        id=id, task="vqa", image="a.png", question=question, answer=answer, answer_type=answer_type, meta=meta
    )


SAMPLES = [
    _vqa("p1", "Is there a mass?", "yes", "closed", question_type="PRES"),
    _vqa("p2", "Is there an effusion?", "yes", "closed", question_type="PRES"),
    _vqa("p3", "Is there a fracture?", "yes", "closed", question_type="PRES"),
    _vqa("p4", "Is the brain normal?", "no", "closed", question_type="PRES"),
    _vqa("s1", "Is the mass on the left or right?", "left", "closed", question_type="POS"),
    _vqa("s2", "Is the effusion on the left or right?", "left", "closed", question_type="POS"),
    _vqa("s3", "Is the nodule on the left or right?", "right", "closed", question_type="POS"),
    _vqa("o1", "Which organ is shown?", "lung", "open", question_type="ORGAN"),
    _vqa("o2", "Which organ is abnormal?", "the lung", "open", question_type="ORGAN"),
    _vqa("o3", "Which organ is enlarged?", "heart", "open", question_type="ORGAN"),
]


def test_majority_answer_per_question_type_and_per_answer_accuracy():
    predictions = ["yes", "yes", "no", "no", "left", "left and right", "right", "lung", "lungs", "heart"]
    metrics = score_predictions(SAMPLES, predictions)
    majority = metrics["majority"]
    # PRES: yes 3 of 4; POS: left 2 of 3; ORGAN: lung 2 of 3 ("the lung" is "lung").
    assert majority["answers"] == {"closed/POS": "left", "closed/PRES": "yes", "open/ORGAN": "lung"}
    assert majority["closed_accuracy"] == pytest.approx(5 / 7)
    assert majority["open_recall"] == pytest.approx(2 / 3)
    # Gold classes of the majority: yes 3/3, no 0/1, left 2/2, right 0/1 -> balanced (1 + 0 + 1 + 0) / 4.
    assert majority["closed_balanced_accuracy"] == pytest.approx(0.5)
    # The model: yes 2/3, no 1/1, left 1/2 ("left and right" names the other option), right 1/1.
    assert metrics["closed_accuracy"] == pytest.approx(5 / 7)
    assert metrics["closed_accuracy_yes"] == pytest.approx(2 / 3) and metrics["closed_accuracy_no"] == 1.0
    assert metrics["closed_by_answer"]["left"] == {"n": 2, "accuracy": 0.5}
    assert metrics["closed_balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 0.5 + 1) / 4)
    # Same closed accuracy as always answering the majority, but far better balanced: the table shows both.
    comparison = compare_results({"model": {"metrics": metrics, "predictions": _rows(predictions)}}, "model")
    assert comparison["majority"]["metrics"]["closed_balanced_accuracy"] == pytest.approx(0.5)


def _rows(predictions):
    return [{**sample.model_dump(), "prediction": p} for sample, p in zip(SAMPLES, predictions)]


def test_question_type_reads_the_category_of_each_dataset():
    assert question_type({"answer_type": "closed", "meta": {"question_type": "PRES"}}) == "closed/PRES"  # VQA-RAD
    assert question_type({"answer_type": "open", "meta": {"content_type": "Organ"}}) == "open/Organ"  # SLAKE
    assert question_type({"answer_type": "open", "meta": {"question_kind": "side"}}) == "open/side"  # SynthMed
    assert question_type({"answer_type": "closed", "meta": {}}) == "closed"
    # A tie goes to the alphabetically first answer, so the baseline is the same on every machine.
    assert majority_answers([{"answer_type": "closed", "answer": a} for a in ("yes", "No")]) == {"closed": "no"}


def test_r2gen_cleaning_keeps_hyphens_and_sentence_tokens():
    assert normalize_report("The heart is normal. No pleural-effusion.") == "the heart is normal no pleural effusion"
    assert normalize_report("The heart is normal. No pleural-effusion.", "r2gen-iu-xray") == (
        "the heart is normal . no pleural-effusion ."
    )
    # List numbers go; the sentence ends stay as "." tokens.
    assert r2gen_clean("1. Heart normal. 2. Lungs clear.", "iu_xray") == "heart normal . lungs clear ."
    # The MIMIC-CXR variant also joins lines, so a period before a line break ends a sentence; IU-Xray's does not.
    report = "FINDINGS:\nThe heart size is normal (stable).\n\nNo effusion..."
    assert r2gen_clean(report, "mimic_cxr") == "findings the heart size is normal stable . no effusion ."
    assert r2gen_clean(report, "iu_xray") == "findings the heart size is normal stable no effusion ."
    with pytest.raises(ValueError, match="unknown report tokenization 'ptb'"):
        normalize_report("x", "ptb")


def test_report_metrics_under_r2gen_cleaning_differ_and_are_named():
    predictions, references = ["No pleural-effusion. Heart normal."], ["No pleural effusion. Heart normal."]
    ours = report_metrics(predictions, references)
    r2gen = report_metrics(predictions, references, tokenization="r2gen-iu-xray")
    assert ours["bleu_1"] == pytest.approx(1.0, abs=1e-6)  # the hyphen only separates words
    # R2Gen: "pleural-effusion" is one token against "pleural", "effusion": 5 of 6 candidate tokens match
    # ("no", ".", "heart", "normal", "."), reference 7 tokens -> BLEU-1 = 5/6 * exp(1 - 7/6).
    assert r2gen["bleu_1"] == pytest.approx(5 / 6 * 2.718281828 ** (1 - 7 / 6), abs=1e-6)
    sample = Sample(id="r1", task="report", image="a.png", question="Describe.", answer=references[0])
    metrics = score_predictions([sample], predictions, report_tokenization="r2gen-iu-xray")
    assert metrics["report_tokenization"] == "r2gen-iu-xray" and metrics["bleu_1"] == pytest.approx(r2gen["bleu_1"])
    rows = [{**sample.model_dump(), "prediction": predictions[0]}]
    mixed = {
        "ours": {"metrics": score_predictions([sample], predictions), "predictions": rows},
        "r2gen": {"metrics": metrics, "predictions": rows},
    }
    with pytest.raises(ValueError, match="different protocols"):
        compare_results(mixed, "ours")


@pytest.mark.parametrize("module", ["answers", "baselines", "text", "power", "llava_med"])
def test_docstring_examples_hold(module):
    import doctest
    import importlib

    outcome = doctest.testmod(importlib.import_module(f"mmedpo.evaluation.{module}"))
    assert outcome.attempted > 0 and outcome.failed == 0
