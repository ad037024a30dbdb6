"""Every stage that asks a model or a judge runs as shards in parallel processes, and the merge is the unsharded run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmedpo.cli import app
from mmedpo.config import dump_config, load_config
from mmedpo.layout import RunLayout
from mmedpo.pipeline import merge_shards, run_pipeline, run_shard, shardable_stages
from mmedpo.pipeline.engine import read_state
from mmedpo.records import dump_json
from mmedpo.shards import parse_shard, shard_path, take_shard
from test_pipeline import SMALL

SRC = Path(__file__).resolve().parents[1] / "src"
SHARD_WORKER = """
import sys
import torch
from mmedpo.config import load_config
from mmedpo.pipeline import run_shard
torch.set_num_threads(1)
config = load_config(sys.argv[1])
for stage in sys.argv[3:]:
    run_shard(config, stage, (int(sys.argv[2]), 2), show_progress=False)
"""


def records(path: Path) -> list[dict]:
    """The records of a JSONL file, without the one field that names the run folder (the target model's path)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        if row.get("provenance", {}).get("generator") == "target":
            row["provenance"]["model"] = "models/base"
    return rows


def evaluation(path: Path) -> dict:
    result = json.loads(path.read_text())
    result["model"] = "models/base"
    return result


def in_parallel(commands: list[list[str]]) -> None:
    """Run the commands side by side in processes of their own; each must succeed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    processes = [subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) for command in commands]
    for process in processes:
        _, errors = process.communicate()
        assert process.returncode == 0, errors[-2000:]


def workers(config_file: Path, *stages: str) -> list[list[str]]:
    return [[sys.executable, "-c", SHARD_WORKER, str(config_file), str(index), *stages] for index in (1, 2)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The SMALL config up to score and eval:base, whole; and a second run folder with the same samples and base."""
    root = tmp_path_factory.mktemp("runs")
    whole = load_config(None, SMALL + ["name=whole", f"runs_dir={root}"])
    run_pipeline(whole, only=["score", "eval:base"], show_progress=False)
    sharded = load_config(None, SMALL + ["name=sharded", f"runs_dir={root}"])
    here, there = RunLayout.of(whole), RunLayout.of(sharded)
    for part in ("samples.jsonl", "samples.rejects.jsonl", "images/synthmed", "models/base", "stages/samples.json",
                 "stages/base.json"):  # fmt: skip
        (there.dir / part).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (here.dir / part).is_dir() else shutil.copyfile)(here.dir / part, there.dir / part)
    config_file = root / "sharded.yaml"
    dump_config(sharded, config_file)
    return whole, sharded, config_file


