"""The claim verdict on hand-made results, and the HTML report rendered by headless Chromium."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from mmedpo.report.ablation import chain_verdict, verdict_lines
from mmedpo.report.html import load_results, write_report


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


def fake_run(tmp_path: Path) -> Path:
    """A run folder with evaluations, a scored visual pair with its images, and stage states."""
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
    (run / "eval").mkdir()
    (run / "eval" / "base.json").write_text(json.dumps(result([1, 0, 0, 1])))
    (run / "eval" / "mmedpo.json").write_text(json.dumps(result([1, 1, 0, 1])))
    (run / "stages").mkdir()
    (run / "stages" / "train.mmedpo.json").write_text(json.dumps({"status": "done", "seconds": 12.5, "summary": {}}))
    (run / "config.yaml").write_text("seed: 0\nclaim: [mmedpo, base]\nablations: [[base, mmedpo]]\n")
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
    assert "<tr class='majority'><td>majority answer (test split)</td><td>1.0000</td>" in page
    for name in ("0-image.png", "0-region.png", "0-noised.png"):
        assert (index.parent / "img" / name).exists()
    assert "http://" not in page and "https://" not in page  # nothing from a CDN


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium_from_a_copied_folder(tmp_path):
    index = write_report(fake_run(tmp_path))
    copy = tmp_path / "copied-report"
    shutil.copytree(index.parent, copy)
    probe = copy / "probe.html"
    # The same page, plus a script that records what the browser actually rendered.
    probe.write_text(
        index.read_text().replace(
            "</body>",
            "<script>window.addEventListener('load', () => document.body.setAttribute('data-probe', JSON.stringify({"
            "rows: document.querySelectorAll('#results tr').length,"
            "gallery: [...document.querySelectorAll('#gallery img')].filter(i => i.naturalWidth > 0).length})));"
            "</script></body>",
        )
    )
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
    assert rendered["rows"] == 4  # header, base, mmedpo, the majority answer
    assert rendered["gallery"] == 3  # image, region and noised image all decoded


def test_results_follow_the_configs_variant_order(tmp_path):
    (tmp_path / "eval").mkdir()
    for name in ("alpha", "base", "zeta", "extra"):
        (tmp_path / "eval" / f"{name}.json").write_text(json.dumps(result([1, 0])))
    (tmp_path / "config.yaml").write_text("variants: {zeta: {}, alpha: {}}\n")
    assert list(load_results(tmp_path)) == ["base", "zeta", "alpha", "extra"]
