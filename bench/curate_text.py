"""Requests per second of the `chat` hallucination generator through `curate_text`.

    .venv/bin/python bench/curate_text.py [LATENCY_S]

A loopback OpenAI-compatible server (tests/fake_openai.py, in its own process)
answers every request after LATENCY_S (default 0.05). At concurrency c the
ceiling is c / latency requests per second; the goal is 80% of it. The client
alone (`chat_many`) is the baseline the whole stage is compared with.
"""

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fake_openai import requests_served, serve_in_subprocess  # noqa: E402
from mmedpo.config import CurateTextConfig  # noqa: E402
from mmedpo.curation.text import curate_text  # noqa: E402
from mmedpo.llm.chat import ChatConfig, chat_many, user_message  # noqa: E402
from mmedpo.records import Sample  # noqa: E402


class Settings(CurateTextConfig):
    """CurateTextConfig with the `chat` fields the config is to gain (until it has them)."""

    generators: list[str] = ["chat"]
    chat: ChatConfig = ChatConfig()


def main(latency: float) -> None:
    process, url = serve_in_subprocess(latency, reply_text="Yes")
    try:
        print(f"loopback server, {latency * 1000:.0f} ms per request; ceiling = concurrency / latency")
        print("concurrency requests client_req/s curate_req/s ceiling curate/ceiling")
        for concurrency in (1, 8, 32):
            chat = ChatConfig(base_url=url, model="fake", api_key_env=None, concurrency=concurrency)
            count = max(40, 16 * concurrency)
            start = time.perf_counter()
            chat_many(chat, [([user_message(f"q{i}")], {}) for i in range(count)])
            client_rate = count / (time.perf_counter() - start)
            samples = [
                Sample(
                    id=f"s{i}",
                    task="vqa",
                    image="x.png",
                    question="Is there a nodule?",
                    answer="No",
                    answer_type="closed",
                )
                for i in range(count)
            ]
            with tempfile.TemporaryDirectory() as folder:
                before = requests_served(url)
                start = time.perf_counter()
                summary = curate_text(
                    samples,
                    Path(folder) / "pairs.text.jsonl",
                    Settings(candidates=1, chat=chat),
                    [],
                    show_progress=False,
                )
                curate_rate = (requests_served(url) - before) / (time.perf_counter() - start)
            assert summary.paired == count, summary.as_dict()
            ceiling = concurrency / latency
            print(
                f"{concurrency:>11} {count:>8} {client_rate:>12.1f} {curate_rate:>12.1f} {ceiling:>7.0f}"
                f" {curate_rate / ceiling:>14.0%}"
            )
    finally:
        process.stdin.close()
        process.wait()


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 0.05)
