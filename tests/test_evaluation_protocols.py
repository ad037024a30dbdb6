"""The llava-med protocol's quirks, clinical finding metrics, the persistent METEOR and the RadEval adapter."""

from __future__ import annotations

import importlib.machinery
import sys
import types

import pytest
from pycocoevalcap.meteor.meteor import Meteor

from helpers import REPORT_PREDICTIONS, REPORT_REFERENCES
from mmedpo.evaluation import llava_med
from mmedpo.evaluation.clinical import clinical_metrics, positive_findings
from mmedpo.evaluation.meteor import meteor_scorer
from mmedpo.evaluation.metrics import report_metrics, score_predictions
from mmedpo.evaluation.radeval import RadEvalUnavailable, radeval_available, radeval_metrics
from mmedpo.evaluation.text import normalize_report
from mmedpo.records import Sample

ADVERSARIAL = ["Yes, there is", "nodule", "Not seen", "unknown", "No.", "yes", "right lung"]
GOLDS = ["yes", "no", "no", "yes", "no", "no", "yes"]


def _vqa(id, answer, answer_type):
    return Sample(id=id, task="vqa", image="a.png", question="q?", answer=answer, answer_type=answer_type)


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("Yes, there is", "yes", 1),
        ("nodule", "no", 1),  # "no" inside "nodule" counts as the right answer
        ("Not seen", "no", 1),  # "no" inside "not"
        ("unknown", "yes", 0),  # "no" inside "unknown", gold absent: a miss (the pre-v1.0.0 script dropped it)
        ("No.", "no", 1),
        ("yes", "no", 0),  # a plainly wrong answer is a miss (the pre-v1.0.0 script dropped it)
        ("right lung", "yes", 0),
        ("None", "no", 0),  # "none" becomes "0" before the substring test
        ("MRI", "MRI", 0),  # a right choice answer without "yes"/"no" in it is a miss
        ("MRI, not CT", "MRI", 1),  # ... and one with "no" inside "not" is a hit
    ],
)
def test_llava_med_closed_quirks(prediction, gold, expected):
    assert llava_med.closed_hit(prediction, gold) == expected


def test_llava_med_v1_scores_the_adversarial_answers_4_of_7():
    samples = [_vqa(f"c{i}", gold, "closed") for i, gold in enumerate(GOLDS)]
    honest = score_predictions(samples, ADVERSARIAL)
    quirky = score_predictions(samples, ADVERSARIAL, protocol="llava-med-v1.0.0")
    # Honest: right are "Yes, there is" and "No." -> 2 of 7.
    assert honest["protocol"] == "mmedpo" and honest["closed_accuracy"] == pytest.approx(2 / 7)
    # LLaVA-Med v1.0.0: hits "Yes, there is", "nodule", "Not seen", "No." = 4 of all 7.
    assert quirky["protocol"] == "llava-med-v1.0.0"
    assert quirky["closed_accuracy"] == pytest.approx(4 / 7)
    assert quirky["n_closed"] == 7 and "n_closed_dropped" not in quirky
    # Per gold answer: yes 1 of 3 ("Yes, there is"), no 3 of 4 (nodule, Not seen, No.).
    assert quirky["closed_accuracy_yes"] == pytest.approx(1 / 3) and quirky["closed_accuracy_no"] == 0.75
    # The majority answer "no" (4 of 7) scores 4/7 under both protocols.
    assert quirky["majority"]["closed_accuracy"] == honest["majority"]["closed_accuracy"] == pytest.approx(4 / 7)


def test_llava_med_open_recall_counts_repeated_prediction_words():
    # Gold "the left lower lobe" -> "left lower lobe". Prediction words: left x2, lung.
    # tp = 2 (left, counted twice), fp = 1 (lung), fn = 2 (lower, lobe): recall 2/4, precision 2/3.
    f1, precision, recall = llava_med.f1_precision_recall("left left lung", "the left lower lobe")
    assert (precision, recall) == pytest.approx((2 / 3, 0.5))
    assert f1 == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    # Its "exact match": distinct gold words found (left) / prediction words (3).
    assert llava_med.exact_match("left left lung", "the left lower lobe") == pytest.approx(1 / 3)
    assert llava_med.f1_precision_recall("two", "2")[2] == 1.0  # number words become digits
    samples = [_vqa("o1", "the left lower lobe", "open"), _vqa("o2", "2", "open")]
    metrics = score_predictions(samples, ["left left lung", "two"], protocol="llava-med-v1.0.0")
    assert metrics["open_recall"] == pytest.approx((0.5 + 1.0) / 2)
    # The honest recall of the same answers: 1/3 (left of left/lower/lobe, articles aside) and 0 ("two" is not "2").
    assert score_predictions(samples, ["left left lung", "two"])["open_recall"] == pytest.approx(1 / 6)


