"""The claim verdict on hand-made results, and the HTML report rendered by headless Chromium."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from mmedpo.report.ablation import chain_verdict, verdict_lines
from mmedpo.report.html import load_results, write_report


def result(closed: list[int], bleu: float) -> dict:
    """A result whose closed questions q0..qN are right where `closed` has 1 ("yes" is the gold answer)."""
    predictions = [
        {
            "id": f"q{i}",
            "task": "vqa",
            "answer_type": "closed",
            "answer": "yes",
            "prediction": "yes" if ok else "no",
            "question": "Is there a nodule?",
        }
        for i, ok in enumerate(closed)
    ]
    return {"metrics": {"closed_accuracy": sum(closed) / len(closed), "bleu_1": bleu}, "predictions": predictions}


def test_chain_holds_only_when_every_step_is_strictly_better():
    results = {
        "mmedpo": result([1] * 18 + [0] * 2, 0.30),
        "dpo": result([1] * 12 + [0] * 8, 0.30),
        "base": result([1] * 10 + [0] * 10, 0.20),
    }
    chain = chain_verdict(results, ["mmedpo", "dpo", "base"], metrics=["closed_accuracy", "bleu_1"])
    verdicts = {v["metric"]: v for v in chain}
    closed = verdicts["closed_accuracy"]
    assert closed["holds"] is True
    assert closed["values"] == {"mmedpo": 0.9, "dpo": 0.6, "base": 0.5}
    first, second = closed["steps"]
    assert first["difference"] == pytest.approx(0.3) and first["significant"] is True  # 6 of 20 flips, all one way
    assert second["difference"] == pytest.approx(0.1) and second["significant"] is False  # 2 of 20: within noise
    assert second["low"] <= 0 <= second["high"]
    bleu = verdicts["bleu_1"]
    assert bleu["holds"] is False  # mmedpo ties dpo: a tie is not "better"
    lines = verdict_lines([closed, bleu])
    assert lines[0].startswith("closed_accuracy: mmedpo 0.9000 > dpo 0.6000 > base 0.5000: HOLDS")
    assert "within noise" in lines[0]
    assert lines[1].startswith("bleu_1: mmedpo 0.3000 = dpo 0.3000 > base 0.2000: does NOT hold")


def test_claim_naming_an_unevaluated_variant_is_an_error():
    with pytest.raises(ValueError, match="not evaluated"):
        chain_verdict({"base": result([1], 0.1)}, ["mmedpo", "base"])


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
    (run / "eval" / "base.json").write_text(json.dumps(result([1, 0, 0, 1], 0.2)))
    (run / "eval" / "mmedpo.json").write_text(json.dumps(result([1, 1, 0, 1], 0.3)))
    (run / "stages").mkdir()
    (run / "stages" / "train.mmedpo.json").write_text(json.dumps({"status": "done", "seconds": 12.5, "summary": {}}))
    (run / "config.yaml").write_text("seed: 0\nclaim: [mmedpo, base]\nablations: [[base, mmedpo]]\n")
    return run


def test_report_escapes_text_and_copies_its_images(tmp_path):
    index = write_report(fake_run(tmp_path))
    page = index.read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;nodule&lt;/b&gt;" in page
    assert "closed_accuracy: mmedpo 0.7500 &gt; base 0.5000: HOLDS" in page
    # An ablation chain is checked and shown like the claim, failing here.
    assert "Does base &gt; mmedpo hold?" in page
    assert "closed_accuracy: base 0.5000 &lt; mmedpo 0.7500: does NOT hold" in page
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
    assert rendered["rows"] == 3  # header, base, mmedpo
    assert rendered["gallery"] == 3  # image, region and noised image all decoded


def test_results_follow_the_configs_variant_order(tmp_path):
    (tmp_path / "eval").mkdir()
    for name in ("alpha", "base", "zeta", "extra"):
        (tmp_path / "eval" / f"{name}.json").write_text(json.dumps(result([1, 0], 0.1)))
    (tmp_path / "config.yaml").write_text("variants: {zeta: {}, alpha: {}}\n")
    assert list(load_results(tmp_path)) == ["base", "zeta", "alpha", "extra"]
