"""Junk rejected answers refused with counted reasons, the answer vocabulary of a split, perturbation beyond
the chest lexicon, and a judge panel that weights by the judges that apply."""

from __future__ import annotations

import random

import pytest

from helpers import make_pair
from mmedpo.config import CurateTextConfig, ScoreConfig
from mmedpo.curation.filters import check_rejected
from mmedpo.curation.generators import Candidate
from mmedpo.curation.perturb import perturb_answer
from mmedpo.curation.summary import CurationSummary
from mmedpo.curation.text import select_pairs
from mmedpo.curation.vocabulary import AnswerVocabulary, question_type
from mmedpo.records import PreferencePair, Sample, read_jsonl
from mmedpo.registry import JUDGES
from mmedpo.scoring.judges import Judge, Verdict, not_applicable
from mmedpo.scoring.panel import score_pairs
from mmedpo.scoring.variant_pairs import reweight

# A shapes dataset as the issue found it: colour, shape and yes/no questions.
SPLIT = [
    ("What color is the shape?", "blue", "open"),
    ("What color is the shape?", "red", "open"),
    ("What is the blue shape?", "circle", "open"),
    ("What shape is the red object?", "square", "open"),
    ("Is the shape a circle?", "yes", "closed"),
]


def sample(index: int, question: str, answer: str, answer_type: str, **meta) -> Sample:
    return Sample(id=f"s{index}", task="vqa", image=f"{index}.png", question=question, answer=answer,
                  answer_type=answer_type, split="pref", meta=meta)  # fmt: skip


SAMPLES = [sample(i, *row) for i, row in enumerate(SPLIT)]
VOCABULARY = AnswerVocabulary.of(SAMPLES)


def test_the_issues_junk_is_refused_with_its_reason():
    circle = SAMPLES[2]  # "What is the blue shape?" -> "circle"

    def reason(gold, candidate, answer_type, kind=None):
        return check_rejected(gold, candidate, answer_type, "vqa", kind=kind, vocabulary=VOCABULARY)

    assert reason("circle", "W", "open") == "fragment"
    assert reason("circle", "\ufffd", "open") == "malformed"
    assert reason("yes", "e yes", "closed") == "fragment"
    assert reason("circle", "yes", "open", question_type(circle)) == "wrong_type"
    assert reason("red", "yes blue yes", "open") == "wrong_type"  # a "yes" has no place in an open answer
    assert reason("nodule", "no nodule", "open") is None  # but a "no" may negate the finding
    assert reason("blue", "circle", "open", question_type(SAMPLES[0])) == "off_type"  # a shape for a colour question
    assert reason("blue", "blue blue", "open") == "repeated"
    assert reason("yes", "circle", "closed") == "wrong_type"  # a yes/no question answered otherwise
    assert reason("No", "Yes", None) is None and reason("No", "maybe", None) == "wrong_type"  # no answer type given
    # What a wrong answer of the right kind looks like still passes.
    assert reason("blue", "red", "open", question_type(SAMPLES[0])) is None
    assert reason("circle", "square", "open", question_type(circle)) is None
    assert reason("circle", "a triangle", "open", question_type(circle)) is None  # unseen, so not judged off-type
    assert reason("yes", "No", "closed") is None
    assert check_rejected("2 cm", "3 x 4 cm", "open", "vqa") is None  # a measurement is not a fragment
    # A capital after a word names a type or a zone: the wrong answers worth a pair, not fragments.
    assert check_rejected("hepatitis C", "hepatitis B", "open", "vqa") is None
    assert check_rejected("Type A dissection", "Type B dissection", "open", "vqa") is None
    assert check_rejected("zone 1", "zone B", "open", "vqa") is None
    assert check_rejected("nodule", "nodule e", "open", "vqa") == "fragment"  # a lower-case stray letter still is
    # ... and so is a capital after any other word: a stray letter, not a label.
    assert check_rejected("yes", "No W", "closed", "vqa") == "fragment"
    assert check_rejected("spleen", "liver X", "open", "vqa") == "fragment"
    assert check_rejected("MRI", "CT X", "open", "vqa") == "fragment"
    assert check_rejected("nodule", "small nodule L", "open", "vqa") != "fragment"  # the sides' shorthand is a word
    assert check_rejected("CT", "MRI", "closed", "vqa") is None  # a closed question that is not yes/no


