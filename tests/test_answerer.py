"""The target model in process and behind the loopback OpenAI-compatible server: same answers, cached,
failures never turned into answers, retries that lose and duplicate nothing."""

from __future__ import annotations

import doctest
import json

import numpy as np
import pytest
from PIL import Image

from mmedpo.llm import chat
from mmedpo.llm.endpoint import ChatConfig
from mmedpo.models import answerer as answerer_module
from mmedpo.models.answerer import (
    Decoding,
    EndpointAnswerer,
    LocalAnswerer,
    Question,
    RequestFailed,
    answer_key,
    answer_stream,
    make_answerer,
    one_ahead,
)
from vlm_server import VLMServer

PROMPTS = ["Is there a pleural effusion?", "Is the heart enlarged?", "Where is the nodule located?", "Describe."]


@pytest.fixture
def no_waits(monkeypatch):
    """Retries go again at once: the backoff is the chat client's (tested in test_chat), not waited for here."""

    async def record(seconds):
        pass

    monkeypatch.setattr(chat, "wait_before_retry", record)


@pytest.fixture(scope="module")
def server(tiny_vlm_dir):
    with VLMServer({"tiny": tiny_vlm_dir}) as running:
        yield running


def endpoint(server, **options) -> ChatConfig:
    return ChatConfig(base_url=server.url, model="tiny", api_key="EMPTY", **options)


def questions(images, decoding: Decoding) -> list[Question]:
    return [Question(image, prompt, decoding) for image, prompt in zip(images, PROMPTS)]


def test_request_params_map_greedy_and_sampling():
    assert doctest.testmod(answerer_module).failed == 0


def test_served_greedy_answers_equal_in_process_ones(server, tiny_vlm_dir, tiny_images):
    asked = questions(tiny_images, Decoding(12))
    local = LocalAnswerer(tiny_vlm_dir).submit(asked).result()
    served = EndpointAnswerer(endpoint(server))
    try:
        assert served.submit(asked).result() == local
    finally:
        served.close()
    assert all(len(answers) == 1 and isinstance(answers[0], str) for answers in local)
    sent = server.requests[-1]
    assert sent["temperature"] == 0.0 and sent["max_tokens"] == 12 and "seed" not in sent and "n" not in sent
    assert sent["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")


def test_served_samples_equal_in_process_ones_whatever_the_batch(server, tiny_vlm_dir, tiny_images):
    # Each question draws from its own seed: alone on the server or batched in process, the same candidates.
    asked = [Question(image, prompt, Decoding(12, 1.0, 0.9, 3, seed)) for image, prompt, seed in
             zip(tiny_images, PROMPTS, [7, 8, 9, 10])]  # fmt: skip
    local = LocalAnswerer(tiny_vlm_dir, batch_size=4).submit(asked).result()
    served = EndpointAnswerer(endpoint(server, concurrency=1))  # one request at a time: no batch on the server
    try:
        assert served.submit(asked).result() == local
    finally:
        served.close()
    assert all(len(answers) == 3 for answers in local)
    assert len({tuple(answers) for answers in local}) == 4  # the seeds differ, so do the candidates
    reseeded = [Question(q.image, q.prompt, Decoding(12, 1.0, 0.9, 3, 99)) for q in asked]
    assert LocalAnswerer(tiny_vlm_dir).submit(reseeded).result() != local
    sent = server.requests[-1]
    assert (sent["temperature"], sent["top_p"], sent["n"], sent["seed"]) == (1.0, 0.9, 3, 10)


