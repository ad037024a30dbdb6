"""The judge panel: aggregation, the cache, unscored pairs, visual pairs, agreement and the JSON export."""

from __future__ import annotations

import json

import pytest

from mmedpo.config import ScoreConfig
from mmedpo.data.convert import convert_pairs
from mmedpo.data.llava_json import read_mmedpo_json
from mmedpo.records import PreferencePair, read_jsonl
from mmedpo.registry import JUDGES
from mmedpo.scoring.cache import folder_fingerprint
from mmedpo.scoring.judges import Judge, Verdict
from mmedpo.scoring.panel import aggregate, score_pairs
from mmedpo.scoring.variant_pairs import reweight, variant_pairs


class TableJudge(Judge):
    """Scores a pair from a table keyed by its rejected answer; None in the table: cannot score."""

    name = "table"
    calls: list[str] = []  # every rejected answer asked, across instances

    def __init__(self, table: dict[str, float | None], model: str = "m", weights: str = ""):
        self.table = table
        self.model = model
        self.weights = weights

    def score(self, question, chosen, rejected):
        TableJudge.calls.append(rejected)
        value = self.table[rejected]
        return Verdict(value, "from the table" if value is not None else "unparseable reply")


@pytest.fixture(autouse=True)
def table_judge(monkeypatch):
    monkeypatch.setitem(JUDGES.entries, "table", TableJudge)
    monkeypatch.setattr(TableJudge, "calls", [])


def pair(pair_id: str, rejected: str, kind: str = "text", **provenance) -> PreferencePair:
    return PreferencePair(
        id=pair_id,
        sample_id="s" + pair_id,
        task="vqa",
        kind=kind,
        image="a.png",
        rejected_image="noised/a.png" if kind == "visual" else None,
        question="Is there a pneumothorax?",
        chosen="No",
        rejected=rejected,
        provenance=provenance,
    )


PAIRS = [pair("1", "Yes"), pair("2", "Maybe"), pair("3", "Yes, large", kind="visual", confidence=0.5)]
PANEL = {
    "judges": ["a", "b"],
    "judge_options": {
        "a": {"judge": "table", "model": "a", "table": {"Yes": 0.2, "Maybe": 0.8, "Yes, large": 0.3}},
        "b": {"judge": "table", "model": "b", "table": {"Yes": 0.6, "Maybe": 1.0, "Yes, large": 0.9}},
    },
}


def test_mean_panel_and_mean_one_weights(tmp_path):
    out = tmp_path / "pairs.scored.jsonl"
    summary = score_pairs(PAIRS, out, ScoreConfig(**PANEL), show_progress=False)
    scored = {p.id: p for p in read_jsonl(out, PreferencePair)}
    assert scored["1"].scores == {"a": 0.2, "b": 0.6}
    assert scored["3"].scores == {"localizer": 0.5}  # visual: the localizer alone, no judge asked
    assert scored["1"].provenance["score_reasons"] == {"a": "from the table", "b": "from the table"}
    # The panel's mean is each pair's clinical score; training weights are made per variant.
    assert [scored[i].clinical_score for i in "123"] == pytest.approx([0.4, 0.9, 0.5])
    assert all(scored[i].weight is None for i in "123")
    # Normalised within each kind: text raws 0.4, 0.9 (mean 0.65) -> raw / 0.65; the visual pair alone -> 1.
    weights = [p.weight for p in reweight(list(scored.values()), ScoreConfig(**PANEL))]
    assert weights == pytest.approx([0.4 / 0.65, 0.9 / 0.65, 1.0])
    assert (summary.pairs, summary.scored, summary.unscored, summary.by_kind) == (3, 3, 0, {"text": 2, "visual": 1})
    assert summary.mean_raw == pytest.approx(0.6)
    assert summary.judge_means == pytest.approx({"a": 0.5, "b": 0.8})
    assert sorted(TableJudge.calls) == ["Maybe", "Maybe", "Yes", "Yes"]
    assert json.loads(json.dumps(summary.as_dict()))  # the stage summary is valid JSON


