"""The target model behind the loopback OpenAI-compatible server (tests/vlm_server.py), stage by stage:
the same pairs and metrics as in process, and failed requests that end a stage incomplete, never as data."""

from __future__ import annotations

import json
import shutil

import pytest

from mmedpo.config import CurateVisualConfig, EvalConfig, load_config
from mmedpo.curation.visual import curate_visual_regions
from mmedpo.curation.visual_pairing import KEPT
from mmedpo.errors import StageIncomplete
from mmedpo.evaluation.suite import evaluate_run_model
from mmedpo.layout import RunLayout
from mmedpo.llm import chat
from mmedpo.llm.endpoint import ChatConfig
from mmedpo.models.answerer import make_answerer
from mmedpo.pipeline import run_pipeline
from mmedpo.synth.synthmed import generate_synthmed
from test_pipeline import SMALL
from vlm_server import VLMServer


@pytest.fixture
def no_waits(monkeypatch):
    async def record(seconds):
        pass

    monkeypatch.setattr(chat, "wait_before_retry", record)


def served(url: str, model: str) -> str:
    return f"{{base_url: '{url}', model: {model}, api_key: EMPTY, concurrency: 16}}"


@pytest.fixture(scope="module")
def both_runs(tmp_path_factory):
    """The SMALL config run in process, and again from the same samples and base model against the server."""
    root = tmp_path_factory.mktemp("runs")
    local = load_config(None, SMALL + ["name=local", f"runs_dir={root}"])
    run_pipeline(local, show_progress=False)
    here, there = RunLayout.of(local), RunLayout(root / "served")
    for part in ("samples.jsonl", "samples.rejects.jsonl", "images/synthmed", "models/base", "stages/samples.json",
                 "stages/base.json"):  # fmt: skip
        copy = shutil.copytree if (here.dir / part).is_dir() else shutil.copyfile
        (there.dir / part).parent.mkdir(parents=True, exist_ok=True)
        copy(here.dir / part, there.dir / part)
    with VLMServer({"base": there.model("base"), "mmedpo": there.model("mmedpo")}) as server:
        endpoint = [
            f"model.endpoint={served(server.url, 'base')}",
            f"eval.endpoints={{mmedpo: {served(server.url, 'mmedpo')}}}",
        ]
        config = load_config(None, SMALL + ["name=served", f"runs_dir={root}", *endpoint])
        results = run_pipeline(config, show_progress=False)
        requests = list(server.requests)
    return here, there, results, requests


