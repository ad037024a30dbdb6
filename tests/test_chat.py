"""The OpenAI-compatible chat client and the `chat` judge, against a real loopback HTTP server."""

import base64
import io
import random
import socket
import time

import pytest
from PIL import Image

from fake_openai import FakeOpenAI, prompt_text
from mmedpo.config import CurateTextConfig
from mmedpo.curation.generators import ChatGenerator, GeneratorContext
from mmedpo.llm import chat
from mmedpo.llm.chat import ChatError, ChatSession, chat_many, retry_after_seconds, retry_delay, user_message
from mmedpo.llm.endpoint import ChatConfig
from mmedpo.prompts import load_prompt
from mmedpo.records import Sample
from mmedpo.registry import JUDGES
from mmedpo.scoring.cache import JudgeCache, cache_key
from mmedpo.scoring.chat_judge import ChatJudge, parse_judge_reply
from mmedpo.scoring.judges import Verdict


def config(server, **overrides):
    settings = {"base_url": server.url, "model": "fake", "api_key_env": None, "backoff": 0.01, "timeout": 2}
    return ChatConfig(**{**settings, **overrides})


def ask(cfg, text="Is there a pneumothorax?", **params):
    return chat_many(cfg, [([user_message(text)], params)])[0]


def test_reply_with_n_choices_and_the_key_from_the_named_env_var(monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "sk-test-123")
    with FakeOpenAI(reply=lambda body: ["No.", "Yes."]) as server:
        assert ask(config(server, api_key_env="FAKE_KEY"), n=2, temperature=0.5) == ["No.", "Yes."]
        (body,) = server.requests
        assert body["model"] == "fake" and body["n"] == 2 and body["temperature"] == 0.5
        assert body["messages"] == [{"role": "user", "content": "Is there a pneumothorax?"}]
        assert server.headers[0]["Authorization"] == "Bearer sk-test-123"