def test_second_run_asks_no_judge(tmp_path):
    out = tmp_path / "pairs.scored.jsonl"
    score_pairs(PAIRS, out, ScoreConfig(**PANEL), show_progress=False)
    first = out.read_text()
    TableJudge.calls.clear()
    summary = score_pairs(PAIRS, out, ScoreConfig(**PANEL), show_progress=False)
    assert TableJudge.calls == []
    assert summary.cache == {"hits": 4, "misses": 0}
    assert out.read_text() == first
    assert len((tmp_path / "judge_cache.jsonl").read_text().splitlines()) == 4
    # Without the cache every judge is asked again.
    score_pairs(PAIRS, out, ScoreConfig(**PANEL, cache=False), show_progress=False)
    assert len(TableJudge.calls) == 4


def test_a_pair_a_judge_cannot_score_is_rejected_not_weighted(tmp_path):
    options = json.loads(json.dumps(PANEL["judge_options"]))
    options["b"]["table"]["Maybe"] = None
    options["a"]["table"]["Yes"] = 1.7
    settings = ScoreConfig(judges=["a", "b"], judge_options=options)
    out = tmp_path / "pairs.scored.jsonl"
    no_confidence = pair("4", "Yes, large", kind="visual")
    summary = score_pairs(PAIRS + [no_confidence], out, settings, show_progress=False)
    assert [p.id for p in read_jsonl(out, PreferencePair)] == ["3"]
    assert read_jsonl(out, PreferencePair)[0].clinical_score == 0.5  # the localizer's confidence
    rejects = [json.loads(line) for line in (tmp_path / "pairs.scored.rejects.jsonl").read_text().splitlines()]
    assert [(r["id"], r["reason"]) for r in rejects] == [
        ("1", "a: score 1.7 is not in [0, 1] (from the table)"),
        ("2", "b: unparseable reply"),
        ("4", "localizer: the visual pair has no confidence in its provenance"),
    ]
    assert (summary.pairs, summary.scored, summary.unscored) == (4, 1, 3)
    # Failures are not cached: the next run asks again for exactly those two verdicts.
    TableJudge.calls.clear()
    score_pairs(PAIRS, out, settings, show_progress=False)
    assert sorted(TableJudge.calls) == ["Maybe", "Yes"]


def test_visual_pairs_can_join_the_judges(tmp_path):
    settings = ScoreConfig(**PANEL, visual_mode="confidence+judges", aggregate="median")
    out = tmp_path / "pairs.scored.jsonl"
    score_pairs(PAIRS, out, settings, show_progress=False)
    visual = read_jsonl(out, PreferencePair)[2]
    assert visual.scores == {"a": 0.3, "b": 0.9, "localizer": 0.5}
    # raws: median(0.2, 0.6) = 0.4, median(0.8, 1.0) = 0.9, median(0.3, 0.9, 0.5) = 0.5
    assert visual.clinical_score == pytest.approx(0.5)
    assert reweight(read_jsonl(out, PreferencePair), settings)[2].weight == pytest.approx(1.0)  # alone in its kind


def test_aggregates_on_hand_computed_numbers():
    scores = {"a": 0.0, "b": 0.2, "c": 0.3, "d": 0.4, "e": 1.0}
    assert aggregate(scores, "mean") == pytest.approx(0.38)
    assert aggregate(scores, "median") == 0.3
    assert aggregate(scores, "trimmed-mean", trim=0.2) == pytest.approx(0.3)  # cuts 0.0 and 1.0
    assert aggregate(scores, "trimmed-mean", trim=0.1) == pytest.approx(0.38)  # int(0.5) = 0 cut
    weights = {"a": 0, "b": 0, "c": 0, "d": 1, "e": 3}
    assert aggregate(scores, "weighted", weights=weights) == pytest.approx((0.4 + 3.0) / 4)
    with pytest.raises(ValueError, match=r"no weight for \['e'\]"):
        aggregate(scores, "weighted", weights={"a": 1, "b": 1, "c": 1, "d": 1})
    with pytest.raises(ValueError, match="valid: mean, median, trimmed-mean, weighted"):
        aggregate(scores, "mode")