def test_every_drop_is_counted_by_generator_and_reason():
    summary = CurationSummary()
    junk = ["W", "\ufffd", "yes", "e yes", "blue", "blue", "square"]
    candidates = [Candidate(text, {"generator": "target"}) for text in junk]
    pairs = select_pairs(SAMPLES[2], candidates, CurateTextConfig(pairs_per_sample=3), summary, VOCABULARY)
    assert [pair.rejected for pair in pairs] == ["square"]
    assert dict(summary.drops) == {
        "target:fragment": 2,
        "target:malformed": 1,
        "target:wrong_type": 1,
        "target:off_type": 2,
    }


def test_question_types_come_from_the_dataset_else_from_the_words():
    assert question_type(sample(0, "Where is it?", "left", "open", question_type="POS")) == "pos"  # VQA-RAD
    assert question_type(sample(0, "Where is it?", "left", "open", content_type="Position")) == "position"  # SLAKE
    assert question_type(sample(0, "Which side is the effusion on?", "left", "open")) == "position"
    assert question_type(sample(0, "How many nodules?", "2", "open")) == "count"
    assert question_type(sample(0, "What colour is the lesion?", "dark", "open")) == "color"
    assert question_type(sample(0, "Describe it.", "x", "open")) == "other"
    assert VOCABULARY.answers("color") == ["blue", "red"] and VOCABULARY.answers("shape") == ["circle", "square"]
    assert not VOCABULARY.off_type("none", "color")  # "none" fits any question


def test_perturbation_swaps_within_the_question_type():
    rng = random.Random(0)
    assert perturb_answer("Circle", "open", "vqa", rng, ["circle", "square"]) == [("Square", "vocabulary_swap")]
    assert perturb_answer("Liver", "open", "vqa", rng) == []  # nothing to swap with, nothing the lexicon knows
    assert perturb_answer("left lung", "open", "vqa", rng, ["left", "right lung"]) == [
        ("right lung", "laterality_swap"),
        ("right lung", "vocabulary_swap"),  # "left" is inside the answer: not a contradiction
    ]
    assert perturb_answer("yes", "closed", "vqa", rng, ["no"]) == [("no", "yes_no_flip")]


class Table(Judge):
    """Scores from a table keyed by the rejected answer; a missing key: the judge does not apply."""

    name = "table"
    cached = False

    def __init__(self, table: dict[str, float]):
        self.table = table

    def score(self, question, chosen, rejected):
        if rejected not in self.table:
            return not_applicable("not in the table")
        return Verdict(self.table[rejected], "from the table")


def test_the_panel_weights_by_the_judges_that_apply(tmp_path, monkeypatch):
    monkeypatch.setitem(JUDGES.entries, "table", Table)
    pairs = [
        make_pair(1, question="Is there a pneumothorax?", chosen="no", rejected="yes"),  # both judges apply
        make_pair(2, question="What color?", chosen="blue", rejected="red", answer_type="open"),  # only "b"
        make_pair(3, question="What shape?", chosen="circle", rejected="square", answer_type="open"),  # none
        make_pair(4, kind="visual", rejected_image="n.png", rejected="yes", provenance={"confidence": 0.3}),
    ]
    settings = ScoreConfig(
        judges=["findings", "b"],
        judge_options={"b": {"judge": "table", "table": {"yes": 0.4, "red": 0.6}}},
    )
    summary = score_pairs(pairs, tmp_path / "scored.jsonl", settings, show_progress=False)
    scored = {pair.id: pair for pair in read_jsonl(tmp_path / "scored.jsonl", PreferencePair)}
    assert scored["p1"].scores == {"findings": 0.9, "b": 0.4} and scored["p1"].clinical_score == pytest.approx(0.65)
    assert scored["p2"].scores == {"b": 0.6} and scored["p2"].provenance["not_applicable"] == ["findings"]
    # No judge applies to p3: it scores the mean of the text pairs they do apply to, (0.65 + 0.6) / 2.
    assert scored["p3"].scores == {} and scored["p3"].clinical_score == pytest.approx(0.625)
    assert scored["p4"].clinical_score == 0.3  # visual pairs: the localizer's confidence, as before
    assert (summary.not_applicable, summary.no_applicable_judge) == ({"findings": 2, "b": 1}, 1)
    # The one-judge variant (findings alone) applies to p1 only: p2 and p3 take p1's 0.9.
    one = reweight([scored[i] for i in ("p1", "p2", "p3")], settings, members=["findings"])
    assert [pair.clinical_score for pair in one] == pytest.approx([0.9, 0.9, 0.9])
    assert [pair.weight for pair in one] == pytest.approx([1.0, 1.0, 1.0])