def test_missing_key_is_one_clear_line(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(ValueError, match="environment variable NO_SUCH_KEY is not set") as error:
        chat_many(ChatConfig(api_key_env="NO_SUCH_KEY"), [([user_message("hi")], {})])
    assert "\n" not in str(error.value) and "api_key: EMPTY" in str(error.value)


def test_key_and_endpoint_default_to_the_openai_environment_variables(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/")
        assert ask(ChatConfig(model="fake")) == ["No."]
        assert server.headers[0]["Authorization"] == "Bearer sk-from-env"


def test_api_key_empty_reaches_a_keyless_server_without_a_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAI() as server:
        assert ask(ChatConfig(base_url=server.url, model="fake", api_key="EMPTY")) == ["No."]
        assert "Authorization" not in server.headers[0]


def test_a_key_written_in_the_config_is_refused_without_repeating_it():
    with pytest.raises(ValueError, match="only EMPTY") as error:
        ChatConfig(api_key="sk-live-abc123")
    assert "sk-live-abc123" not in str(error.value)


def test_max_tokens_extra_body_and_extra_headers_are_sent():
    with FakeOpenAI() as server:
        extras = {"max_tokens": 64, "extra_body": {"top_k": 20, "temperature": 1.5}, "extra_headers": {"X-Route": "a"}}
        assert ask(config(server, **extras), temperature=0) == ["No."]
        (body,) = server.requests
        assert (body["max_tokens"], body["top_k"]) == (64, 20)
        assert body["temperature"] == 0  # the stage's own fields win over extra_body
        assert server.headers[0]["X-Route"] == "a"


@pytest.fixture
def waits(monkeypatch):
    """The backoff delays the client asks for, recorded instead of slept."""
    recorded = []

    async def record(seconds):
        recorded.append(seconds)

    monkeypatch.setattr(chat, "wait_before_retry", record)
    return recorded


def test_retry_delay_is_capped_exponential_with_jitter():
    rng = random.Random(0)
    assert retry_delay(0, 90.0, 1.0, 60.0, rng) == 60.0  # a long Retry-After is capped
    for retry in range(4):  # Retry-After 0 keeps the exponential backoff: 1, 2, 4, 8 s times 1-1.5
        assert 2**retry <= retry_delay(retry, 0.0, 1.0, 60.0, rng) <= 1.5 * 2**retry
    assert 5.0 <= retry_delay(0, 5.0, 1.0, 60.0, rng) <= 7.5  # Retry-After above the backoff is honoured
    assert retry_delay(9, None, 1.0, 60.0, rng) == 60.0  # 512 s of backoff is capped too
    assert len({retry_delay(2, None, 1.0, 60.0, rng) for _ in range(20)}) == 20  # jittered


def test_retry_after_is_honoured_up_to_the_cap(waits):
    with FakeOpenAI() as server:
        server.fail("429:3", "429:90", "429:0", "429:0")
        assert ask(config(server, backoff=1.0)) == ["No."]
        assert len(server.requests) == 5
    assert 3.0 <= waits[0] <= 4.5  # Retry-After 3, over the 1 s backoff of the first retry
    assert waits[1] == 60.0  # Retry-After 90, capped at max_backoff
    assert 4.0 <= waits[2] <= 6.0 and 8.0 <= waits[3] <= 12.0  # Retry-After 0: the backoff still applies


def test_500_timeout_garbage_and_wrong_json_are_retried():
    with FakeOpenAI() as server:
        server.fail("500", "hang:1.5", "garbage", "wrong_json")
        assert ask(config(server, timeout=0.5)) == ["No."]
        assert len(server.requests) == 5


def test_retries_run_out_into_an_error_naming_the_fault():
    with FakeOpenAI() as server:
        server.fail("500", "500", "500")
        result = ask(config(server, max_retries=2))
        assert isinstance(result, ChatError) and "HTTP 500 (after 3 attempts)" in str(result)
        assert len(server.requests) == 3


def test_a_bad_request_is_not_retried():
    with FakeOpenAI() as server:
        server.fail("400")
        result = ask(config(server))
        assert isinstance(result, ChatError) and "HTTP 400" in str(result) and "fault 400" in str(result)
        assert result.kind == "HTTP 400"
        assert len(server.requests) == 1


def test_concurrency_is_bounded_and_results_keep_input_order():
    with FakeOpenAI(reply=lambda body: prompt_text(body).upper(), latency=0.05) as server:
        texts = [f"question {i}" for i in range(12)]
        results = chat_many(config(server, concurrency=3), [([user_message(t)], {}) for t in texts])
        assert results == [[t.upper()] for t in texts]
        assert server.max_in_flight == 3


def test_a_session_reuses_its_connections_batch_after_batch():
    with FakeOpenAI(latency=0.02) as server, ChatSession(config(server, concurrency=4)) as session:
        for _ in range(3):
            assert session.chat_many([([user_message("q")], {})] * 8) == [["No."]] * 8
        assert server.connections == 4


def test_the_chat_generator_sends_the_next_chunk_before_the_last_reply_of_this_one():
    chunks = [
        [Sample(id=f"s{c}-{i}", task="vqa", image="x.png", question="Q?", answer="No") for i in range(4)]
        for c in range(3)
    ]
    with FakeOpenAI(latency=0.2) as server:
        settings = CurateTextConfig(generators=["chat"], chat=config(server, concurrency=6))
        stream = ChatGenerator(settings, GeneratorContext()).generate_chunks(chunks)
        assert [len(results) for results in stream] == [4, 4, 4]
        assert server.max_in_flight == 6  # chunk by chunk it would be 4


def test_rate_limit_spaces_requests():
    with FakeOpenAI() as server:
        start = time.monotonic()
        chat_many(config(server, concurrency=8, rate_limit=20), [([user_message("q")], {})] * 6)
        assert time.monotonic() - start >= 5 / 20  # six starts, 50 ms apart


def test_image_goes_as_a_png_data_url():
    image = Image.new("L", (8, 6), 128)
    with FakeOpenAI() as server:
        ask_image = chat_many(config(server), [([user_message("Describe.", image)], {})])
        assert ask_image == [["No."]]
        image_part, text_part = server.requests[0]["messages"][0]["content"]
        assert text_part == {"type": "text", "text": "Describe."}
        url = image_part["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (8, 6)


def test_requests_go_through_the_proxy_the_environment_names(monkeypatch):
    for name in ("HTTP_PROXY", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    with FakeOpenAI(reply=lambda body: "via proxy") as proxy:  # answers the proxied POST itself
        monkeypatch.setenv("http_proxy", proxy.url.removesuffix("/v1"))
        cfg = ChatConfig(base_url="http://endpoint.invalid/v1", model="fake", api_key_env=None, max_retries=0)
        assert ask(cfg) == ["via proxy"]


def test_retry_after_forms():
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: now


@pytest.mark.parametrize(
    "reply, expected",
    [
        ('{"score": 5, "reason": "invents a pneumothorax"}', (1.0, "invents a pneumothorax")),
        ('{"score": 1, "reason": "rewording"}', (0.0, "rewording")),
        ('Sure! ```json\n{"Score": "3", "reason": "side"}\n```', (0.5, "side")),
        ("score: 2", (0.25, "no reason given")),
    ],
)
def test_judge_reply_parsing(reply, expected):
    assert parse_judge_reply(reply) == expected


@pytest.mark.parametrize(
    "reply, why",
    [
        ("The answers differ a lot.", "no score"),
        ('{"score": 7, "reason": "x"}', "outside 1-5"),
        ('{"score": 0.8}', "outside 1-5"),  # the prompt asks for 1-5: 0.8 is not guessed to mean 4.2
        ('{"score": "high"}', "not a number"),
    ],
)
def test_unparseable_judge_replies_leave_the_pair_unscored(reply, why):
    score, reason = parse_judge_reply(reply)
    assert score is None and why in reason


def judge_reply(body):
    """4 for an invented pneumothorax, 1 for everything else; garbage for the question 'broken'."""
    text = prompt_text(body)
    if "Question: broken" in text:
        return "I am not sure how to rate this."
    return '{"score": 4, "reason": "invented finding"}' if "Wrong answer: Pneumothorax" in text else '{"score": 1}'


def test_chat_judge_against_a_server_with_faults():
    assert JUDGES.load("chat") is ChatJudge
    with FakeOpenAI(reply=judge_reply) as server:
        judge = ChatJudge(base_url=server.url, model="med-llm", api_key_env=None, backoff=0.01, max_retries=2)
        assert (judge.name, judge.version, judge.model) == ("chat", "v1", "med-llm")
        server.fail("429:0", "500")
        items = [
            ("Any abnormality?", "No pneumothorax.", "Pneumothorax."),
            ("Any abnormality?", "Normal.", "Normal study."),
            ("broken", "Yes", "No"),
        ]
        verdicts = dict(judge.score_many(items))
        assert verdicts[0] == Verdict(0.75, "invented finding")
        assert verdicts[1] == Verdict(0.0, "no reason given")
        # The judge answered, but not with a score: unscored for good, not a failed request.
        assert verdicts[2].score is None and verdicts[2].reason.startswith("unparseable reply")
        assert verdicts[2].failure == ""
        prompts = [prompt_text(body) for body in server.requests]
        assert (
            load_prompt("judge", "v1")[0]
            .replace("$question", items[2][0])
            .replace("$chosen", "Yes")
            .replace("$rejected", "No")
            in prompts
        )
        assert all(body["temperature"] == 0 for body in server.requests)
        server.fail("500", "500", "500")
        failed = judge.score("Any abnormality?", "Normal.", "Effusion.")
        assert failed.score is None and "request failed: HTTP 500" in failed.reason
        assert failed.failure == "HTTP 500"


def test_cached_verdicts_send_no_second_request(tmp_path):
    items = [("Any abnormality?", "No pneumothorax.", "Pneumothorax."), ("Any abnormality?", "Normal.", "Normal.")]
    with FakeOpenAI(reply=judge_reply) as server:
        judge = ChatJudge(base_url=server.url, model="m", api_key_env=None)
        for _ in range(2):
            cache = JudgeCache(tmp_path / "judge_cache.jsonl")
            keys = [cache_key(judge.name, judge.version, judge.model, *item) for item in items]
            todo = [i for i, key in enumerate(keys) if cache.get(key) is None]
            for position, verdict in judge.score_many([items[i] for i in todo]):
                cache.put(keys[todo[position]], verdict.score, verdict.reason)
        assert len(server.requests) == 2  # the second pass found both in the cache
        assert (cache.hits, cache.misses) == (2, 0)


def test_a_bad_key_stops_the_client_after_five_requests():
    with FakeOpenAI() as server:
        server.always = "401"
        results = chat_many(config(server, concurrency=1), [([user_message(f"q{i}")], {}) for i in range(40)])
        assert len(server.requests) == 5  # not 40
    kinds = [result.kind for result in results]
    assert kinds == ["HTTP 401"] * 5 + ["not sent after 5 x HTTP 401"] * 35
    assert "5 HTTP 401 failures in a row" in str(results[-1]) and "fault 401" in str(results[-1])


def test_the_breaker_counts_failures_in_a_row_only():
    with FakeOpenAI() as server:
        server.fail("403", "403", "403", "403", None, "403", "403", "403", "403")  # None: a normal reply
        results = chat_many(config(server, concurrency=1), [([user_message(f"q{i}")], {}) for i in range(10)])
        assert len(server.requests) == 10
    assert [isinstance(result, ChatError) for result in results] == [True] * 4 + [False] + [True] * 4 + [False]


def test_the_breaker_stops_retrying_a_refused_connection(waits):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = ChatConfig(base_url=f"http://127.0.0.1:{port}/v1", api_key="EMPTY", concurrency=1, circuit_breaker=3)
    with ChatSession(cfg) as session:
        results = session.chat_many([([user_message(f"q{i}")], {}) for i in range(20)])
        assert session.client.requests_sent == 3  # 3 attempts of the first request, then nothing
    assert len(waits) == 2 and all(result.kind == "not sent after 3 x connection error" for result in results)


def test_a_key_echoed_in_an_error_body_is_scrubbed(monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "sk-live-0123456789")
    with FakeOpenAI() as server:
        server.fail("echo_key")
        result = ask(config(server, api_key_env="FAKE_KEY"))
    assert "Bearer ***" in str(result) and "sk-live-0123456789" not in str(result)
