"""Evaluation metrics, evaluate_model (with a stand-in model) and the comparison table."""

from __future__ import annotations

import json
import sys
import types

import pytest
from PIL import Image
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from helpers import REPORT_PREDICTIONS, REPORT_REFERENCES
from mmedpo.evaluation.answers import closed_correct, exact_match, open_recall, parse_yes_no, token_f1
from mmedpo.evaluation.compare import compare_table
from mmedpo.evaluation.evaluate import evaluate_model, partial_path, rescore_file
from mmedpo.evaluation.intervals import paired_bootstrap
from mmedpo.evaluation.item_scores import result_statistics
from mmedpo.evaluation.metrics import closed_accuracy, report_metrics, score_predictions
from mmedpo.evaluation.text import normalize_report
from mmedpo.records import Sample


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nodule", None),  # a substring match would read "no"
        ("Not seen", None),  # negation without the word "no" is not guessed
        ("No.", "no"),
        ("Yes, there is", "yes"),
        ("unknown", None),
        ("There is no effusion", "no"),
        ("I cannot say: yes or maybe no", None),  # both words, not first: ambiguous
        ("No, yes", "no"),  # the first word decides
        ("", None),
    ],
)
def test_parse_yes_no_reads_words_not_substrings(text, expected):
    assert parse_yes_no(text) == expected


def test_closed_accuracy_keeps_wrong_and_unreadable_answers_in_the_denominator():
    predictions = ["Yes, there is", "nodule", "Not seen", "unknown", "No."]
    golds = ["yes", "no", "no", "yes", "no"]
    # Right: 1st and 5th. The three unreadable ones are wrong, not dropped: 2/5, not 2/2.
    assert closed_accuracy(predictions, golds) == pytest.approx(0.4)


def test_closed_choice_answers_match_whole_words():
    assert closed_correct("It is an MRI scan", "MRI")
    assert not closed_correct("fMRI", "MRI")
    assert closed_correct("left lung.", "Left lung")
    assert not closed_correct("lung left", "left lung")


def test_closed_accuracy_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="2 predictions for 1"):
        closed_accuracy(["yes", "no"], ["yes"])


def test_open_metrics_on_hand_cases():
    assert open_recall("The lower lobe", "left lower lobe") == pytest.approx(2 / 3)
    assert open_recall("Right-lung.", "right lung") == 1.0
    assert open_recall("lung", "lung, lung") == 0.5  # gold words count with multiplicity
    assert open_recall("heart", "left lower lobe") == 0.0
    # P = 2/2, R = 2/3 -> F1 = 2 * (2/3) / (5/3) = 0.8
    assert token_f1("lower lobe", "left lower lobe") == pytest.approx(0.8)
    assert token_f1("heart", "left lower lobe") == 0.0
    assert exact_match("Left lower lobe.", "left lower lobe") == 1.0
    assert exact_match("lower lobe", "left lower lobe") == 0.0
    with pytest.raises(ValueError, match="no words"):
        open_recall("anything", "?!")


def test_report_tokenisation_is_lower_case_without_punctuation():
    assert normalize_report("There's NO pleural-effusion.  Heart: normal!") == "theres no pleural effusion heart normal"


def test_bleu_and_rouge_by_hand():
    # 5 vs 5 tokens (brevity penalty 1). Unigrams 4/5 match, bigrams 2/4 ("there is", "pleural effusion").
    scores = report_metrics(["There is a pleural effusion."], ["there is no pleural effusion"])
    assert scores["bleu_1"] == pytest.approx(0.8, abs=1e-6)
    assert scores["bleu_2"] == pytest.approx((0.8 * 0.5) ** 0.5, abs=1e-6)
    assert scores["bleu_3"] < 1e-4  # no trigram matches
    # LCS("there is effusion", "there is no pleural effusion") = 3: P = 1, R = 3/5, beta = 1.2.
    rouge = report_metrics(["there is effusion"], ["there is no pleural effusion"])["rouge_l"]
    assert rouge == pytest.approx((1 + 1.44) * 1.0 * 0.6 / (0.6 + 1.44 * 1.0))
    assert "meteor" not in scores


