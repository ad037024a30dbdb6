"""A dead or misconfigured endpoint never yields a finished stage, and a rerun retries only what failed.

Every test talks to a real loopback server (tests/fake_openai.py); backoff delays are recorded, not slept.
"""

from __future__ import annotations

import json
import socket

import pytest
import typer
from pydantic import ValidationError
from typer.testing import CliRunner

from fake_openai import FakeOpenAI, prompt_text
from mmedpo.cli import app, friendly_errors
from mmedpo.config import CurateTextConfig, RunConfig, ScoreConfig, dump_config, load_config
from mmedpo.curation.text import curate_text
from mmedpo.errors import StageIncomplete
from mmedpo.layout import RunLayout
from mmedpo.llm import chat
from mmedpo.records import PreferencePair, Reject, Sample, read_jsonl, rejects_path
from mmedpo.scoring.panel import score_pairs

KEY = "sk-live-0123456789abcdef"


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    async def record(seconds):
        pass

    monkeypatch.setattr(chat, "wait_before_retry", record)


def verdict(body):
    """4 when the wrong answer invents a finding, else 1."""
    return '{"score": 4, "reason": "invented finding"}' if "Wrong answer: Yes" in prompt_text(body) else '{"score": 1}'


def text_pairs(count: int, distinct: int) -> list[PreferencePair]:
    """`count` text pairs whose (question, chosen, rejected) repeat every `distinct` pairs, as in real data."""
    answers = ["Yes", "Maybe", "No, but small", "Left", "Right", "Both"]
    return [
        PreferencePair(
            id=f"p{i}",
            sample_id=f"s{i}",
            task="vqa",
            kind="text",
            image="a.png",
            question=f"Is there a pneumothorax ({i % distinct})?",
            chosen="No",
            rejected=answers[i % distinct % len(answers)],
        )
        for i in range(count)
    ]


def settings(url: str, **chat_options) -> ScoreConfig:
    options = {"judge": "chat", "base_url": url, "model": "m", "api_key": "EMPTY", "max_retries": 1, **chat_options}
    return ScoreConfig(judges=["gpt"], judge_options={"gpt": options})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    "fault, why",
    [
        ("500", "HTTP 500"),
        ("503", "HTTP 503"),
        ("garbage", "malformed reply"),
        ("401", "HTTP 401"),
        ("refused", "connection error"),
    ],
)
def test_a_dead_endpoint_leaves_score_incomplete_and_the_rerun_asks_only_again(tmp_path, fault, why):
    pairs = text_pairs(12, distinct=4)
    out = tmp_path / "pairs.scored.jsonl"
    port = free_port()
    config = settings(f"http://127.0.0.1:{port}/v1", concurrency=1)
    if fault == "refused":  # nothing listens on the port yet
        with pytest.raises(StageIncomplete) as error:
            score_pairs(pairs, out, config, show_progress=False)
    else:
        with FakeOpenAI(reply=verdict, port=port) as server:
            server.always = fault
            with pytest.raises(StageIncomplete) as error:
                score_pairs(pairs, out, config, show_progress=False)
            assert len(server.requests) == (4 if fault == "401" else 4 * 2)  # 4 items; a 401 is not retried
    summary = error.value.summary
    assert (summary["pairs"], summary["scored"], summary["unscored"], summary["failed"]) == (12, 0, 0, 12)
    assert sum(summary["failures"].values()) == 12 and all(why in key for key in summary["failures"])
    message = str(error.value)
    assert "\n" not in message and message.startswith("score: 12 of 12 pairs not scored") and why in message
    cache = tmp_path / "judge_cache.jsonl"
    assert not cache.exists() or cache.read_text() == ""  # nothing cached from a failure
    with FakeOpenAI(reply=verdict, port=port) as server:  # the endpoint recovers
        summary = score_pairs(pairs, out, config, show_progress=False)
        assert len(server.requests) == 4  # each distinct item once
    assert (summary.scored, summary.unscored, summary.failed) == (12, 0, 0)
    assert len(cache.read_text().splitlines()) == 4


def test_the_rerun_sends_only_the_failed_items_and_completes(tmp_path):
    pairs = text_pairs(10, distinct=5)
    out = tmp_path / "pairs.scored.jsonl"
    with FakeOpenAI(reply=verdict) as server:
        config = settings(server.url, concurrency=1, max_retries=0)
        server.fail("503", None, "503")
        with pytest.raises(StageIncomplete) as error:
            score_pairs(pairs, out, config, show_progress=False)
        assert len(server.requests) == 5
        assert error.value.summary["failures"] == {"gpt: HTTP 503": 4}  # 2 items, each shared by 2 pairs
        assert error.value.summary["scored"] == 6 and len(read_jsonl(out, PreferencePair)) == 6
        summary = score_pairs(pairs, out, config, show_progress=False)
        assert len(server.requests) == 5 + 2
        clean = score_pairs(pairs, tmp_path / "clean" / "pairs.scored.jsonl", config, show_progress=False)
    assert summary.failed == 0 and summary.cache == {"hits": 6, "misses": 4}
    assert out.read_text() == (tmp_path / "clean" / "pairs.scored.jsonl").read_text()
    assert summary.judge_means == clean.judge_means


