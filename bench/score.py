"""Pairs per second of the `chat` judge with the judge cache, and a cached second run.

    .venv/bin/python bench/score.py [LATENCY_S]

A loopback OpenAI-compatible server (bench/loopback.py) answers every request
after LATENCY_S (default 0.05) with a valid verdict. At concurrency c the
ceiling is c / latency pairs per second (goal: 80% of it). Each concurrency
then scores the same pairs again through the cache, which must send zero
requests.
"""

import tempfile
import time
from pathlib import Path

from loopback import CONCURRENCIES, latency_arg, loopback_server, request_count, requests_served

from mmedpo.records import PreferencePair
from mmedpo.scoring.cache import JudgeCache
from mmedpo.scoring.chat_judge import ChatJudge
from mmedpo.scoring.panel import judge_pairs


def score_with_cache(judge: ChatJudge, cache: JudgeCache, pairs: list[PreferencePair]) -> None:
    """The panel's own path for one judge: cache lookups, requests for the misses, cache writes."""
    verdicts = judge_pairs(pairs, judge, "chat", cache, advance=lambda done: None)
    cache.close()
    assert all(verdict.score is not None for verdict in verdicts), verdicts[0].reason


def main(latency: float) -> None:
    with loopback_server(latency, reply_text='{"score": 4, "reason": "invented effusion"}') as url:
        print("concurrency pairs pairs/s ceiling ratio | cached run: requests pairs/s")
        for concurrency in CONCURRENCIES:
            judge = ChatJudge(base_url=url, model="fake", api_key_env=None, concurrency=concurrency)
            count = request_count(concurrency)
            items = [
                PreferencePair(
                    id=f"p{i}",
                    sample_id=f"s{i}",
                    task="vqa",
                    kind="text",
                    image="a.png",
                    question=f"Question {i}?",
                    chosen="No pleural effusion.",
                    rejected="Large pleural effusion.",
                )
                for i in range(count)
            ]
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "judge_cache.jsonl"
                start = time.perf_counter()
                score_with_cache(judge, JudgeCache(path), items)
                rate = count / (time.perf_counter() - start)
                before = requests_served(url)
                start = time.perf_counter()
                score_with_cache(judge, JudgeCache(path), items)
                cached_rate = count / (time.perf_counter() - start)
                cached_requests = requests_served(url) - before
            ceiling = concurrency / latency
            print(
                f"{concurrency:>11} {count:>5} {rate:>7.1f} {ceiling:>7.0f} {rate / ceiling:>5.0%}"
                f" | {cached_requests:>20} {cached_rate:>7.0f}"
            )


if __name__ == "__main__":
    main(latency_arg())