def test_the_cache_asks_each_question_once_and_keys_what_changes_the_answer(server, tiny_images, tmp_path):
    cache = tmp_path / "answer_cache.jsonl"
    asked = questions(tiny_images, Decoding(12)) + questions(tiny_images[:1], Decoding(12))  # one asked twice
    before = len(server.requests)
    first = make_answerer(None, endpoint(server), cache)
    try:
        answers = first.submit(asked).result()
    finally:
        first.close()
    assert len(server.requests) - before == 4 and answers[4] == answers[0]
    again = make_answerer(None, endpoint(server), cache)
    try:
        assert again.submit(asked).result() == answers
    finally:
        again.close()
    assert len(server.requests) - before == 4  # all from the cache
    assert len(cache.read_text().splitlines()) == 4
    base = asked[0]
    darker = Image.fromarray((np.asarray(base.image) // 2).astype(np.uint8))
    keys = {
        answer_key("tiny", base),
        answer_key("other-model", base),
        answer_key("tiny", Question(darker, base.prompt, base.decoding)),
        answer_key("tiny", Question(base.image, base.prompt + "?", base.decoding)),
        answer_key("tiny", Question(base.image, base.prompt, Decoding(64))),
        answer_key("tiny", Question(base.image, base.prompt, Decoding(12, 1.0, 1.0, 1, 3))),
    }
    assert len(keys) == 6
    assert answer_key("tiny", Question(base.image.copy(), base.prompt, Decoding(12))) == answer_key("tiny", base)


def test_429_500_and_a_timeout_are_retried_and_nothing_is_lost_or_duplicated(
    server, tiny_vlm_dir, tiny_images, tmp_path, no_waits
):
    asked = questions(tiny_images, Decoding(12))
    expected = LocalAnswerer(tiny_vlm_dir).submit(asked).result()
    cache = tmp_path / "answer_cache.jsonl"
    before = len(server.requests)
    server.fail("429:0", "500", "hang:2.5")
    served = make_answerer(None, endpoint(server, timeout=2.0, concurrency=1), cache)
    try:
        assert served.submit(asked).result() == expected
    finally:
        served.close()
    assert len(server.requests) - before == 4 + 3  # each fault cost one more request, nothing else
    lines = [json.loads(line) for line in cache.read_text().splitlines()]
    assert len(lines) == len({line["key"] for line in lines}) == 4


def test_a_failed_request_is_never_an_answer_and_is_asked_again(server, tiny_vlm_dir, tiny_images, tmp_path, no_waits):
    asked = questions(tiny_images, Decoding(12))
    cache = tmp_path / "answer_cache.jsonl"
    server.fail("503")
    served = make_answerer(None, endpoint(server, max_retries=0, concurrency=1), cache)
    try:
        answers = served.submit(asked).result()
    finally:
        served.close()
    assert isinstance(answers[0], RequestFailed) and answers[0].kind == "HTTP 503"
    assert "tiny: HTTP 503 (after 1 attempts)" in answers[0].reason
    assert len(cache.read_text().splitlines()) == 3  # the failure is not cached
    before = len(server.requests)
    again = make_answerer(None, endpoint(server), cache)
    try:
        assert again.submit(asked).result() == LocalAnswerer(tiny_vlm_dir).submit(asked).result()
    finally:
        again.close()
    assert len(server.requests) - before == 1  # only the failed question


def test_a_server_that_ignores_n_or_does_not_serve_the_model_gives_failures(server, tiny_images, monkeypatch):
    served = EndpointAnswerer(ChatConfig(base_url=server.url, model="absent", api_key="EMPTY"))
    try:
        (failed,) = served.submit(questions(tiny_images[:1], Decoding(12))).result()
        assert isinstance(failed, RequestFailed) and failed.kind == "HTTP 404"

        async def one_choice(self, messages, **params):
            return ["only one"]

        monkeypatch.setattr(chat.ChatClient, "complete", one_choice)
        (short,) = served.submit(questions(tiny_images[:1], Decoding(12, 1.0, 1.0, 2, 0))).result()
        assert short == RequestFailed("absent: asked for 2 answers, got 1", "wrong number of choices")
    finally:
        served.close()


def test_a_missing_key_fails_before_anything_is_sent(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="environment variable OPENAI_API_KEY is not set"):
        make_answerer(None, ChatConfig(base_url="http://127.0.0.1:9/v1", model="m"))


def test_the_stream_keeps_later_jobs_in_flight_and_yields_in_order():
    class Recorder:
        concurrency = 4
        name = "recorder"

        def __init__(self):
            self.events = []

        def submit(self, asked):
            self.events.append(("submit", asked[0]))
            return answerer_module.Pending(lambda: (self.events.append(("collect", asked[0])), [["a"]] * len(asked))[1])

    recorder = Recorder()
    jobs = [(index, [index] * 2) for index in range(4)]
    assert [payload for payload, _ in answer_stream(recorder, iter(jobs))] == [0, 1, 2, 3]
    # Job 0 is collected only once jobs 1 and 2 (4 questions) are in flight.
    assert recorder.events[:4] == [("submit", 0), ("submit", 1), ("submit", 2), ("collect", 0)]


def test_one_ahead_yields_each_item_once_the_next_one_is_made():
    made = []

    def items():
        for item in range(3):
            made.append(item)
            yield item

    assert [(item, list(made)) for item in one_ahead(items())] == [(0, [0, 1]), (1, [0, 1, 2]), (2, [0, 1, 2])]
    assert list(one_ahead(iter([]))) == []
