"""Progress of long stages: a bar on a terminal, a line per tenth in a log.

A bar redraws itself with carriage returns, which fill a log file (a cluster job's stderr,
`mmedpo run 2> log`) with thousands of half-lines. So `progress_bar` draws only when stderr
is a terminal and otherwise prints a plain line at every tenth of the work; and the command
line calls `quiet_output_off_terminal` first, which turns off the bars of the libraries
(tqdm's: the Trainer's, transformers' "Loading weights", datasets', ours in models/).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

# Read by tqdm (TQDM_*: defaults of every bar, taken when tqdm is imported) and by Hugging Face's
# libraries (their own switches, also read on import).
BARS_OFF = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}

# bitsandbytes (installed for QLoRA) looks, on CPUs with AVX512-BF16, for a faster 4-bit kernel in the
# optional `kernels` package, which would fetch it from the Hugging Face Hub, and warns on every import
# (peft imports it) that it is missing. Without it bitsandbytes uses its own CPU kernel: nothing to act on.
BITSANDBYTES_KERNEL_LOGGER = "bitsandbytes.backends.cpu.ops"


def on_terminal(stream=None) -> bool:
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", None) and stream.isatty())


def quiet_output_off_terminal(stream=None) -> None:
    """For the command line, before tqdm is imported: no progress bars unless stderr is a terminal,
    and no bitsandbytes kernel warning. A value the user set in the environment wins."""
    quiet_libraries(bars_off=not on_terminal(stream))


def quiet_libraries(bars_off: bool = True) -> None:
    """Before tqdm is imported: the libraries' progress bars off (`bars_off`; a value the user set in the
    environment wins), and no bitsandbytes kernel warning. Also for a process of its own whose output
    mixes with others' (a study's seeds side by side)."""
    if bars_off:
        for name, value in BARS_OFF.items():
            os.environ.setdefault(name, value)
    logging.getLogger(BITSANDBYTES_KERNEL_LOGGER).setLevel(logging.ERROR)


@contextmanager
def progress_bar(label: str, total: int, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n)`: a bar on a terminal, a `label: done/total` line per tenth elsewhere."""
    console = Console(stderr=True)
    if not enabled:
        yield lambda n=1: None
    elif console.is_terminal or console.is_jupyter:
        columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task(label, total=total)
            yield lambda n=1: progress.advance(task, n)
    else:
        yield _progress_lines(label, total)


def _progress_lines(label: str, total: int) -> Callable[[int], None]:
    done = reported = 0  # items done; tenths reported

    def advance(n: int = 1) -> None:
        nonlocal done, reported
        done += n
        tenths = min(10, done * 10 // total) if total else 0
        if tenths > reported:
            reported = tenths
            print(f"{label}: {done}/{total}", file=sys.stderr, flush=True)

    return advance
