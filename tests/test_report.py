"""The claim verdict on hand-made results, and the HTML report rendered by headless Chromium."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from mmedpo.report.ablation import chain_verdict, verdict_lines
from mmedpo.report.html import load_results, write_report
from mmedpo.report.pairs import pair_counts


def result(closed: list[int], reports: list[str] | None = None) -> dict:
    """A result whose closed questions q0..qN are right where `closed` has 1 ("yes" is the gold answer).

    `reports`, when given, are its generated reports r0..rM against REFERENCES.
    """
    from mmedpo.evaluation.metrics import score_rows

    predictions = [
        {
            "id": f"q{i:02d}",
            "task": "vqa",
            "answer_type": "closed",
            "answer": "yes",
            "prediction": "yes" if ok else "no",
            "question": "Is there a nodule?",
        }
        for i, ok in enumerate(closed)
    ]
    predictions += [
        {
            "id": f"r{i:02d}",
            "task": "report",
            "answer_type": None,
            "answer": REFERENCES[i],
            "prediction": text,
            "question": "Describe.",
        }
        for i, text in enumerate(reports or [])
    ]
    return {"metrics": score_rows(predictions), "predictions": predictions}


REFERENCES = [f"small {side} pleural effusion, no pneumothorax." for side in ("left", "right")] * 10


def test_a_step_whose_interval_spans_zero_is_within_noise_not_holds():
    # The case: every point estimate is ordered, but dpo - base (3 gained, 2 lost of 40) is noise. mmedpo gains
    # 12 of dpo's 40 questions and loses none: better. So the chain is WITHIN NOISE, not HOLDS.
    results = {
        "mmedpo": result([1] * 33 + [0] * 7),
        "dpo": result([1] * 18 + [0] * 2 + [1] * 3 + [0] * 17),
        "base": result([1] * 20 + [0] * 20),
    }
    (closed,) = chain_verdict(results, ["mmedpo", "dpo", "base"], metrics=["closed_accuracy"])
    assert closed["values"] == {"mmedpo": 0.825, "dpo": 0.525, "base": 0.5}
    first, second = closed["steps"]
    assert (first["upper"], first["lower"], first["verdict"]) == ("mmedpo", "dpo", "better")
    assert first["difference"] == pytest.approx(0.3) and first["low"] > 0
    assert second["difference"] == pytest.approx(0.025) and second["low"] <= 0 <= second["high"]
    assert second["verdict"] == "within noise"
    assert (closed["status"], closed["holds"]) == ("within noise", False)
    (line,) = verdict_lines([closed])
    assert line.startswith("closed_accuracy: mmedpo 0.8250 > dpo 0.5250 > base 0.5000: WITHIN NOISE (")
    assert "mmedpo - dpo +0.3000 [95% CI +0.1" in line and "] better; dpo - base +0.0250 [95% CI -0.0" in line


def test_chain_holds_only_when_every_step_is_better_and_fails_when_one_is_worse():
    results = {
        "mmedpo": result([1] * 40),
        "dpo": result([1] * 30 + [0] * 10),
        "base": result([1] * 20 + [0] * 20),
    }
    (holds,) = chain_verdict(results, ["mmedpo", "dpo", "base"], metrics=["closed_accuracy"])
    assert [step["verdict"] for step in holds["steps"]] == ["better", "better"] and holds["status"] == "holds"
    (fails,) = chain_verdict(results, ["dpo", "mmedpo", "base"], metrics=["closed_accuracy"])
    assert [step["verdict"] for step in fails["steps"]] == ["worse", "better"] and fails["status"] == "fails"
    assert verdict_lines([fails])[0].startswith("closed_accuracy: dpo 0.7500 < mmedpo 1.0000 > base 0.5000: FAILS")


def test_report_metrics_get_intervals_too():
    # 20 reports: "good" copies each reference, "bad" names the wrong side and drops the negation's object.
    good = list(REFERENCES)
    bad = [text.replace("left", "right").replace("pneumothorax", "") for text in REFERENCES]
    results = {"good": result([1, 0], good), "bad": result([1, 0], bad)}
    verdicts = {v["metric"]: v for v in chain_verdict(results, ["good", "bad"], metrics=["bleu_4", "rouge_l"])}
    assert verdicts["bleu_4"]["status"] == verdicts["rouge_l"]["status"] == "holds"
    assert verdicts["bleu_4"]["steps"][0]["difference"] == pytest.approx(
        results["good"]["metrics"]["bleu_4"] - results["bad"]["metrics"]["bleu_4"]
    )
    # METEOR has no per-item statistics: no interval, so its chain is never said to hold.
    for value, name in ((0.5, "good"), (0.1, "bad")):
        results[name]["metrics"]["meteor"] = value
    (meteor,) = chain_verdict(results, ["good", "bad"], metrics=["meteor"])
    assert "verdict" not in meteor["steps"][0] and meteor["status"] == "within noise"
    assert verdict_lines([meteor]) == [
        "meteor: good 0.5000 > bad 0.1000: WITHIN NOISE (good - bad +0.4000 no interval)"
    ]


def test_claim_naming_an_unevaluated_variant_is_an_error():
    with pytest.raises(ValueError, match="not evaluated"):
        chain_verdict({"base": result([1])}, ["mmedpo", "base"])


VARIANTS = ["mmedpo", "dpo-text-visual", "dpo-text", "mmedpo-one-judge", "mmedpo-whole-image"]


def fake_run(tmp_path: Path) -> Path:
    """A run folder like the demo's: five variants evaluated on questions and reports, one trained with a log,
    a scored visual pair with its images, the variant's pairs (all visual, all weighing the same), judge agreement
    and stage states (the report's own still "running", as while the report stage writes the page)."""
    from PIL import Image

    from mmedpo.records import PreferencePair, write_jsonl

    run = tmp_path / "run"
    (run / "images" / "noised").mkdir(parents=True)
    Image.new("L", (32, 32), 90).save(run / "images" / "a.png")
    Image.new("L", (32, 32), 200).save(run / "images" / "noised" / "a.png")
    Image.new("L", (32, 32), 255).save(run / "images" / "noised" / "a_mask.png")
    pair = PreferencePair(
        id="p1",
        sample_id="s1",
        task="vqa",
        kind="visual",
        image="a.png",
        rejected_image="noised/a.png",
        question="Is there a <b>nodule</b>?",
        chosen="yes",
        rejected="no <script>alert(1)</script>",
        answer_type="closed",
        provenance={"mask": "noised/a_mask.png", "confidence": 0.9},
        scores={"localizer": 0.9},
        weight=1.0,
    )
    write_jsonl(run / "pairs.scored.jsonl", [pair])
    write_jsonl(run / "pairs.mmedpo.jsonl", [pair.model_copy(update={"id": f"p{i}", "weight": 1.36}) for i in (1, 2)])
    (run / "eval").mkdir()
    reports = [text.replace("left", "right") if i % 3 else text for i, text in enumerate(REFERENCES)]
    for index, name in enumerate(["base", *VARIANTS]):
        closed = [1, 0, 0, 1] if name == "base" else [1, 1, (index + 1) % 2, 1]  # mmedpo gains one of 4
        evaluated = result(closed, reports[index : 10 + index])
        shares = {"visual_changed_noised": 0.1 * index, "visual_drop_noised": 0.05, "visual_drop_blank": 0.02}
        evaluated["metrics"].update(shares)
        (run / "eval" / f"{name}.json").write_text(json.dumps(evaluated))
    (run / "models" / "mmedpo").mkdir(parents=True)
    history = [
        {"loss": 0.69 - 0.1 * step, "rewards/margins": 0.05 * step, "rewards/margins/visual": 0.07 * step,
         "rewards/accuracies": 0.5 + 0.1 * step, "weight/mean": 1.0, "step": step}
        for step in (1, 2, 3)
    ] + [{"train_loss": 0.5, "step": 3}]  # fmt: skip
    heldout = {"pairs": 6, "reward_accuracy": 0.8333, "reward_accuracy_visual": 0.8333, "reward_margin": 0.12}
    train_log = {"optimizer_steps": 3, "pairs": 2, "pairs_by_kind": {"visual": 2}, "epochs": 1.5, "heldout": heldout,
                 "log_history": history}  # fmt: skip
    (run / "models" / "mmedpo" / "train_log.json").write_text(json.dumps(train_log))
    (run / "stages").mkdir()
    agreement = {"spearman": {"findings vs embedding": -0.017}, "krippendorff_alpha": -0.377}
    states = {
        "score": {"status": "done", "seconds": 3.0, "summary": {"agreement": agreement}},
        "train.mmedpo": {"status": "done", "seconds": 12.5, "summary": {}},
        "report": {"status": "running", "seconds": 0, "summary": {}},
    }
    for name, state in states.items():
        (run / "stages" / f"{name}.json").write_text(json.dumps(state))
    config = {
        "seed": 0,
        "claim": ["mmedpo", "base"],
        "ablations": [["base", "mmedpo"]],
        "variants": dict.fromkeys(VARIANTS, {}),
    }
    (run / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    return run


def test_report_escapes_text_and_copies_its_images(tmp_path):
    index = write_report(fake_run(tmp_path))
    page = index.read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;nodule&lt;/b&gt;" in page
    # One of 4 questions gained: the point estimate is higher, the interval [0, 0.75] is not above 0.
    assert (
        "<li class='noise'>closed_accuracy: mmedpo 0.7500 &gt; base 0.5000: WITHIN NOISE "
        "(mmedpo - base +0.2500 [95% CI +0.0000, +0.7500] within noise)</li>"
    ) in page
    # An ablation chain is checked and shown like the claim.
    assert "Does base &gt; mmedpo hold?" in page
    assert "<li class='noise'>closed_accuracy: base 0.5000 &lt; mmedpo 0.7500: WITHIN NOISE" in page
    assert "<small class='noise'>Δ +0.250 [+0.000, +0.750] within noise</small>" in page
    for name in ("0-image.png", "0-region.png", "0-noised.png"):
        assert (index.parent / "img" / name).exists()
    assert "<figcaption>noise region</figcaption>" in page and "<figcaption>noised (rejected)</figcaption>" in page
    assert "http://" not in page and "https://" not in page  # nothing from a CDN


def test_results_are_a_row_per_metric_and_a_column_per_variant(tmp_path):
    page = write_report(fake_run(tmp_path)).read_text()
    columns = "".join(f"<th>{name}</th>" for name in ["base", *VARIANTS])
    assert f"<tr><th>metric</th>{columns}<th>majority answer (test split)</th></tr>" in page
    # Every gold answer is "yes": the majority answer is always right.
    assert "<td class='majority'>1.0000</td></tr>" in page.split("<tr><td>closed_accuracy</td>", 1)[1]
    assert "<tr class='group'><th colspan='8'>report</th></tr>" in page


def test_report_shows_training_agreement_and_stages_as_tables(tmp_path):
    index = write_report(fake_run(tmp_path))
    page = index.read_text()
    training = page.split("<table id='training'>", 1)[1].split("</table>", 1)[0]
    assert "<td>mmedpo</td><td>2 (visual 2)</td><td>3</td><td>1.50</td><td>6</td><td>0.833</td><td>-</td>" in training
    # A curve per metric logged: loss, margins (all and visual), accuracy, weight mean; none for what was not logged.
    for name in ("curves_loss.png", "curves_margin.png", "curves_accuracy.png", "curves_weight.png"):
        assert (index.parent / name).exists() and f"src='{name}'" in page
    assert "<tr><th>Spearman ρ</th><th>findings</th><th>embedding</th></tr>" in page
    assert "<tr><td>findings</td><td>1</td><td>-0.017</td></tr>" in page
    assert "<b id='alpha'>-0.377</b>" in page and '"spearman"' not in page  # no raw JSON
    assert "All 2 visual pairs weigh 1.36" in page
    stages = page.split("<table id='timings'>", 1)[1]
    assert "running" not in stages and "<td>train:mmedpo</td><td>done</td>" in stages
    assert "<tr><td>report</td><td>writing this page</td><td>-</td><td></td></tr>" in stages


def test_report_counts_each_class_of_visual_pair_and_a_repeated_pair_once(tmp_path):
    from mmedpo.records import PreferencePair

    def pair(pair_id, kind="visual", rejected_text=None, **provenance):
        extra = (
            {"rejected_image": "n.png", "region": "lesion", "rejected_text": rejected_text} if kind == "visual" else {}
        )
        return PreferencePair(id=pair_id, sample_id=pair_id[:2], task="vqa", kind=kind, image="a.png", question="q",
                              chosen="no", rejected="yes", provenance=provenance, **extra)  # fmt: skip

    pairs = [pair("s1-text", "text"), pair("s2-text", "text"), pair("s3-text", "text")]
    pairs += [
        pair("s1-visual", error="lesion-neglect", lesion_found=True, duplicates="s1-text"),
        pair("s4-visual", error="wrong-on-clean", lesion_found=False),
        pair("s5-visual", error="lesion-neglect", lesion_found=False),
        pair("s4-visual-gold", rejected_text="gold", lesion_found=False),
    ]
    counts = pair_counts(pairs)
    assert counts["text"] == {"pairs": 3}
    assert counts["visual"] == {
        "pairs": 3, "lesion-neglect": 2, "wrong-on-clean": 1, "no lesion found": 2, "repeats a text pair": 1
    }  # fmt: skip
    assert counts["visual-gold"] == {"pairs": 1, "no lesion found": 1}
    assert counts["text + visual, distinct"] == {"pairs": 5}  # s1's visual pair repeats its text pair
    run = fake_run(tmp_path)
    from mmedpo.records import write_jsonl

    write_jsonl(run / "pairs.scored.jsonl", pairs)
    warning = {"krippendorff_alpha": -0.38, "disagree": True, "warning": "the judges a, b disagree"}
    (run / "stages" / "score.json").write_text(json.dumps({"status": "done", "summary": {"agreement": warning}}))
    page = write_report(run).read_text()
    assert "<tr><td>visual</td><td>3</td><td>2</td><td>1</td><td>2</td><td>1</td></tr>" in page
    assert "<tr><td>text + visual, distinct</td><td>5</td><td>-</td>" in page
    assert "<p class='worse' id='panel-warning'>the judges a, b disagree</p>" in page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# What the browser rendered: the page's width against a 1400-pixel window, the rows of the results table, the
# gallery's images and the plots that decoded.
PROBE = (
    "<script>window.addEventListener('load', () => document.body.setAttribute('data-probe', JSON.stringify({"
    "scrollWidth: document.documentElement.scrollWidth, clientWidth: document.documentElement.clientWidth,"
    "rows: document.querySelectorAll('#results tr').length,"
    "gallery: [...document.querySelectorAll('#gallery img')].filter(i => i.naturalWidth > 0).length,"
    "plots: [...document.querySelectorAll('img.plot')].filter(i => i.naturalWidth > 0).length,"
    "widest: Math.max(...[...document.querySelectorAll('img.plot, table')].map(e => e.getBoundingClientRect().right))"
    "})));</script></body>"
)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium_from_a_copied_folder_without_sideways_scrolling(tmp_path):
    index = write_report(fake_run(tmp_path))
    copy = tmp_path / "copied-report"
    shutil.copytree(index.parent, copy)
    probe = copy / "probe.html"
    probe.write_text(index.read_text().replace("</body>", PROBE))
    output = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1400,900",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    probe_json = output.split('data-probe="', 1)[1].split('"', 1)[0].replace("&quot;", '"')
    rendered = json.loads(probe_json)
    assert rendered["clientWidth"] == 1400
    # No horizontal scroll at 1400 px with six variants and 15 metrics (a column per metric overflowed).
    assert rendered["scrollWidth"] <= 1400 and rendered["widest"] <= 1400
    table = index.read_text().split("<table id='results'>", 1)[1].split("</table>", 1)[0]
    assert rendered["rows"] == table.count("<tr") == 1 + 15 + 5  # a header, 15 metrics, 5 groups
    assert rendered["gallery"] == 3  # image, region and noised image all decoded
    assert rendered["plots"] == 4 + 4 + 1  # metric groups, training curves, the weight histogram


def test_results_follow_the_configs_variant_order(tmp_path):
    (tmp_path / "eval").mkdir()
    for name in ("alpha", "base", "zeta", "extra"):
        (tmp_path / "eval" / f"{name}.json").write_text(json.dumps(result([1, 0])))
    (tmp_path / "config.yaml").write_text("variants: {zeta: {}, alpha: {}}\n")
    assert list(load_results(tmp_path)) == ["base", "zeta", "alpha", "extra"]


def test_only_a_kind_whose_weights_are_all_equal_gets_a_note():
    from mmedpo.report.figures import equal_weight_notes

    notes = equal_weight_notes({"text": [0.5, 1.0, 1.5], "visual": [1.36, 1.36], "alone": [2.0]})
    assert notes == ["All 2 visual pairs weigh 1.36: their weights do not tell them apart."]


def test_report_shows_the_share_of_test_answers_each_variant_changed(tmp_path):
    run = fake_run(tmp_path)
    # An SFT control (known by its loss_type, not its name) that answers as the base does but on q00.
    control = json.loads((run / "eval" / "base.json").read_text())
    first = next(row for row in control["predictions"] if row["id"] == "q00")
    first["prediction"] = "no" if first["prediction"].lower().startswith("yes") else "yes"
    (run / "eval" / "sft.json").write_text(json.dumps(control))
    config = json.loads((run / "config.yaml").read_text())
    config["variants"]["sft"] = {"loss_type": "sft"}
    (run / "config.yaml").write_text(json.dumps(config))
    page = write_report(run).read_text()
    table = page.split("<table id='changed'>", 1)[1].split("</table>", 1)[0]
    assert "<tr><th>test answers changed</th><th>vs base</th><th>vs sft</th></tr>" in table
    # mmedpo against base: closed q01 (1 of 4), and of the reports r00-r09 (mmedpo writes the base's next
    # report: L R R R R R L R R R against R R R R R L R R R R) r00, r05 and r06: 4 of 14 items.
    # Against sft, q00 as well: 5 of 14; sft against base: q00 alone, 1 of 14.
    assert "<tr><td>mmedpo</td><td>28.6%</td><td>35.7%</td></tr>" in table
    assert "<tr><td>sft</td><td>7.1%</td><td>-</td></tr>" in table


def test_the_sft_control_is_known_by_its_loss_type_not_its_name():
    from mmedpo.report.ablation import control_of

    assert control_of({"variants": {"dpo": {}, "supervised": {"loss_type": "sft"}}}) == "supervised"
    assert control_of({"variants": {"sft": {}, "dpo": {"loss_type": "sigmoid"}}}) is None
    # A variant keeps the train section's loss unless it sets its own.
    assert control_of({"train": {"loss_type": "sft"}, "variants": {"dpo": {"loss_type": "sigmoid"}, "s": {}}}) == "s"
