"""Requests per second of the `chat` hallucination generator through `curate_text`.

    .venv/bin/python bench/curate_text.py [LATENCY_S]

A loopback OpenAI-compatible server (bench/loopback.py) answers every request
after LATENCY_S (default 0.05). At concurrency c the ceiling is c / latency
requests per second; the goal is 80% of it. The client alone (`chat_many`) is
the baseline the whole stage is compared with.
"""

import tempfile
import time
from pathlib import Path

from loopback import CONCURRENCIES, latency_arg, loopback_server, request_count, requests_served

from mmedpo.config import CurateTextConfig
from mmedpo.curation.text import curate_text
from mmedpo.llm.chat import chat_many, user_message
from mmedpo.llm.endpoint import ChatConfig
from mmedpo.records import Sample


def curate_rate(url: str, chat: ChatConfig, count: int) -> float:
    """Requests per second `curate_text` sends with the chat generator alone."""
    sample = {
        "task": "vqa",
        "image": "x.png",
        "question": "Is there a nodule?",
        "answer": "No",
        "answer_type": "closed",
    }
    samples = [Sample(id=f"s{i}", **sample) for i in range(count)]
    with tempfile.TemporaryDirectory() as folder:
        before = requests_served(url)
        start = time.perf_counter()
        summary = curate_text(
            samples,
            Path(folder) / "pairs.text.jsonl",
            CurateTextConfig(generators=["chat"], candidates=1, chat=chat),
            [],
            show_progress=False,
        )
        rate = (requests_served(url) - before) / (time.perf_counter() - start)
    assert summary.paired == count, summary.as_dict()
    return rate


def main(latency: float) -> None:
    with loopback_server(latency, reply_text="Yes") as url:
        print("concurrency requests client_req/s curate_req/s ceiling curate/ceiling")
        for concurrency in CONCURRENCIES:
            chat = ChatConfig(base_url=url, model="fake", api_key_env=None, concurrency=concurrency)
            count = request_count(concurrency)
            start = time.perf_counter()
            chat_many(chat, [([user_message(f"q{i}")], {}) for i in range(count)])
            client_rate = count / (time.perf_counter() - start)
            rate = curate_rate(url, chat, count)
            ceiling = concurrency / latency
            print(
                f"{concurrency:>11} {count:>8} {client_rate:>12.1f} {rate:>12.1f} {ceiling:>7.0f}"
                f" {rate / ceiling:>14.0%}"
            )


if __name__ == "__main__":
    main(latency_arg())