def test_duplicate_items_are_requested_once(tmp_path):
    pairs = text_pairs(30, distinct=6)
    with FakeOpenAI(reply=verdict) as server:
        summary = score_pairs(pairs, tmp_path / "pairs.scored.jsonl", settings(server.url), show_progress=False)
        assert len(server.requests) == 6
    scored = read_jsonl(tmp_path / "pairs.scored.jsonl", PreferencePair)
    assert summary.scored == 30 and [p.scores["gpt"] for p in scored[:6]] == [0.75, 0, 0, 0, 0, 0]
    assert [p.scores["gpt"] for p in scored[6:12]] == [0.75, 0, 0, 0, 0, 0]


def test_a_bad_key_is_sent_five_times_not_once_per_pair(tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-wrong")
    pairs = text_pairs(40, distinct=40)
    with FakeOpenAI(reply=verdict) as server:
        server.always = "401"
        config = settings(server.url, api_key=None, api_key_env="JUDGE_KEY", concurrency=4)
        with pytest.raises(StageIncomplete) as error:
            score_pairs(pairs, tmp_path / "pairs.scored.jsonl", config, show_progress=False)
        # Requests already in flight when the fifth 401 comes back may still land: at most concurrency - 1.
        assert 5 <= len(server.requests) <= 8
    failures = error.value.summary["failures"]
    assert failures["gpt: HTTP 401"] == len(server.requests)
    assert failures["gpt: not sent after 5 x HTTP 401"] == 40 - len(server.requests)


def test_a_key_echoed_by_the_server_reaches_no_file_and_no_console(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JUDGE_KEY", KEY)
    out = tmp_path / "pairs.scored.jsonl"
    with FakeOpenAI(reply=verdict) as server:
        server.always = "echo_key"
        config = settings(server.url, api_key=None, api_key_env="JUDGE_KEY")
        with pytest.raises(StageIncomplete) as error:
            score_pairs(text_pairs(6, distinct=6), out, config, show_progress=False)
        with pytest.raises(typer.Exit):  # the command line prints the message
            friendly_errors(score_pairs)(text_pairs(6, distinct=6), out, config, show_progress=False)
        assert server.headers[0]["Authorization"] == f"Bearer {KEY}"  # it was sent, and echoed back
    rejects = (tmp_path / "pairs.scored.rejects.jsonl").read_text()
    assert "Authorization: Bearer ***" in rejects and "Bearer ***" in str(error.value)
    written = [path.read_text() for path in tmp_path.rglob("*") if path.is_file()]
    printed = capsys.readouterr()
    assert "Bearer ***" in " ".join(printed.err.split())
    for text in [*written, str(error.value), json.dumps(error.value.summary), printed.out, printed.err]:
        assert KEY not in text


def test_a_missing_key_is_one_line_before_any_request(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("JUDGE_KEY", raising=False)
    with FakeOpenAI(reply=verdict) as server:
        config = settings(server.url, api_key=None, api_key_env="JUDGE_KEY")
        with pytest.raises(ValueError) as error:
            score_pairs(text_pairs(3, distinct=3), tmp_path / "s.jsonl", config, show_progress=False)
        with pytest.raises(typer.Exit):  # the command line prints it as its one-line error
            friendly_errors(score_pairs)(text_pairs(3, distinct=3), tmp_path / "s.jsonl", config, show_progress=False)
        assert server.requests == []
    message = str(error.value)
    assert "\n" not in message and message.startswith("panel member 'gpt': chat endpoint")
    assert "environment variable JUDGE_KEY is not set" in message
    printed = capsys.readouterr().err
    assert " ".join(printed.split()) == f"error: {message}"  # rich wraps it to the terminal's width, no more


def test_the_run_config_dump_holds_no_key(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_KEY", KEY)
    config = load_config(None, ["curate_text.chat.api_key_env=MY_KEY", "score.judge_options={g: {api_key: EMPTY}}"])
    dump_config(config, tmp_path / "config.yaml")
    dumped = (tmp_path / "config.yaml").read_text()
    assert "api_key_env: MY_KEY" in dumped and KEY not in dumped
    with pytest.raises(ValueError, match="g.api_key: only EMPTY") as error:
        load_config(None, [f"score.judge_options={{g: {{judge: chat, api_key: {KEY}}}}}"])
    assert KEY not in str(error.value)
    with pytest.raises(ValidationError) as error:  # pydantic's own message would show the value
        RunConfig.model_validate({"curate_text": {"chat": {"api_key": KEY}}})
    assert "curate_text.chat.api_key" in str(error.value) and KEY not in str(error.value)


def hallucinate(body):
    return "Yes" if "Correct answer: No" in prompt_text(body) else "No"


@pytest.mark.parametrize("fault", ["503", "401"])
def test_a_dead_chat_generator_leaves_curate_text_incomplete_without_shifting_the_mix(tmp_path, fault):
    samples = [
        Sample(id=f"s{i}", task="vqa", image="x.png", question="Is there a nodule?", answer=["No", "Yes"][i % 2])
        for i in range(40)
    ]
    chat_options = {"model": "m", "api_key": "EMPTY", "max_retries": 1, "concurrency": 2}
    out = tmp_path / "pairs.text.jsonl"
    with FakeOpenAI(reply=hallucinate) as server:
        settings = CurateTextConfig(generators=["chat", "perturb"], chat={"base_url": server.url, **chat_options})
        server.always = fault
        with pytest.raises(StageIncomplete, match="40 of 40 samples left unpaired") as error:
            curate_text(samples, out, settings, [], show_progress=False)
        # perturbation alone could pair every sample: none is, so the mix of generators cannot shift
        assert read_jsonl(out, PreferencePair) == [] and read_jsonl(rejects_path(out), Reject) == []
        assert error.value.summary["failed"] == 40
        # 2 attempts each; a bad key: the breaker's 5, and 1 more that was in flight (concurrency 2) at most
        assert len(server.requests) in ({80} if fault == "503" else {5, 6})
        server.always = None
        before = len(server.requests)
        summary = curate_text(samples, out, settings, [], show_progress=False)
        assert len(server.requests) - before == 40
    assert (summary.paired, summary.failed, dict(summary.pairs_by_generator)) == (40, 0, {"chat": 40})


@pytest.mark.slow
def test_a_run_with_a_dead_judge_stops_at_an_incomplete_score_and_resumes_it(tmp_path, monkeypatch):
    small = [
        *("data.n_sft=24", "data.n_pref=10", "data.n_test=8", "data.image_size=64", "model.image_size=32"),
        *("model.text_hidden=32", "model.vision_hidden=32", "model.layers=1", "model.sft_epochs=1"),
        *("model.vision_pretrain_epochs=1", "curate_text.generators=[perturb]", f"runs_dir={tmp_path}"),
    ]
    with FakeOpenAI(reply=verdict) as server:
        judge = {"judge": "chat", "model": "m", "base_url": server.url, "api_key_env": "JUDGE_KEY", "max_retries": 1}
        overrides = [*small, "score.judges=[findings, gpt]", f"score.judge_options={json.dumps({'gpt': judge})}"]
        command = ["score", *(word for override in overrides for word in ("-o", override))]
        monkeypatch.delenv("JUDGE_KEY", raising=False)
        missing = CliRunner().invoke(app, command)
        assert missing.exit_code == 2 and "JUDGE_KEY is not set" in missing.output
        assert "Traceback" not in missing.output and server.requests == []
        monkeypatch.setenv("JUDGE_KEY", KEY)
        server.always = "503"
        dead = CliRunner().invoke(app, command)
        layout = RunLayout.of(load_config(None, overrides))
        pairs = read_jsonl(layout.text_pairs, PreferencePair)
        distinct = {(p.question, p.chosen, p.rejected) for p in pairs}
        assert dead.exit_code != 0 and "Traceback" not in dead.output
        assert f"score: {len(pairs)} of " in " ".join(dead.output.split())  # every text pair; visual pairs are fine
        state = json.loads(layout.stage_state("score").read_text())
        assert state["status"] == "incomplete" and state["summary"]["failures"] == {"gpt: HTTP 503": len(pairs)}
        assert len(server.requests) == 2 * len(distinct)  # two attempts per distinct item
        server.always = None
        sent = len(server.requests)
        assert CliRunner().invoke(app, command).exit_code == 0  # the endpoint is back: score runs again
        assert len(server.requests) - sent == len(distinct)
        state = json.loads(layout.stage_state("score").read_text())
        assert state["status"] == "done" and state["summary"]["failed"] == 0
        assert state["summary"]["scored"] == state["summary"]["pairs"] > len(pairs)
    assert KEY not in "".join(path.read_text(errors="replace") for path in tmp_path.rglob("*.json*"))
    assert KEY not in (layout.config).read_text()