def test_weighted_panel_needs_every_weight():
    with pytest.raises(ValueError, match=r"needs score.weights for \['b'\]"):
        ScoreConfig(**PANEL, aggregate="weighted", weights={"a": 1.0})
    with pytest.raises(ValueError, match=r"needs score.weights for \['localizer'\]"):
        ScoreConfig(**PANEL, aggregate="weighted", weights={"a": 1.0, "b": 1.0}, visual_mode="confidence+judges")


def test_agreement_in_the_summary(tmp_path):
    summary = score_pairs(
        PAIRS[:2] + [pair("5", "Yes, large")], tmp_path / "s.jsonl", ScoreConfig(**PANEL), show_progress=False
    )
    # a = (0.2, 0.8, 0.3) and b = (0.6, 1.0, 0.9) both rank the pairs 1, 3, 2.
    assert summary.agreement["spearman"] == {"a vs b": pytest.approx(1.0)}
    # Interval alpha. Do = (2 * 0.4^2 + 2 * 0.2^2 + 2 * 0.6^2) / 6 = 1.12 / 6; the six values sum to 3.8
    # with squares 2.94: De = (2 * 6 * 2.94 - 2 * 3.8^2) / (6 * 5) = 6.4 / 30.  alpha = 1 - 0.875 = 0.125.
    assert summary.agreement["krippendorff_alpha"] == pytest.approx(0.125)
    assert summary.agreement["krippendorff_alpha_by_pair"] == {"a vs b": pytest.approx(0.125)}
    assert summary.agreement["pairs"] == 3 and not summary.agreement["disagree"]


def test_a_panel_that_disagrees_is_flagged_and_logged(tmp_path, caplog):
    options = json.loads(json.dumps(PANEL["judge_options"]))
    options["b"]["table"] = {"Yes": 0.9, "Maybe": 0.1, "Yes, large": 0.5}  # b ranks the pairs the other way
    options["c"] = {"judge": "table", "model": "c", "table": {"Yes": 0.3, "Maybe": 0.7, "Yes, large": 0.4}}
    texts = PAIRS[:2] + [pair("5", "Yes, large")]
    with caplog.at_level("WARNING", logger="mmedpo.scoring.panel"):
        summary = score_pairs(texts, tmp_path / "s.jsonl", ScoreConfig(judges=["a", "b", "c"], judge_options=options))
    agreement = summary.agreement
    assert agreement["disagree"] and agreement["krippendorff_alpha"] <= 0
    by_pair = agreement["krippendorff_alpha_by_pair"]
    assert by_pair["a vs c"] > 0.5 and by_pair["a vs b"] < 0 and by_pair["b vs c"] < 0
    assert "the judges a, b, c disagree: Krippendorff's alpha" in caplog.text and agreement["warning"] in caplog.text


def test_visual_pairs_repeating_a_text_pair_are_marked(tmp_path):
    twin = pair("1", "yes.", kind="visual", confidence=0.5)  # sample s1, rejected "Yes" as the text pair's
    other = pair("2", "No, small", kind="visual", confidence=0.5)
    summary = score_pairs(PAIRS[:2] + [twin, other], tmp_path / "s.jsonl", ScoreConfig(**PANEL), show_progress=False)
    scored = {p.id + p.kind: p for p in read_jsonl(tmp_path / "s.jsonl", PreferencePair)}
    assert scored["1visual"].provenance["duplicates"] == "1" and "duplicates" not in scored["2visual"].provenance
    assert "duplicates" not in scored["1text"].provenance and summary.visual_duplicates == 1


