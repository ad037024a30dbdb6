"""The resume engine on stages that only write files: skipping, stale inputs, failures, the run lock."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from mmedpo.errors import StageIncomplete
from mmedpo.layout import RunLayout
from mmedpo.pipeline.engine import RunLock, Stage, read_state, run_stages


def _config(**settings):
    return SimpleNamespace(seed=0, **{"a": 1, "b": 1, **settings})


def _stages(calls: list[str], fail: dict[str, Exception] | None = None) -> list[Stage]:
    """a -> b -> c: each appends its name to `calls` and writes NAME.txt holding its input's text plus its setting."""
    fail = fail or {}

    def make(name: str, after: tuple[str, ...]):
        def run(layout, config, show_progress):
            calls.append(name)
            if name in fail:
                raise fail.pop(name)
            upstream = "".join((layout.dir / f"{a}.txt").read_text() for a in after)
            (layout.dir / f"{name}.txt").write_text(upstream + f"{name}{getattr(config, name, '')};")
            return {"wrote": name}

        return Stage(name, lambda c: getattr(c, name, None), after, lambda r: [r.dir / f"{name}.txt"], run)

    return [make("a", ()), make("b", ("a",)), make("c", ("b",))]


def test_finished_stages_are_skipped_and_a_change_reruns_what_follows(tmp_path):
    layout, calls = RunLayout(tmp_path), []
    run_stages(layout, _stages(calls), _config())
    assert calls == ["a", "b", "c"]
    calls.clear()
    assert {r.status for r in run_stages(layout, _stages(calls), _config())} == {"skipped"}
    run_stages(layout, _stages(calls), _config(b=2))
    assert calls == ["b", "c"] and (tmp_path / "c.txt").read_text() == "a1;b2;c;"


def test_a_single_stage_command_reruns_its_stale_inputs_first(tmp_path):
    layout, calls = RunLayout(tmp_path), []
    run_stages(layout, _stages(calls), _config())
    calls.clear()
    # `mmedpo c -o a=5` on a finished run: c must not run on the output of the old a.
    results = run_stages(layout, _stages(calls), _config(a=5), only=["c"])
    assert calls == ["a", "b", "c"] and [r.name for r in results] == ["a", "b", "c"]
    assert (tmp_path / "c.txt").read_text() == "a5;b1;c;"
    calls.clear()
    # Upstream finished with the current settings: only the named stage runs (forced or not).
    run_stages(layout, _stages(calls), _config(a=5), only=["c"], force=True)
    assert calls == ["c"]


def test_a_failed_stage_is_recorded_as_failed_and_resumes_next_time(tmp_path):
    layout, calls = RunLayout(tmp_path), []
    with pytest.raises(ValueError, match="disk on fire"):
        run_stages(layout, _stages(calls, {"b": ValueError("disk on fire")}), _config())
    state = read_state(layout, "b")
    assert state["status"] == "failed" and state["error"] == "disk on fire"
    assert not (tmp_path / "c.txt").exists() and calls == ["a", "b"]
    calls.clear()
    run_stages(layout, _stages(calls), _config())
    assert calls == ["b", "c"] and read_state(layout, "b")["status"] == "done"


def test_an_incomplete_stage_is_never_done_and_stops_the_run(tmp_path):
    layout, calls = RunLayout(tmp_path), []
    failure = StageIncomplete("3 of 10 judge requests failed (HTTP 503)", {"failed": 3})
    with pytest.raises(StageIncomplete):
        run_stages(layout, _stages(calls, {"b": failure}), _config())
    state = read_state(layout, "b")
    assert (state["status"], state["summary"], calls) == ("incomplete", {"failed": 3}, ["a", "b"])
    assert "503" in state["error"]
    calls.clear()
    run_stages(layout, _stages(calls), _config())
    assert calls == ["b", "c"]


HOLD_LOCK = """
import sys, time
from pathlib import Path
from mmedpo.layout import RunLayout
from mmedpo.pipeline.engine import RunLock
with RunLock(RunLayout(Path(sys.argv[1]))):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_a_second_writer_is_refused_with_the_holder_named(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=rf"in use by pid {holder.pid} on .*; wait for it"):
            with RunLock(RunLayout(tmp_path)):
                pass
        with pytest.raises(ValueError, match="in use by"):  # shard workers do not share with a whole run
            with RunLock(RunLayout(tmp_path), shared=True):
                pass
    finally:
        holder.communicate("")
    with RunLock(RunLayout(tmp_path)):  # released when its holder ended
        pass


def test_shard_workers_share_the_lock_but_a_run_waits_for_them(tmp_path):
    layout = RunLayout(tmp_path)
    with RunLock(layout, shared=True), RunLock(layout, shared=True):
        with pytest.raises(ValueError, match="in use by"):
            with RunLock(layout):
                pass


def test_state_files_are_json_with_fingerprint_and_timing(tmp_path):
    layout = RunLayout(tmp_path)
    run_stages(layout, _stages([]), _config())
    state = json.loads(layout.stage_state("c").read_text())
    assert state["status"] == "done" and len(state["fingerprint"]) == 16 and state["summary"] == {"wrote": "c"}


def test_a_given_model_is_linked_not_copied_and_clearing_removes_only_the_link(tmp_path):
    from mmedpo.config import BaseModelConfig
    from mmedpo.models.base import make_base_model
    from mmedpo.pipeline.engine import clear

    given = tmp_path / "llava-med"
    given.mkdir()
    (given / "model.safetensors").write_bytes(b"weights")
    out = tmp_path / "run" / "models" / "base"
    summary = make_base_model(BaseModelConfig(path=str(given), sft_epochs=0), [], [], tmp_path / "init", out, seed=0)
    assert summary == {"sft_samples": 0} and out.is_symlink() and (out / "model.safetensors").read_bytes() == b"weights"
    clear([out])
    assert not out.exists() and (given / "model.safetensors").exists()