def test_report_metrics_equal_pycocoevalcap_called_directly():
    predictions, references = REPORT_PREDICTIONS, REPORT_REFERENCES
    gts = {i: [normalize_report(text)] for i, text in enumerate(references)}
    res = {i: [normalize_report(text)] for i, text in enumerate(predictions)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = report_metrics(predictions, references)
    assert [scores[f"bleu_{n}"] for n in range(1, 5)] == pytest.approx(bleu)
    assert scores["rouge_l"] == pytest.approx(Rouge().compute_score(gts, res)[0])
    assert scores["cider"] == pytest.approx(Cider().compute_score(gts, res)[0])


def _vqa(id, answer, answer_type, **meta):
    return Sample(id=id, task="vqa", image="a.png", question="q?", answer=answer, answer_type=answer_type, meta=meta)


def test_score_predictions_by_part_and_breakdown():
    samples = [
        _vqa("c1", "yes", "closed", modality="CT"),
        _vqa("c2", "no", "closed", modality="CT"),
        _vqa("c3", "no", None, modality="MRI"),  # untyped bare yes/no counts as closed
        _vqa("o1", "left lower lobe", "open", modality="MRI"),
        _vqa("o2", "heart", "open"),
    ]
    predictions = ["yes", "nodule", "No.", "lower lobe", "Heart."]
    metrics = score_predictions(samples, predictions)
    assert (metrics["n_closed"], metrics["n_open"], metrics["n_report"]) == (3, 2, 0)
    assert metrics["closed_accuracy"] == pytest.approx(2 / 3)
    assert metrics["open_recall"] == pytest.approx((2 / 3 + 1) / 2)
    assert metrics["open_exact"] == pytest.approx(0.5)
    assert metrics["open_f1"] == pytest.approx((0.8 + 1) / 2)
    assert "bleu_1" not in metrics and "by_organ" not in metrics
    assert metrics["by_modality"]["CT"]["closed_accuracy"] == pytest.approx(0.5)
    assert metrics["by_modality"]["MRI"]["closed_accuracy"] == 1.0
    assert metrics["by_modality"]["MRI"]["open_recall"] == pytest.approx(2 / 3)
    assert "open_recall" not in metrics["by_modality"]["CT"]


def test_score_predictions_names_a_bad_record():
    with pytest.raises(ValueError, match="record o1"):
        score_predictions([_vqa("o1", "--", "open")], ["x"])


def test_paired_bootstrap_is_deterministic_for_a_seed():
    variant = [1, 1, 0, 1, 0, 1, 1, 0, 1, 1]
    baseline = [0, 1, 0, 0, 0, 1, 1, 0, 1, 0]
    first = paired_bootstrap(variant, baseline, seed=3, n_resamples=500)
    assert first == paired_bootstrap(variant, baseline, seed=3, n_resamples=500)
    assert first[0] == pytest.approx(0.3)  # 3 of 10 questions gained, none lost
    assert 0.0 <= first[1] < 0.3 < first[2] <= 0.6 + 1e-12
    # Continuous scores: another seed draws other resamples, so the interval moves.
    recalls = [0.1, 0.9, 0.35, 0.6, 0.0, 0.75, 0.2, 0.45]
    zeros = [0.0] * len(recalls)
    assert paired_bootstrap(recalls, zeros, seed=3) != paired_bootstrap(recalls, zeros, seed=4)
    # Every question gains exactly 0.5: every resample has mean 0.5.
    assert paired_bootstrap([1.0, 0.5], [0.5, 0.0]) == pytest.approx((0.5, 0.5, 0.5))


def _result(name, closed_predictions, open_prediction):
    samples = [_vqa("c1", "yes", "closed"), _vqa("c2", "no", "closed"), _vqa("o1", "left lower lobe", "open")]
    predictions = [*closed_predictions, open_prediction]
    rows = [
        {"id": s.id, "task": s.task, "answer_type": s.answer_type, "answer": s.answer, "prediction": p}
        for s, p in zip(samples, predictions)
    ]
    return {"model": name, "metrics": score_predictions(samples, predictions), "predictions": rows}


def test_compare_table_relative_improvement_and_intervals():
    results = {
        "dpo": _result("dpo", ["yes", "nodule"], "lower lobe"),  # closed 0.5, open recall 2/3
        "mmedpo": _result("mmedpo", ["yes", "no"], "left lower lobe"),  # closed 1.0, open recall 1.0
    }
    table = compare_table(results, baseline="dpo", seed=0, n_resamples=200)
    lines = table.strip().splitlines()
    assert lines[0] == (
        "| variant | closed_accuracy | closed_balanced_accuracy | closed_accuracy_yes | closed_accuracy_no "
        "| open_recall | open_exact | open_f1 | avg improvement vqa |"
    )
    assert lines[2] == "| dpo (baseline) | 0.5000 | 0.5000 | 1.0000 | 0.0000 | 0.6667 | 0.0000 | 0.8000 | – |"
    assert lines[3].startswith("| mmedpo | 1.0000 (+100.0%) | 1.0000 (+100.0%) | 1.0000 (+0.0%) | 1.0000 |")
    # The majority baseline: closed yes/no tie -> "no" for both; the open question's only answer.
    assert (
        lines[4]
        == "| majority answer (test split) | 0.5000 | 0.5000 | 0.0000 | 1.0000 | 1.0000 | 1.0000 | 1.0000 | – |"
    )
    # One open question: nothing to resample, so its interval is unbounded and it is within noise.
    assert "| mmedpo | open_recall | +0.3333 | [-inf, +inf] | 1 | within noise |" in table
    ids, statistics = result_statistics(results["dpo"], "closed_accuracy")
    assert ids == ["c1", "c2"] and statistics.tolist() == [[1.0, 0.0]]  # "nodule" is not "no"
    with pytest.raises(ValueError, match="baseline 'base'"):
        compare_table(results, baseline="base")


def test_compare_refuses_different_test_sets():
    other = _result("x", ["yes", "no"], "lobe")
    other["predictions"][0]["id"] = "c9"
    with pytest.raises(ValueError, match="closed_accuracy: the two results cover different items \\(e.g. c1, c9\\)"):
        compare_table({"base": _result("base", ["yes", "no"], "lobe"), "x": other}, baseline="base")


@pytest.fixture
def fake_vlm(monkeypatch):
    """A stand-in for mmedpo.models.vlm: answers "yes" to questions and a fixed report."""
    calls = {"load": 0, "generate": []}

    def load_vlm(path):
        calls["load"] += 1
        return "model", "processor"

    def generate_answers(model, processor, images, questions, max_new_tokens, batch_size, do_sample):
        assert not do_sample and all(image.mode == "RGB" for image in images)
        calls["generate"].append((len(questions), max_new_tokens))
        calls.setdefault("questions", []).extend(questions)
        return [["heart normal" if max_new_tokens == 64 else "Yes."] for _ in questions]

    module = types.ModuleType("mmedpo.models.vlm")
    module.load_vlm, module.generate_answers = load_vlm, generate_answers
    monkeypatch.setitem(sys.modules, "mmedpo.models.vlm", module)
    return calls


def test_evaluate_model_writes_predictions_and_resumes(tmp_path, fake_vlm):
    Image.new("L", (4, 4)).save(tmp_path / "a.png")
    samples = [
        _vqa("c1", "yes", "closed"),
        Sample(id="r1", task="report", image="a.png", question="Describe.", answer="Heart normal. Lungs clear."),
        _vqa("c2", "no", "closed"),
        _vqa("c3", "yes", "closed"),
    ]
    out = tmp_path / "eval" / "base.json"
    # A killed earlier run already answered c2.
    partial_path(out).parent.mkdir()
    partial_path(out).write_text(
        json.dumps(
            {
                "id": "c2",
                "task": "vqa",
                "question": "q?",
                "answer": "no",
                "prediction": "no",
                "answer_type": "closed",
                "prompt": "q?",
            }
        )
        + "\n"
    )
    result = evaluate_model(tmp_path / "model", samples, [tmp_path], out, batch_size=1)
    assert fake_vlm["load"] == 1
    assert sorted(fake_vlm["generate"]) == [(1, 8), (1, 8), (1, 64)]  # c2 not asked again
    assert [p["id"] for p in result["predictions"]] == ["c1", "r1", "c2", "c3"]
    assert result["metrics"]["closed_accuracy"] == 1.0
    assert result["metrics"]["rouge_l"] == pytest.approx((1 + 1.44) * 1.0 * 0.5 / (0.5 + 1.44))  # LCS 2 of 4
    assert json.loads(out.read_text()) == result
    assert not partial_path(out).exists()
    assert rescore_file(out) == result


def test_evaluate_model_refuses_duplicate_ids(tmp_path, fake_vlm):
    with pytest.raises(ValueError, match="sample c1: id occurs more than once"):
        evaluate_model(tmp_path, [_vqa("c1", "yes", "closed")] * 2, [tmp_path], tmp_path / "out.json")


def test_evaluate_model_uses_per_task_prompts_and_refuses_to_mix_them(tmp_path, fake_vlm):
    Image.new("L", (4, 4)).save(tmp_path / "a.png")
    samples = [_vqa("c1", "yes", "closed"), _vqa("c2", "no", "closed")]
    out = tmp_path / "eval" / "base.json"
    prompts = {"vqa": "{question} Answer yes or no.", "report": "unused {question}"}
    result = evaluate_model(tmp_path / "model", samples, [tmp_path], out, prompts=prompts, protocol="llava-med-v1.0.0")
    assert fake_vlm["questions"] == ["q? Answer yes or no."] * 2
    assert [p["prompt"] for p in result["predictions"]] == ["q? Answer yes or no."] * 2
    assert [p["question"] for p in result["predictions"]] == ["q?", "q?"]  # the record keeps the question
    assert result["metrics"]["protocol"] == "llava-med-v1.0.0"
    assert rescore_file(out)["metrics"]["protocol"] == "mmedpo"  # a stored file rescores under any protocol
    # A partial file answered with another prompt is not silently resumed.
    partial_path(out).write_text(json.dumps({**result["predictions"][0], "prompt": "q?"}) + "\n")
    with pytest.raises(ValueError, match="answered with the prompt 'q\\?'"):
        evaluate_model(tmp_path / "model", samples, [tmp_path], out, prompts=prompts)
    with pytest.raises(ValueError, match="no \\{question\\} placeholder"):
        evaluate_model(tmp_path / "model", samples, [tmp_path], tmp_path / "x.json", prompts={"vqa": "Answer."})
