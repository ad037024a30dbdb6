"""Hallucination generators and `curate_text`: provenance, counts, shards, kill and resume."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from fake_openai import FakeOpenAI, prompt_text
from mmedpo.config import CurateTextConfig
from mmedpo.curation.generators import Failure, GeneratorContext, clean_reply, make_generators
from mmedpo.curation.merge import merge_curated
from mmedpo.curation.text import curate_text
from mmedpo.errors import StageIncomplete
from mmedpo.llm.endpoint import ChatConfig
from mmedpo.records import PreferencePair, Reject, Sample, read_jsonl, rejects_path, write_jsonl
from mmedpo.registry import GENERATORS
from mmedpo.shards import parse_shard, shard_path

REPORT = "Small right pleural effusion. No pneumothorax. The heart size is normal."


class Settings(CurateTextConfig):
    """CurateTextConfig with the `chat` fields the config is to gain (until it has them)."""

    generators: list[str] = ["chat", "perturb"]
    chat: ChatConfig = ChatConfig()


def hallucinate(body):
    """The fake endpoint's wrong answers, read off the prompt; meta-text for 'Liver'."""
    answer = re.search(r"Correct answer: (.*)", prompt_text(body)).group(1)
    wrong = {
        "Yes": "No",
        "No": "Yes",
        "left": "right",
        "Liver": "Dispreferred Answer: Kidney",
        REPORT: "Large left pleural effusion. No pneumothorax. The heart size is normal.",
    }
    return f'"{wrong[answer]}"'  # quoted, as chat models often do


def samples(count=6):
    kinds = [
        ("vqa", "Is there a pneumothorax?", "No", "closed"),
        ("vqa", "Which side is the effusion on?", "left", "open"),
        ("vqa", "Which organ is shown?", "Liver", "open"),
        ("report", "Write the report.", REPORT, None),
        ("vqa", "Is the heart enlarged?", "Yes", "closed"),
    ]
    result = []
    for index in range(count):
        task, question, answer, answer_type = kinds[index % len(kinds)]
        result.append(
            Sample(
                id=f"s{index:03d}", task=task, image="x.png", question=question, answer=answer, answer_type=answer_type
            )
        )
    return result


def chat_settings(server, **chat):
    options = {"base_url": server.url, "model": "fake-gpt", "api_key_env": None, "backoff": 0.01, **chat}
    return Settings(candidates=2, chat=ChatConfig(**options))


def test_registry_and_unknown_names():
    assert GENERATORS.names() == ["target", "chat", "perturb"]
    with pytest.raises(ValueError, match="unknown generator 'gpt'; valid: target, chat, perturb"):
        make_generators(["gpt"], Settings(), GeneratorContext())


def test_perturb_provenance():
    (generator,) = make_generators(["perturb"], Settings(), GeneratorContext(seed=7))
    (closed, _, liver, _, _) = generator.generate(samples(5))
    assert [(c.text, c.provenance) for c in closed] == [
        ("Yes", {"generator": "perturb", "seed": 7, "operation": "yes_no_flip"})
    ]
    assert liver == []  # nothing clinical to perturb in "Liver"


def test_chat_generator_sends_the_versioned_prompt_and_records_provenance(tmp_path):
    Image.new("L", (4, 4)).save(tmp_path / "x.png")
    with FakeOpenAI(reply=hallucinate) as server:
        settings = chat_settings(server, send_images=True)
        (generator,) = make_generators(["chat"], settings, GeneratorContext(image_roots=[tmp_path], seed=3))
        results = generator.generate(samples(2))
        assert [c.text for c in results[0]] == ["Yes", "Yes"]  # n=2 choices, quotes stripped
        provenance = results[1][0].provenance
        assert provenance["generator"] == "chat" and provenance["model"] == "fake-gpt"
        assert provenance["prompt_version"] == "v1" and isinstance(provenance["seed"], int)
        body = server.requests[1] if "effusion" in prompt_text(server.requests[1]) else server.requests[0]
        assert body["n"] == 2 and body["seed"] == provenance["seed"]
        assert "Question: Which side is the effusion on?\nCorrect answer: left" in prompt_text(body)
        assert body["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")