def test_weights_are_normalised_within_each_kind_and_the_kind_balance_is_a_setting():
    def scored(pair_id, kind, score):
        extra = {"rejected_image": "n.png"} if kind == "visual" else {}
        scores = {"a": score} if kind == "text" else {"localizer": score}
        return PreferencePair(id=pair_id, sample_id=pair_id, task="vqa", kind=kind, image="a.png", question="q",
                              chosen="no", rejected="yes", scores=scores, **extra)  # fmt: skip

    pairs = [scored("t1", "text", 0.2), scored("t2", "text", 0.6), scored("t3", "text", 0.4)]
    pairs += [scored("v1", "visual", 0.9), scored("v2", "visual", 0.3)]
    settings = ScoreConfig(judges=["a"])
    # Each kind averages 1: text 0.2, 0.6, 0.4 / 0.4; visual 0.9, 0.3 / 0.6. Shares: 3/5 and 2/5, the pairs'.
    weights = [p.weight for p in variant_pairs(pairs, settings, ["text", "visual"])]
    assert weights == pytest.approx([0.5, 1.5, 1.0, 1.5, 0.5])
    # 'equal': each kind half of the total 5 -> text x 2.5/3, visual x 2.5/2.
    equal = [p.weight for p in variant_pairs(pairs, settings, ["text", "visual"], kind_balance="equal")]
    assert equal == pytest.approx([0.5 * 2.5 / 3, 1.5 * 2.5 / 3, 2.5 / 3, 1.5 * 1.25, 0.5 * 1.25])
    # {text: 1, visual: 3}: the visual pairs carry 3/4 of the total 5, i.e. 3.75 over 2 pairs.
    tilted = variant_pairs(pairs, settings, ["text", "visual"], kind_balance={"text": 1, "visual": 3})
    assert sum(p.weight for p in tilted if p.kind == "visual") == pytest.approx(3.75)
    assert sum(p.weight for p in tilted) == pytest.approx(5.0)
    # Unweighted: 1 everywhere, unless the kinds are balanced otherwise.
    assert [p.weight for p in variant_pairs(pairs, settings, ["text", "visual"], weighted=False)] == [1.0] * 5
    plain_equal = variant_pairs(pairs, settings, ["text", "visual"], weighted=False, kind_balance="equal")
    assert [p.weight for p in plain_equal] == pytest.approx([2.5 / 3] * 3 + [1.25] * 2)


def test_bad_panel_members_are_named(tmp_path):
    with pytest.raises(ValueError, match="panel member 'gpt4o': unknown judge 'gpt4o'; valid: findings, chat"):
        score_pairs(PAIRS, tmp_path / "s.jsonl", ScoreConfig(judges=["gpt4o"]), show_progress=False)
    bad = ScoreConfig(judges=["a"], judge_options={"a": {"judge": "table", "table": {}, "colour": "red"}})
    with pytest.raises(ValueError, match=r"panel member 'a': bad judge_options"):
        score_pairs(PAIRS, tmp_path / "s.jsonl", bad, show_progress=False)


def test_scored_pairs_export_their_clinical_scores_as_weighted_score(tmp_path):
    out = tmp_path / "pairs.scored.jsonl"
    score_pairs(PAIRS, out, ScoreConfig(**PANEL), show_progress=False)
    assert convert_pairs(out, tmp_path / "mmedpo.json")["accepted"] == 3
    records = json.loads((tmp_path / "mmedpo.json").read_text())
    # The panel's scores (0.4, 0.9, 0.5) in [0, 1], as in the released files; never a training weight.
    assert [r["weighted_score"] for r in records] == pytest.approx([0.4, 0.9, 0.5])
    assert records[2]["rejected_image"] == "noised/a.png"
    back = read_mmedpo_json(tmp_path / "mmedpo.json", task="vqa")
    assert not back.rejects and [p.clinical_score for p in back.pairs] == pytest.approx([0.4, 0.9, 0.5])
    assert all(p.weight is None for p in back.pairs)