def test_llava_med_normalisation_quirks():
    assert llava_med.normalize_word("The left-lung, two nodules.") == "left lung 2 nodules"
    assert llava_med.normalize_word("isnt it") == "isn't it"  # contractions get their apostrophe back
    assert llava_med.normalize_word("3.5 cm.") == "3.5 cm"  # a period before a digit stays
    assert llava_med.normalize_word("." * 40) == "." * 8  # at most 32 periods are removed


def test_unknown_protocol_is_refused():
    with pytest.raises(
        ValueError,
        match=r"unknown evaluation protocol 'llava-med'; did you mean 'llava-med-v1.0.0'\? valid: mmedpo, llava-med-v1",
    ):
        score_predictions([_vqa("c1", "yes", "closed")], ["yes"], protocol="llava-med")


def test_clinical_metrics_with_negation_and_hedges():
    predictions = [
        "Small left pleural effusion. No pneumothorax.",  # effusion; the pneumothorax is negated
        "Heart is enlarged. Possible consolidation.",  # cardiomegaly; the hedged consolidation is not positive
        "The lungs are clear.",
    ]
    references = ["Left effusion and right pneumothorax.", "Cardiomegaly.", "No acute disease."]
    assert positive_findings(predictions[0]) == {"pleural effusion"}
    assert positive_findings("No effusion, but a small pneumothorax.") == {"pneumothorax"}
    # TP 2 (effusion, cardiomegaly); predicted 2; expected 3.
    scores = clinical_metrics(predictions, references)
    assert scores == pytest.approx({"clinical_precision": 1.0, "clinical_recall": 2 / 3, "clinical_f1": 0.8})
    assert clinical_metrics(["Normal."], ["No acute disease."]) == {
        "clinical_precision": 0.0,
        "clinical_recall": 0.0,
        "clinical_f1": 0.0,
    }
    assert report_metrics(predictions, references)["clinical_f1"] == pytest.approx(0.8)


@pytest.mark.slow
def test_persistent_meteor_equals_pycocoevalcap_and_is_reused():
    predictions, references = REPORT_PREDICTIONS, REPORT_REFERENCES
    gts = {i: [normalize_report(text)] for i, text in enumerate(references)}
    res = {i: [normalize_report(text)] for i, text in enumerate(predictions)}
    reference_scorer = Meteor()
    try:
        expected = reference_scorer.compute_score(gts, res)[0]
    finally:
        reference_scorer.meteor_p.stdin.close()
        reference_scorer.meteor_p.wait()
    assert report_metrics(predictions, references, meteor=True)["meteor"] == pytest.approx(expected)
    scorer = meteor_scorer()
    assert meteor_scorer() is scorer  # one process for the session
    assert report_metrics(["the heart is normal"], ["The heart is normal."], meteor=True)["meteor"] == pytest.approx(
        1.0, abs=0.01
    )


def test_radeval_adapter_without_the_package():
    if radeval_available():
        pytest.skip("RadEval is installed here")
    with pytest.raises(RadEvalUnavailable, match="pip install RadEval"):
        radeval_metrics(["a"], ["b"])


def test_radeval_adapter_passes_switches_and_flattens_scores(monkeypatch):
    seen = {}

    class FakeRadEval:
        def __init__(self, **switches):
            seen["switches"] = switches

        def __call__(self, refs, hyps):
            seen["refs"], seen["hyps"] = refs, hyps
            return {"radgraph_simple": 0.5, "chexbert": {"micro_f1": 0.25, "label": "x"}}

    module = types.ModuleType("RadEval")
    module.RadEval = FakeRadEval
    module.__spec__ = importlib.machinery.ModuleSpec("RadEval", None)
    monkeypatch.setitem(sys.modules, "RadEval", module)
    scores = radeval_metrics(["hyp"], ["ref"], metrics=("radgraph", "chexbert"))
    assert seen == {"switches": {"do_radgraph": True, "do_chexbert": True}, "refs": ["ref"], "hyps": ["hyp"]}
    assert scores == {"radeval_radgraph_simple": 0.5, "radeval_chexbert_micro_f1": 0.25}
    with pytest.raises(ValueError, match="unknown RadEval metric"):
        radeval_metrics(["hyp"], ["ref"], metrics=("bleurt",))