def test_chat_generator_reports_an_unreadable_image_and_a_failed_request(tmp_path):
    with FakeOpenAI(reply=hallucinate) as server:
        settings = chat_settings(server, send_images=True)
        (generator,) = make_generators(["chat"], settings, GeneratorContext(image_roots=[tmp_path]))
        (result,) = generator.generate(samples(1))
        assert isinstance(result, Failure) and result.code == "image" and "x.png" in result.reason
        assert server.requests == []
        settings = chat_settings(server, max_retries=1)
        (generator,) = make_generators(["chat"], settings, GeneratorContext())
        server.fail("500", "500")
        (result,) = generator.generate(samples(1))
        assert result == Failure("request_failed", "chat: HTTP 500 (after 2 attempts)", "HTTP 500")


def test_clean_reply():
    assert clean_reply('  "No pneumothorax."\n') == "No pneumothorax."
    assert clean_reply("“left”") == "left"
    assert clean_reply('Say "left"') == 'Say "left"'


def test_curate_text_counts_per_generator_and_drop_reason(tmp_path):
    out = tmp_path / "pairs.text.jsonl"
    with FakeOpenAI(reply=hallucinate) as server:
        server.fail("500")  # one request at a time, no retry: the first sample's request fails for good
        settings = chat_settings(server, max_retries=0, concurrency=1)
        with pytest.raises(StageIncomplete, match=r"1 of 5 samples left unpaired .*\(chat: HTTP 500: 1\)") as error:
            curate_text(samples(5), out, settings, [], seed=0, show_progress=False)
        # s000's chat request failed: it is neither paired from perturbation alone (which would shift the
        # generators' mix) nor rejected, but left for the next run.
        assert "s000" not in {p.sample_id for p in read_jsonl(out, PreferencePair)}
        assert error.value.summary["failed"] == 1 and error.value.summary["failures"] == {"chat: HTTP 500": 1}
        before = len(server.requests)
        summary = curate_text(samples(5), out, settings, [], seed=0, show_progress=False)
        assert len(server.requests) - before == 1  # only s000 is asked again
    pairs, rejects = read_jsonl(out, PreferencePair), read_jsonl(rejects_path(out), Reject)
    by_sample = {p.sample_id: p for p in pairs}
    # s002 ("Liver"): chat's answer is meta-text and perturbation has nothing, so it is rejected with the reason.
    assert by_sample["s000"].rejected == "Yes" and by_sample["s000"].provenance["generator"] == "chat"
    assert by_sample["s001"].rejected == "right" and by_sample["s001"].provenance["prompt_version"] == "v1"
    assert [(r.id, r.reason) for r in rejects] == [("s002", "no candidate contradicts the answer")]
    assert summary.as_dict() == {
        "read": 5,
        "paired": 1,
        "rejected": 0,
        "already_done": 4,
        "failed": 0,
        "pairs_by_generator": {"chat": 1},
        "drop_reasons": {},
        "failures": {},
    }
    assert error.value.summary == {
        "read": 5,
        "paired": 3,
        "rejected": 1,
        "already_done": 0,
        "failed": 1,
        "pairs_by_generator": {"chat": 3},
        "drop_reasons": {"chat:meta_text": 2},
        "failures": {"chat: HTTP 500": 1},
    }