def test_reweight_by_one_judge_or_the_panel_from_the_stored_scores(tmp_path):
    out = tmp_path / "pairs.scored.jsonl"
    score_pairs(PAIRS, out, ScoreConfig(**PANEL), show_progress=False)
    scored = read_jsonl(out, PreferencePair)
    TableJudge.calls.clear()
    # Judge a alone: raws 0.2, 0.8 and the visual pair's confidence 0.5 (mean 0.5).
    one = reweight(scored, ScoreConfig(**PANEL), ["a"])
    assert [p.weight for p in one] == pytest.approx([0.4, 1.6, 1.0])
    assert [p.clinical_score for p in one] == pytest.approx([0.2, 0.8, 0.5])  # judge a's own scores
    assert TableJudge.calls == []  # nothing is judged again
    # The whole panel over the text pairs only: raws 0.4, 0.9, normalised over these two (mean 0.65).
    panel = reweight(scored[:2], ScoreConfig(**PANEL))
    assert [p.weight for p in panel] == pytest.approx([0.4 / 0.65, 0.9 / 0.65])
    # Under confidence+judges, visual pairs follow the kept judges too: median(0.3, 0.5) = 0.4 and
    # median(0.1, 0.3) = 0.2 (mean 0.3); with the whole panel median(0.3, 0.9, 0.5) = 0.5 and
    # median(0.1, 0.1, 0.3) = 0.1 (mean 0.3). The text pair, alone in its kind, weighs 1.
    settings = ScoreConfig(**PANEL, visual_mode="confidence+judges", aggregate="median")
    both = [
        scored[2].model_copy(update={"scores": {"a": 0.3, "b": 0.9, "localizer": 0.5}}),
        scored[2].model_copy(update={"id": "3b", "scores": {"a": 0.1, "b": 0.1, "localizer": 0.3}}),
        scored[0],
    ]
    assert [p.weight for p in reweight(both, settings, ["a"])] == pytest.approx([0.4 / 0.3, 0.2 / 0.3, 1.0])
    assert [p.weight for p in reweight(both, settings)] == pytest.approx([0.5 / 0.3, 0.1 / 0.3, 1.0])


def test_reweight_names_an_unknown_judge_and_a_missing_score():
    with pytest.raises(ValueError, match=r"judges \['c'\] are not members of the panel \['a', 'b'\]"):
        reweight(PAIRS, ScoreConfig(**PANEL), ["c"])
    with pytest.raises(ValueError, match=r"pair 1: no score from \['a'\]"):
        reweight(PAIRS, ScoreConfig(**PANEL), ["a"])


def test_new_local_weights_under_the_same_path_are_judged_again(tmp_path):
    folder = tmp_path / "judge-model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"old weights")
    before = folder_fingerprint(folder)
    assert len(before) == 16 and folder_fingerprint(folder) == before and folder_fingerprint(tmp_path / "no") == ""
    (folder / "model.safetensors").write_bytes(b"new weights, longer")
    after = folder_fingerprint(folder)
    assert after != before
    out = tmp_path / "pairs.scored.jsonl"
    for weights, asked in ((before, 2), (before, 0), (after, 2)):
        options = {
            "a": {"judge": "table", "model": str(folder), "weights": weights, "table": {"Yes": 0.2, "Maybe": 0.8}}
        }
        TableJudge.calls.clear()
        score_pairs(PAIRS[:2], out, ScoreConfig(judges=["a"], judge_options=options), show_progress=False)
        assert len(TableJudge.calls) == asked


def test_held_out_pairs_are_a_seeded_sample_with_each_kind_its_share():
    from mmedpo.scoring.variant_pairs import sample_pairs

    pairs = [pair(str(i), "Yes") for i in range(30)] + [pair(f"v{i}", "Yes", kind="visual") for i in range(10)]
    kept = sample_pairs(pairs, 8, seed=0)
    assert len(kept) == 8 and sum(p.kind == "visual" for p in kept) == 2  # 10 of 40 are visual: a quarter
    assert [p.id for p in sample_pairs(list(reversed(pairs)), 8, seed=0)] == [p.id for p in reversed(kept)]
    assert {p.id for p in sample_pairs(pairs, 8, seed=1)} != {p.id for p in kept}
    assert sample_pairs(pairs, None, seed=0) == pairs and sample_pairs(pairs, 100, seed=0) == pairs