@pytest.mark.slow
def test_two_shards_in_parallel_processes_merge_into_the_unsharded_run(runs):
    whole, sharded, config_file = runs
    here, there = RunLayout.of(whole), RunLayout.of(sharded)
    assert shardable_stages(sharded) == ["curate_text", "curate_visual", "score", "regions", "eval:base", *(
        f"eval:{variant}" for variant in sharded.variants)]  # fmt: skip

    in_parallel(workers(config_file, "curate_text", "curate_visual"))
    for stage in ("curate_text", "curate_visual"):
        merge_shards(sharded, stage, 2)
    # A shard killed mid-run resumes to what it would have written: cut shard 2's last pairs, as a kill would.
    shard_file = shard_path(there.visual_pairs(), (2, 2))
    kept = shard_file.read_text().splitlines(keepends=True)
    shard_file.write_text("".join(kept[:-2]))
    state = there.stage_state("curate_visual.shard-2-of-2")
    dump_json({**json.loads(state.read_text()), "status": "running"}, state)
    assert run_shard(sharded, "curate_visual", (2, 2), show_progress=False)["paired"] == 2
    assert shard_file.read_text() == "".join(kept)
    merge_shards(sharded, "curate_visual", 2)
    curated = sorted(path.name for path in here.dir.glob("pairs.*.jsonl") if "scored" not in path.name)
    assert "pairs.text.jsonl" in curated and "pairs.visual-whole-gold.rejects.jsonl" in curated
    for name in curated:  # text, and every visual file (lesion and whole image, model answer and gold)
        assert records(there.dir / name) == records(here.dir / name), name
    # Every question on an image went to one shard, which noised that image once.
    pref = [s for s in map(json.loads, there.samples.read_text().splitlines()) if s["split"] == "pref"]
    images = [{row["image"] for row in take_shard(pref, (i, 2), key=lambda s: s["image"])} for i in (1, 2)]
    assert images[0] and images[1] and not images[0] & images[1]

    in_parallel(workers(config_file, "score"))
    merge_shards(sharded, "score", 2)
    assert records(there.dir / "pairs.scored.rejects.jsonl") == records(here.dir / "pairs.scored.rejects.jsonl")
    mine, theirs = records(there.dir / "pairs.scored.jsonl"), records(here.dir / "pairs.scored.jsonl")
    # The embedding judge's float32 cosine moves in its 7th digit with the batch a text is encoded in (as it
    # does unsharded when the batches change): scores are equal to 1e-6, everything else exactly.
    for row in mine:
        row["scores"] = pytest.approx(row["scores"], abs=1e-6)
        row["clinical_score"] = pytest.approx(row["clinical_score"], abs=1e-6)
    assert [row["id"] for row in mine] == [row["id"] for row in theirs] and mine == theirs
    assert len(list(there.dir.glob("judge_cache.score.shard-*-of-2.jsonl"))) == 2  # one cache file per writer

    # Visual dependence's regions are found once, for every shard: a shard without them says what to run.
    command = [sys.executable, "-m", "mmedpo", "eval", "--config", str(config_file), "--variant", "base", "--shard"]
    refused = CliRunner().invoke(app, ["eval", "--config", str(config_file), "--variant", "base", "--shard", "1/2"])
    assert refused.exit_code == 2 and "stage regions has not finished with this config" in refused.output
    for index in (1, 2):  # the regions themselves in two shards, each a part of the images
        assert run_shard(sharded, "regions", (index, 2), show_progress=False)["images"] < 8
    merge_shards(sharded, "regions", 2)
    index = json.loads((there.eval_regions / "index.json").read_text())
    assert index == json.loads((here.eval_regions / "index.json").read_text()) and len(index["regions"]) == 8
    for entry in index["regions"].values():  # the same masks, byte for byte
        if "mask" in entry:
            assert (there.eval_regions / entry["mask"]).read_bytes() == (here.eval_regions / entry["mask"]).read_bytes()
    in_parallel([[*command, "1/2"], [*command, "2/2"]])
    result = CliRunner().invoke(app, ["eval", "--config", str(config_file), "--variant", "base", "--merge", "2"])
    assert result.exit_code == 0, result.output
    assert evaluation(there.eval("base")) == evaluation(here.eval("base"))
    # The merged stage says what the whole one says: where the regions came from, how many samples were measured.
    assert read_state(there, "eval:base")["summary"]["notes"] == read_state(here, "eval:base")["summary"]["notes"]
    assert not list(there.eval_dir.glob("*.shard-*"))  # shards live apart, never read as a variant

    # Merged stages are done: a run goes on from there and asks nothing again.
    results = run_pipeline(sharded, only=["score", "eval:base"], show_progress=False)
    assert {result.status for result in results} == {"skipped"}
    assert read_state(there, "score")["status"] == "done"


@pytest.mark.slow
def test_a_merge_needs_every_shard_done_with_this_config(runs):
    whole, sharded, config_file = runs
    with pytest.raises(ValueError, match="stage 'train:mmedpo' cannot be sharded; shardable: curate_text"):
        run_shard(sharded, "train:mmedpo", (1, 2))
    with pytest.raises(ValueError, match=r"curate_text shard 1/3 has not finished with this config: run it with"):
        merge_shards(sharded, "curate_text", 3)
    changed = sharded.model_copy(update={"curate_text": sharded.curate_text.model_copy(update={"candidates": 3})})
    with pytest.raises(ValueError, match="curate_text shard 1/2 has not finished with this config"):
        merge_shards(changed, "curate_text", 2)
    result = CliRunner().invoke(app, ["eval", "--config", str(config_file), "--shard", "1/2"])
    assert result.exit_code == 2 and "--variant" in result.output
    result = CliRunner().invoke(app, ["score", "--config", str(config_file), "--shard", "1/2", "--merge", "2"])
    assert result.exit_code == 2 and "give one of the two" in result.output
    with pytest.raises(ValueError, match="i/n with 1 <= i <= n"):
        parse_shard("3/2")
