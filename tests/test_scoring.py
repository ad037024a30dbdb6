"""The offline findings judge and the score normalisers, on hand-computed numbers."""

import json
from pathlib import Path

import pytest

from mmedpo.registry import JUDGES, NORMALISERS
from mmedpo.scoring.judges import FindingsJudge, Verdict
from mmedpo.scoring.normalise import normalise

FIXTURES = Path("/work/shared/fixtures/mmedpo-released")
QUESTION = "Examine the image closely and share its details"


def iu_xray_normal_report():
    records = {r["id"]: r for r in json.loads((FIXTURES / "iuxray_dpo_weighted_sample.json").read_text())}
    report = records["CXR948_IM-2443"]["conversations"][1]["value"].strip()
    assert report.startswith("The chest x-ray shows a normal heart size and mediastinal contours.")
    return report


def test_invented_effusion_and_pneumothorax_rank_above_a_rewording():
    judge = JUDGES.load("findings")()
    chosen = iu_xray_normal_report()
    invented = (
        "The chest x-ray shows a normal heart size and mediastinal contours. "
        "There is a large right pleural effusion and a pneumothorax."
    )
    reworded = (
        "Heart size and mediastinal contours are normal. The lungs are clear without pleural effusion "
        "or pneumothorax. No acute cardiopulmonary process."
    )
    invented_score, reason, *_ = judge.score(QUESTION, chosen, invented)
    # pneumothorax (0.9) is worse than a large effusion (0.6 + 0.15); the worst one counts.
    assert invented_score == 0.9
    assert "pleural effusion presence (0.75)" in reason and "pneumothorax presence (0.90)" in reason
    assert judge.score(QUESTION, chosen, reworded) == Verdict(0.0, "same findings (rewording)")


def test_severity_orders_errors():
    judge = FindingsJudge()
    small_nodule, *_ = judge.score(QUESTION, "The lungs are clear.", "Small nodule in the left upper lobe.")
    large_effusion, *_ = judge.score(QUESTION, "The lungs are clear.", "Large left pleural effusion.")
    side, reason, *_ = judge.score(QUESTION, "Small right pleural effusion.", "Small left pleural effusion.")
    assert (small_nodule, large_effusion, side) == (0.4, 0.75, 0.45)
    assert reason == "findings disagree: pleural effusion side (0.45)"


def test_closed_flip_scores_the_asked_finding():
    judge = FindingsJudge()
    assert judge.score("Is there a pneumothorax?", "No", "Yes, there is a pneumothorax.") == Verdict(
        0.9, "yes/no flip about pneumothorax (0.90)"
    )
    assert judge.score("Is there a small nodule?", "yes", "no")[0] == 0.4
    assert judge.score("Is there a pneumothorax?", "No", "no.")[0] == 0.0
    # Outside the lexicon the judge does not apply: no score, no failure (the panel weights by the others).
    assert judge.score("Is the liver visible?", "Yes", "No") == Verdict(
        None,
        "not applicable: yes/no flip, and neither they nor the question name a finding the lexicon knows",
        applicable=False,
    )
    assert not judge.score("Which organ?", "Liver", "The spleen.").applicable
    assert not judge.score("What color is the shape?", "blue", "red").applicable
    # A containing answer is no error, finding or not.
    assert judge.score("Which side?", "Right", "The right side.")[0] == 0.0
    # A wrong side for the finding asked about costs that finding's severity.
    assert judge.score("Which lung has the pneumothorax?", "right", "left") == Verdict(
        0.9, "answers differ about pneumothorax (0.90)"
    )


def test_registry():
    assert JUDGES.load("findings") is FindingsJudge
    assert (FindingsJudge.name, FindingsJudge.version) == ("findings", "2")


def test_normalisers_on_hand_computed_vectors():
    scores = [0.2, 0.8, 0.5, 0.5]
    assert normalise(scores, "none") == scores
    assert normalise(scores, "minmax") == pytest.approx([0.0, 1.0, 0.5, 0.5])
    assert normalise(scores, "rank") == pytest.approx([0.25, 1.0, 0.625, 0.625])  # ranks 1, 4, 2.5, 2.5 over 4
    assert normalise(scores, "mean-one") == pytest.approx([0.2 / 0.5, 1.6, 1.0, 1.0])  # mean is 0.5
    assert normalise(scores) == normalise(scores, "mean-one")
    assert normalise([-0.5, 0.3, 1.7], "clip") == [0.0, 0.3, 1.0]
    assert normalise([0.1, 0.3, 0.9], "clip", low=0.2, high=0.5) == [0.2, 0.3, 0.5]


def test_normalisers_degenerate_and_bad_input():
    assert normalise([0.7, 0.7], "minmax") == [1.0, 1.0]
    assert normalise([0.0, 0.0], "mean-one") == [1.0, 1.0]
    assert normalise([], "rank") == []
    with pytest.raises(ValueError, match="unknown normaliser 'zscore'; valid: none, minmax, rank, mean-one, clip"):
        normalise([0.1], "zscore")
    with pytest.raises(ValueError, match="finite"):
        normalise([0.1, float("nan")], "none")
    with pytest.raises(ValueError, match=">= 0"):
        normalise([-0.1, 0.5], "mean-one")
    assert set(NORMALISERS.names()) == {"none", "minmax", "rank", "mean-one", "clip"}
