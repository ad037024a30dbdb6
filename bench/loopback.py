"""The loopback OpenAI-compatible server the chat benchmarks share.

`tests/fake_openai.py` runs in a process of its own, so it does not share the
benchmark's interpreter lock: in one process the server's threads and the
client's event loop take turns on it and the client measures that, not itself.

    with loopback_server(latency, reply_text="No.") as url:
        ... ChatConfig(base_url=url, api_key_env=None) ...
        requests_served(url)
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
CONCURRENCIES = (1, 8, 32)
DEFAULT_LATENCY = 0.05


def latency_arg() -> float:
    """LATENCY_S, the benchmark's optional argument (default 0.05 s)."""
    return float(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_LATENCY


def request_count(concurrency: int) -> int:
    """Requests per measurement: 16 rounds, and at least 40 so concurrency 1 is not timed on a handful."""
    return max(40, 16 * concurrency)


@contextmanager
def loopback_server(latency: float, reply_text: str) -> Iterator[str]:
    """The base URL of a server that answers every request with `reply_text` after `latency` seconds."""
    code = (
        f"import sys; sys.path.insert(0, {str(TESTS)!r}); from fake_openai import FakeOpenAI\n"
        f"with FakeOpenAI(reply=lambda body: {reply_text!r}, latency={latency}) as server:\n"
        "    print(server.url, flush=True)\n"
        "    sys.stdin.read()\n"  # serve until the benchmark closes stdin
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        print(f"loopback server, {latency * 1000:.0f} ms per request; ceiling = concurrency / latency")
        yield process.stdout.readline().strip()
    finally:
        process.stdin.close()
        process.wait()


def requests_served(url: str) -> int:
    """Requests the loopback server has received so far."""
    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats") as response:
        return json.load(response)["requests"]
