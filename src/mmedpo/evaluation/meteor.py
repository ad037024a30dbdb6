"""METEOR 1.5 through pycocoevalcap's jar, with one Java process kept for the whole Python session.

pycocoevalcap's `Meteor` starts a new Java process per scorer, which loads a
60 MB paraphrase table (about 12 s of CPU), and then sends one pair at a time,
waiting for each answer. Here the process is started once (`meteor_scorer()`)
and reused by every later call, and all pairs of a call are written by a
second thread while the answers are read, so Java never waits for Python.
Starting the process returns at once: a caller that starts it before computing
other metrics overlaps the start-up with that work.

The score is the same number pycocoevalcap returns: the same jar, options and
protocol (SCORE lines give per-pair statistics, one EVAL line aggregates them).
"""

from __future__ import annotations

import atexit
import subprocess
import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import pycocoevalcap.meteor.meteor as _pycoco_meteor

JAR_DIR = Path(_pycoco_meteor.__file__).parent
COMMAND = ("java", "-jar", "-Xmx2G", _pycoco_meteor.METEOR_JAR, "-", "-", "-stdio", "-l", "en", "-norm")


class MeteorScorer:
    """A running METEOR 1.5 process; `score` may be called many times, from any thread."""

    def __init__(self) -> None:
        try:
            self._process = subprocess.Popen(
                COMMAND, cwd=JAR_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
            )
        except FileNotFoundError:
            raise RuntimeError(
                "METEOR needs Java (a `java` executable on PATH); install a JRE or set meteor off"
            ) from None
        self._lock = threading.Lock()

    def score(self, hypotheses: Sequence[str], references: Sequence[str]) -> float:
        """Corpus METEOR of already tokenised hypotheses against one reference each."""
        if len(hypotheses) != len(references) or not references:
            raise ValueError(
                f"METEOR needs equally many hypotheses and references, got {len(hypotheses)}/{len(references)}"
            )
        lines = [
            f"SCORE ||| {reference} ||| {hypothesis.replace('|||', '').replace('  ', ' ')}\n".encode()
            for hypothesis, reference in zip(hypotheses, references)
        ]
        with self._lock:
            if self._process.poll() is not None:
                raise RuntimeError(f"the METEOR process has exited with code {self._process.returncode}")
            writer = threading.Thread(target=self._write, args=(lines,))
            writer.start()
            stats = [self._read() for _ in lines]
            writer.join()
            self._write([("EVAL ||| " + " ||| ".join(stats) + "\n").encode()])
            for _ in lines:  # the per-pair scores, not needed here
                self._read()
            return float(self._read())

    @property
    def pid(self) -> int:
        """The Java process id (to watch its CPU time)."""
        return self._process.pid

    def close(self) -> None:
        """End the Java process (closing its input ends it cleanly)."""
        if self._process.poll() is None:
            self._process.stdin.close()
            self._process.wait()

    def _write(self, lines: list[bytes]) -> None:
        for line in lines:
            self._process.stdin.write(line)
        self._process.stdin.flush()

    def _read(self) -> str:
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the METEOR process ended unexpectedly (exit code {self._process.wait()})")
        return line.decode().strip()


@lru_cache(maxsize=1)
def meteor_scorer() -> MeteorScorer:
    """The session's METEOR process, started on first use and ended when Python exits."""
    scorer = MeteorScorer()
    atexit.register(scorer.close)
    return scorer
