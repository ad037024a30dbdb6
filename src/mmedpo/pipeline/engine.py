"""The resume engine: run stages in order, skip finished ones, resume killed ones, one writer at a time.

A stage's fingerprint hashes the part of the config it reads, the seed, and the
fingerprints of the stages whose outputs it reads. A stage that finished with
its current fingerprint is skipped; a changed one is cleared and run again, and
so is every stage after it (their fingerprints include its). A stage that was
killed, failed or is incomplete resumes: its JSONL outputs keep what was written.
A shardable stage (`Sharding`) can also run as shards on many machines, each
one such a stage of its own, and merge.
The state lives in RUN/stages/STAGE.json:

    {"fingerprint": ..., "status": "running" | "done" | "failed" | "incomplete",
     "seconds": ..., "summary": {...}, "error": "..."}

Asking for some stages only (`only`) also runs every stage they read from that
has not finished with its current fingerprint, so a single-stage command never
works on stale inputs.

Only one process writes a run folder: `RunLock` holds an exclusive lock on
RUN/.lock for the whole run and refuses a second writer with a line naming the
holder. Shard workers share the lock with each other (they write their own
files) but never with a whole run.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmedpo.errors import StageIncomplete
from mmedpo.layout import RunLayout
from mmedpo.records import describe_error, dump_json
from mmedpo.shards import shard_name


@dataclass(frozen=True)
class Sharding:
    """How a stage splits over processes or machines: shard (i, n) runs alone, then the shards merge.

    Each shard runs as a stage of its own (`shard_stage`), with the fingerprint of
    the whole stage: it resumes, is cleared when the config changes, and records its
    state, exactly as a stage does; the merge takes only shards done with the
    current fingerprint.
    """

    run: Callable[[RunLayout, Any, bool, tuple[int, int]], dict]  # (layout, config, show_progress, shard)
    outputs: Callable[[RunLayout, Any, tuple[int, int]], list[Path]]  # (layout, config, shard) -> its own files
    merge: Callable[[RunLayout, Any, int], dict]  # (layout, config, shards) -> summary; writes the stage's outputs


@dataclass(frozen=True)
class Stage:
    """One step of a run: what it reads from the config and from earlier stages, what it writes, how it runs."""

    name: str
    settings: Callable[[Any], Any]  # the part of the config it depends on directly (JSON-able)
    after: tuple[str, ...]  # stages whose outputs it reads
    outputs: Callable[[RunLayout], list[Path]]  # cleared when its fingerprint changes
    run: Callable[[RunLayout, Any, bool], dict]  # (layout, config, show_progress) -> summary
    sharding: Sharding | None = None  # None: the stage runs whole, on one machine


def shard_stage(stage: Stage, shard: tuple[int, int], config) -> Stage:
    """Shard (i, n) of a shardable stage, as a stage: STAGE.shard-i-of-n, its own state file and outputs."""
    sharding = stage.sharding
    return Stage(
        f"{stage.name}.{shard_name(shard)}",
        stage.settings,
        stage.after,
        lambda layout: sharding.outputs(layout, config, shard),
        lambda layout, config, show_progress: sharding.run(layout, config, show_progress, shard),
    )


@dataclass
class StageResult:
    name: str
    status: str  # "ran" | "skipped"
    seconds: float
    summary: dict


def fingerprints(stages: Sequence[Stage], config) -> dict[str, str]:
    """Each stage's fingerprint: its settings, the seed, and its inputs' fingerprints."""
    result: dict[str, str] = {}
    for stage in stages:
        material = {
            "settings": stage.settings(config),
            "seed": config.seed,
            "after": [result[name] for name in stage.after],
        }
        result[stage.name] = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]
    return result


def read_state(layout: RunLayout, stage: str) -> dict:
    try:
        return json.loads(layout.stage_state(stage).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError:
        return {}  # a state torn by a kill mid-write: the stage runs again


def is_done(layout: RunLayout, stage: str, fingerprint: str) -> bool:
    state = read_state(layout, stage)
    return state.get("status") == "done" and state.get("fingerprint") == fingerprint


def run_stage(
    layout: RunLayout, stage: Stage, config, fingerprint: str, show_progress: bool = True, force: bool = False
) -> StageResult:
    """Run one stage unless it finished with this fingerprint; resume it if it was stopped."""
    state = read_state(layout, stage.name)
    if not force and state.get("fingerprint") == fingerprint and state.get("status") == "done":
        return StageResult(stage.name, "skipped", state.get("seconds", 0.0), state.get("summary", {}))
    if force or state.get("fingerprint") != fingerprint:
        clear(stage.outputs(layout))  # changed settings: what is there belongs to another config
    path = layout.stage_state(stage.name)
    dump_json({"fingerprint": fingerprint, "status": "running"}, path)
    started = time.perf_counter()
    try:
        summary = stage.run(layout, config, show_progress)
    except StageIncomplete as error:
        seconds = round(time.perf_counter() - started, 2)
        dump_json(
            {
                "fingerprint": fingerprint,
                "status": "incomplete",
                "seconds": seconds,
                "summary": error.summary,
                "error": str(error),
            },
            path,
        )
        raise
    except Exception as error:
        state = {"fingerprint": fingerprint, "status": "failed", "error": describe_error(error)}
        dump_json(state, path)
        raise
    seconds = round(time.perf_counter() - started, 2)
    dump_json({"fingerprint": fingerprint, "status": "done", "seconds": seconds, "summary": summary}, path)
    return StageResult(stage.name, "ran", seconds, summary)


def _named(stage: str, names: Sequence[str]) -> bool:
    return any(stage == name or stage.startswith(name + ":") for name in names)


def select(stages: Sequence[Stage], names: Sequence[str]) -> list[Stage]:
    """The named stages ("train" names every "train:VARIANT"), with the stages they read from, in run order."""
    known = [stage.name for stage in stages]
    unknown = [name for name in names if not any(_named(stage, [name]) for stage in known)]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; valid: {', '.join(known)}")
    by_name = {stage.name: stage for stage in stages}
    wanted: set[str] = set()
    todo = [stage for stage in known if _named(stage, names)]
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo.extend(by_name[name].after)
    return [stage for stage in stages if stage.name in wanted]


def run_stages(
    layout: RunLayout,
    stages: Sequence[Stage],
    config,
    only: Sequence[str] | None = None,
    force: bool = False,
    show_progress: bool = True,
    on_stage: Callable[[StageResult], None] | None = None,
    gates: Mapping[str, Callable[[], None]] | None = None,
) -> list[StageResult]:
    """Run `stages` in order; or `only` those named, after whatever they read that has not finished.

    `force` re-runs the stages run (or those named) from scratch even if they
    finished; the stages they read from run only if they have not finished.
    `gates[name]()` runs once stage `name` has finished (now or before) and before
    any later stage: a check of what that stage wrote, which stops the run by raising.
    """
    prints = fingerprints(stages, config)
    chosen = select(stages, only) if only else list(stages)
    results = []
    for stage in chosen:
        upstream = bool(only) and not _named(stage.name, only)
        if not (upstream and is_done(layout, stage.name, prints[stage.name])):
            result = run_stage(layout, stage, config, prints[stage.name], show_progress, force=force and not upstream)
            results.append(result)
            if on_stage:
                on_stage(result)
        if gates and stage.name in gates and stage is not chosen[-1]:
            gates[stage.name]()
    return results


def clear(paths: Sequence[Path]) -> None:
    for path in paths:
        if path.is_symlink():  # a link to a given model: remove the link, never what it points to
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


class RunLock:
    """An advisory lock on RUN/.lock: exclusive for a run, shared between shard workers.

    The lock is the kernel's (flock): it goes away with the process, so a killed
    run never leaves a stale lock behind. The file says who holds it. `name`
    locks another file of the run folder (RUN/.lock.NAME), e.g. one per shard, so
    that one shard is never run twice at once.
    """

    def __init__(self, layout: RunLayout, shared: bool = False, name: str | None = None):
        self.path = layout.dir / (".lock" if name is None else f".lock.{name.replace(':', '.')}")
        self.name, self.shared = name, shared
        self._handle = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            what = f"run folder {self.path.parent}" if self.name is None else f"{self.name} of {self.path.parent}"
            raise ValueError(f"{what} is in use by {holder}; wait for it or use another name") from None
        if not self.shared:
            handle.seek(0)
            handle.truncate()
            command = " ".join(Path(sys.argv[0]).name if i == 0 else a for i, a in enumerate(sys.argv))
            handle.write(f"pid {os.getpid()} on {socket.gethostname()} ({command})\n")
            handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