def test_shards_merge_into_what_one_run_writes(tmp_path):
    data = samples(11)
    with FakeOpenAI(reply=hallucinate) as server:
        settings = chat_settings(server)
        curate_text(data, tmp_path / "whole" / "pairs.text.jsonl", settings, [], show_progress=False)
        sharded = tmp_path / "sharded" / "pairs.text.jsonl"
        curate_text(data, sharded, settings, [], shard=parse_shard("1/3"), show_progress=False)
        with pytest.raises(ValueError, match="shard 2/3 is missing"):
            merge_curated(data, sharded, 3)
        for index in (2, 3):
            summary = curate_text(data, sharded, settings, [], shard=(index, 3), show_progress=False)
        assert summary.read == 3  # s002, s005, s008 of 11
        write_jsonl(shard_path(sharded, (3, 3)), read_jsonl(shard_path(sharded, (3, 3)), PreferencePair)[:-1])
        with pytest.raises(ValueError, match="shard 3/3 is unfinished: 1 samples missing"):
            merge_curated(data, sharded, 3)
        curate_text(data, sharded, settings, [], shard=(3, 3), show_progress=False)  # resume the shard
    assert merge_curated(data, sharded, 3) == {"shards": 3, "pairs": 9, "paired": 9, "rejected": 2}
    for name in ("pairs.text.jsonl", "pairs.text.rejects.jsonl"):
        assert (sharded.parent / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    with pytest.raises(ValueError, match="i/n with 1 <= i <= n"):
        parse_shard("4/3")


KILLABLE = """
import sys, json
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_generators import Settings
from mmedpo.curation.text import curate_text
from mmedpo.records import Sample
data = [Sample.model_validate_json(line) for line in Path({samples!r}).read_text().splitlines()]
settings = Settings.model_validate_json({settings!r})
curate_text(data, Path({out!r}), settings, [], seed=5, show_progress=False)
"""


@pytest.mark.slow
def test_a_killed_run_resumes_to_what_an_uninterrupted_run_writes(tmp_path):
    data = samples(100)  # 4 chunks of 32
    write_jsonl(tmp_path / "samples.jsonl", data)
    with FakeOpenAI(reply=hallucinate, latency=0.05) as server:
        settings = chat_settings(server, concurrency=2)  # ~0.8 s a chunk: time to kill it mid-run
        killed = tmp_path / "killed" / "pairs.text.jsonl"
        code = KILLABLE.format(
            tests=str(Path(__file__).parent),
            samples=str(tmp_path / "samples.jsonl"),
            settings=settings.model_dump_json(),
            out=str(killed),
        )
        process = subprocess.Popen([sys.executable, "-c", code])
        deadline = time.monotonic() + 60
        while not (killed.exists() and killed.read_text().count("\n") >= 20) and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        written = killed.read_text().count("\n") + rejects_path(killed).read_text().count("\n")
        assert 0 < written < len(data), "the kill should land mid-run"
        summary = curate_text(data, killed, settings, [], seed=5, show_progress=False)
        assert summary.skipped_done == written and summary.skipped_done + summary.paired + summary.rejected == 100
        clean = tmp_path / "clean" / "pairs.text.jsonl"
        curate_text(data, clean, settings, [], seed=5, show_progress=False)
    for path in (clean, rejects_path(clean)):
        assert (killed.parent / path.name).read_bytes() == path.read_bytes()
    assert len(read_jsonl(clean, PreferencePair)) == 80 and json.loads(clean.read_text().splitlines()[0])["id"]


def test_a_configured_generator_that_made_no_pair_fails_the_stage_unless_allowed(tmp_path):
    from helpers import make_pair
    from mmedpo.config import load_config
    from mmedpo.curation.text import check_generators

    out = tmp_path / "pairs.text.jsonl"
    write_jsonl(out, [make_pair(i, provenance={"generator": "perturb"}) for i in range(3)])
    settings = CurateTextConfig(generators=["target", "perturb"])
    with pytest.raises(ValueError, match=r"generators \['target'\] made no pair .*perturb 3"):
        check_generators(out, settings)
    allowed = settings.model_copy(update={"allow_empty_generators": ["target"]})
    assert check_generators(out, allowed) == {"perturb": 3}
    with pytest.raises(ValueError, match="curate_text.allow_empty_generators"):
        load_config(None, ["curate_text.allow_empty_generators=[targte]"])