def records(path, target_model: str | None = None) -> list[dict]:
    """The JSONL records, with the target generator's model (a folder, or a served name) set to `target_model`."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        if row.get("provenance", {}).get("generator") == "target":
            row["provenance"]["model"] = target_model
    return rows


@pytest.mark.slow
def test_a_served_target_model_gives_the_pairs_and_metrics_of_the_in_process_run(both_runs):
    here, there, results, requests = both_runs
    assert [r.name for r in results if r.status == "skipped"] == ["samples", "base"]  # copied, with their states
    pair_files = sorted(path.name for path in here.dir.glob("pairs.*.jsonl"))
    assert {"pairs.text.jsonl", "pairs.visual.jsonl", "pairs.visual-whole.jsonl", "pairs.scored.jsonl"} <= set(
        pair_files
    )
    assert pair_files == sorted(path.name for path in there.dir.glob("pairs.*.jsonl"))
    for name in pair_files:  # every pairs file and its rejects, each variant's pairs
        assert records(there.dir / name, "x") == records(here.dir / name, "x"), name
    text = records(there.dir / "pairs.text.jsonl")
    targets = [row for row in records(there.dir / "pairs.text.jsonl", "base") if row["provenance"]["generator"] in
               ("target",)]  # fmt: skip
    assert targets and all(row["provenance"]["model"] == "base" for row in targets)
    assert len(text) > len(targets)  # perturbations too
    for variant in ("base", "mmedpo", "ablated"):
        mine, theirs = (json.loads(run.eval(variant).read_text()) for run in (there, here))
        assert mine["metrics"] == theirs["metrics"], variant
        assert mine["predictions"] == theirs["predictions"] and mine["visual_dependence"] == theirs["visual_dependence"]
    # Every generation of base and of the served variant went to the server; the other variant ran in process.
    by_model = {model: sum(r["model"] == model for r in requests) for model in ("base", "mmedpo", "ablated")}
    assert by_model["base"] > 0 and by_model["mmedpo"] > 0 and by_model["ablated"] == 0
    cached = [json.loads(line)["key"] for line in there.answer_cache.read_text().splitlines()]
    assert len(cached) == len(set(cached)) == len(requests)  # every request answered once, none asked twice
    assert not here.answer_cache.exists()


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return root, generate_synthmed(root, {"pref": 10}, seed=0, image_size=64)


def visual(root, samples, out, answerer, tiny_vlm_dir):
    return curate_visual_regions(
        samples,
        {("lesion", "model-answer"): out / "pairs.visual.jsonl"},
        CurateVisualConfig(),
        [root, out / "images"],
        out / "images",
        tiny_vlm_dir,
        show_progress=False,
        answerer=answerer,
    )


def test_curate_visual_survives_429_500_and_a_timeout_with_nothing_lost_or_duplicated(
    synth, tmp_path, tiny_vlm_dir, no_waits
):
    root, samples = synth
    visual(root, samples, tmp_path / "local", None, tiny_vlm_dir)
    out = tmp_path / "served"
    with VLMServer({"tiny": tiny_vlm_dir}) as server:
        # One request at a time, each well inside the timeout, except the one the server holds back.
        config = ChatConfig(base_url=server.url, model="tiny", api_key="EMPTY", timeout=2.0, concurrency=1)
        server.fail("429:0", "hang:2.5", "500")
        answerer = make_answerer(None, config, out / "answer_cache.jsonl")
        summary = visual(root, samples, out, answerer, tiny_vlm_dir)
        answerer.close()
        # Every question on a noised image, and on the clean image where that answer was wrong (every pair).
        kept = sum(count for reason, count in summary["drop_reasons"].items() if reason.startswith(KEPT))
        asked = summary["paired"] + kept + summary["paired"]
        assert len(server.requests) >= asked + 3  # each fault cost a request more
    for name in ("pairs.visual.jsonl", "pairs.visual.rejects.jsonl"):
        assert (out / name).read_text() == (tmp_path / "local" / name).read_text()
    keys = [json.loads(line)["key"] for line in (out / "answer_cache.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == asked  # every answer stored once


def test_a_dead_endpoint_leaves_curate_visual_incomplete_and_the_rerun_asks_only_what_failed(
    synth, tmp_path, tiny_vlm_dir
):
    root, samples = synth
    visual(root, samples, tmp_path / "local", None, tiny_vlm_dir)
    out = tmp_path / "served"
    with VLMServer({"tiny": tiny_vlm_dir}) as server:
        config = ChatConfig(base_url=server.url, model="tiny", api_key="EMPTY", concurrency=1, max_retries=0)
        server.fail(None, None, None, "503", "503")  # the 4th and 5th questions (on noised images) get no answer
        answerer = make_answerer(None, config, out / "answer_cache.jsonl")
        with pytest.raises(StageIncomplete, match=r"curate visual: 2 samples left unpaired .*HTTP 503"):
            visual(root, samples, out, answerer, tiny_vlm_dir)
        files = (out / "pairs.visual.jsonl", out / "pairs.visual.rejects.jsonl")
        assert sum(len(path.read_text().splitlines()) for path in files) == len(samples) - 2
        asked = len(server.requests)
        summary = visual(root, samples, out, answerer, tiny_vlm_dir)
        answerer.close()
        # Only the failed samples are asked again (on the clean image too, where they pair).
        assert len(server.requests) - asked == 2 + summary["paired"]
        assert summary["already_done"] == len(samples) - 2 and summary["paired"] + summary["rejected"] == 2
    for name in ("pairs.visual.jsonl", "pairs.visual.rejects.jsonl"):  # in sample order again, as if never failed
        assert (out / name).read_text() == (tmp_path / "local" / name).read_text()


def test_eval_with_failed_requests_is_incomplete_and_the_rerun_asks_only_those(synth, tmp_path, tiny_vlm_dir, no_waits):
    root, samples = synth
    samples = samples[:12]
    settings = EvalConfig(batch_size=4)
    local = evaluate_run_model(tiny_vlm_dir, samples, [root], tmp_path / "local.json", settings)
    with VLMServer({"tiny": tiny_vlm_dir}) as server:
        config = ChatConfig(base_url=server.url, model="tiny", api_key="EMPTY", max_retries=0)
        cache = tmp_path / "answer_cache.jsonl"
        server.fail("500", "500")
        answerer = make_answerer(None, config, cache)
        with pytest.raises(StageIncomplete, match="eval: 2 of 12 samples not answered"):
            evaluate_run_model(tiny_vlm_dir, samples, [root], tmp_path / "served.json", settings, answerer=answerer)
        asked = len(server.requests)
        server.fail(None, None, "503")  # the two left are answered, then visual dependence's first request fails
        with pytest.raises(StageIncomplete, match="visual dependence: 1 samples not measured"):
            evaluate_run_model(tiny_vlm_dir, samples, [root], tmp_path / "served.json", settings, answerer=answerer)
        assert len(server.requests) - asked >= 2
        asked = len(server.requests)
        result = evaluate_run_model(
            tiny_vlm_dir, samples, [root], tmp_path / "served.json", settings, answerer=answerer
        )
        answerer.close()
        assert len(server.requests) - asked == 1  # the one failed visual-dependence question
    assert result["metrics"] == local["metrics"] and result["visual_dependence"] == local["visual_dependence"]
    assert [p["prediction"] for p in result["predictions"]] == [p["prediction"] for p in local["predictions"]]
