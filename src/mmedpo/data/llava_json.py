"""The MMedPO preference JSON (LLaVA conversation format), read and written losslessly.

Each record is one turn of LLaVA conversation for the chosen and the rejected
answer, a `weighted_score` (the clinical relevance score in [0, 1]: a pair's
`clinical_score`, never its training weight), and for visual pairs a `rejected_image`:

    {"id": 761, "image": "xmlab205/source.jpg",
     "conversations":          [{"from": "human", "value": "<image>\\nQUESTION"},
                                {"from": "gpt",   "value": " ANSWER"}],
     "rejected_conversations": [{"from": "human", "value": "<image>\\nQUESTION"},
                                {"from": "gpt",   "value": " REJECTED"}],
     "weighted_score": 0.8}

Reading strips the `<image>` token and the leading space of answers, so the
texts are clean for training. Whatever the writer would not reproduce exactly
(an integer id or score, other whitespace, the image token elsewhere, another key
order, unknown keys) is kept in `provenance["llava_raw"]`, and used again on
writing as long as the cleaned text still matches. Files are written as the
released ones are (`json.dumps(records, indent=4, ensure_ascii=True)`, no final
newline), so a released file read and written back is the same file, byte for byte.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mmedpo.data.json_files import bad_utf8, json_records
from mmedpo.records import PreferencePair, Reject, describe_error

IMAGE_TOKEN = "<image>"
YES_NO = {"yes", "no"}


@dataclass
class ReadResult:
    pairs: list[PreferencePair] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)

    @property
    def read(self) -> int:
        return len(self.pairs) + len(self.rejects)


def clean_question(human: str) -> str:
    return human.replace(IMAGE_TOKEN, "").strip()


def render_question(question: str) -> str:
    return f"{IMAGE_TOKEN}\n{question}"


def render_answer(answer: str) -> str:
    return f" {answer}"


def _turns(record: dict, key: str) -> tuple[str, str]:
    turns = record.get(key)
    if not isinstance(turns, list) or len(turns) < 2:
        raise ValueError(f"{key} must be a list of a human and a gpt turn")
    human, gpt = turns[0], turns[1]
    if not (isinstance(human, dict) and isinstance(gpt, dict)):
        raise ValueError(f"{key} turns must be objects with 'from' and 'value'")
    if human.get("from") != "human" or gpt.get("from") != "gpt":
        raise ValueError(f"{key} must start with a human turn followed by a gpt turn")
    if not isinstance(human.get("value"), str) or not isinstance(gpt.get("value"), str):
        raise ValueError(f"{key} turn values must be strings")
    return human["value"], gpt["value"]


def _infer_task(records: list[dict]) -> str:
    """Reports are long free text; VQA answers are a few words."""
    lengths = []
    for record in records:
        try:
            lengths.append(len(_turns(record, "conversations")[1].split()))
        except ValueError:
            continue
    lengths.sort()
    return "report" if lengths and lengths[len(lengths) // 2] > 12 else "vqa"


def record_to_pair(record: Any, task: str) -> PreferencePair:
    """One MMedPO JSON record as a pair; raises ValueError saying what is wrong."""
    if not isinstance(record, dict):
        raise ValueError(f"record must be an object, got {type(record).__name__}")
    if "id" not in record:
        raise ValueError("missing 'id'")
    raw_id = record["id"]
    if not isinstance(raw_id, (str, int)) or isinstance(raw_id, bool):
        raise ValueError(f"id must be a string or an integer, got {raw_id!r}")
    human, gpt = _turns(record, "conversations")
    rejected_human, rejected_gpt = _turns(record, "rejected_conversations")
    score = record.get("weighted_score")
    if score is not None:
        if not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score):
            raise ValueError(f"weighted_score must be a number, got {score!r}")
        if not 0 <= score <= 1:
            raise ValueError(f"weighted_score must lie in [0, 1], got {score}")
    bad = bad_utf8(record)
    if bad:
        raise ValueError(f"{bad} is not valid UTF-8")
    question, chosen, rejected = clean_question(human), gpt.strip(), rejected_gpt.strip()
    raw: dict[str, Any] = {}
    if not isinstance(raw_id, str):
        raw["id"] = raw_id
    if isinstance(score, int):
        raw["weighted_score"] = score
    if list(record) != [k for k in _KNOWN_KEYS if k in record] + [k for k in record if k not in _KNOWN_KEYS]:
        raw["order"] = list(record)
    if render_question(question) != human:
        raw["human"] = human
    if clean_question(rejected_human) != question or render_question(question) != rejected_human:
        raw["rejected_human"] = rejected_human
    if render_answer(chosen) != gpt:
        raw["gpt"] = gpt
    if render_answer(rejected) != rejected_gpt:
        raw["rejected_gpt"] = rejected_gpt
    extra = {k: v for k, v in record.items() if k not in _KNOWN_KEYS}
    if extra:
        raw["extra"] = extra
    answer_type = ("closed" if chosen.lower().rstrip(".") in YES_NO else "open") if task == "vqa" else None
    return PreferencePair(
        id=str(raw_id),
        sample_id=str(raw_id),
        task=task,
        kind="visual" if record.get("rejected_image") else "text",
        image=record.get("image"),
        rejected_image=record.get("rejected_image"),
        region="lesion" if record.get("rejected_image") else None,  # the method's visual pairs noise the lesion
        question=question,
        chosen=chosen,
        rejected=rejected,
        answer_type=answer_type,
        provenance={"source": "mmedpo-json", "llava_raw": raw} if raw else {"source": "mmedpo-json"},
        clinical_score=None if score is None else float(score),
    )


# In the order the released files (and so the writer) put them.
_KNOWN_KEYS = ("id", "image", "rejected_image", "conversations", "rejected_conversations", "weighted_score")


def _kept(raw: dict, key: str, value: str, clean) -> str:
    """The raw text if it still cleans to the current value, else the rendered one."""
    original = raw.get(key)
    return original if original is not None and clean(original) == value.strip() else None


def pair_to_record(pair: PreferencePair) -> dict:
    raw = pair.provenance.get("llava_raw", {})
    human = _kept(raw, "human", pair.question, clean_question) or render_question(pair.question)
    rejected_human = _kept(raw, "rejected_human", pair.question, clean_question) or render_question(pair.question)
    gpt = _kept(raw, "gpt", pair.chosen, str.strip) or render_answer(pair.chosen)
    rejected_gpt = _kept(raw, "rejected_gpt", pair.rejected, str.strip) or render_answer(pair.rejected)
    raw_id = raw.get("id")
    record: dict[str, Any] = {"id": raw_id if raw_id is not None and str(raw_id) == pair.id else pair.id}
    record["image"] = pair.image
    if pair.rejected_image:
        record["rejected_image"] = pair.rejected_image
    record["conversations"] = [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]
    record["rejected_conversations"] = [
        {"from": "human", "value": rejected_human},
        {"from": "gpt", "value": rejected_gpt},
    ]
    if pair.clinical_score is not None:
        raw_score = raw.get("weighted_score")
        record["weighted_score"] = raw_score if raw_score == pair.clinical_score else pair.clinical_score
    record.update(raw.get("extra", {}))
    order = raw.get("order")
    if order and set(order) == set(record):
        record = {key: record[key] for key in order}
    return record


def read_mmedpo_json(path: Path | str, task: str | None = None) -> ReadResult:
    """Read a released MMedPO preference file (a JSON list, or JSON Lines).

    Bad records go to `rejects` with a reason naming the file and record; they never
    stop the read. Duplicate ids are rejected after the first. A file that is not a
    container of records (empty, binary, a single object) raises one ValueError.
    """
    return records_to_pairs(json_records(path), task)


def records_to_pairs(records: list[tuple[str, Any]], task: str | None = None) -> ReadResult:
    """Pairs from (source, record) items as `json_records` gives them; `task` inferred when None."""
    task = task or _infer_task([record for _, record in records if isinstance(record, dict)])
    result, seen = ReadResult(), set()
    for source, record in records:
        record_id = record.get("id") if isinstance(record, dict) else None
        try:
            if isinstance(record, Exception):  # a line that did not parse
                raise ValueError(str(record))
            pair = record_to_pair(record, task)
            if pair.id in seen:
                raise ValueError(f"duplicate id {pair.id!r}")
        except (ValueError, ValidationError) as error:
            result.rejects.append(
                Reject(id=None if record_id is None else str(record_id), source=source, reason=describe_error(error))
            )
            continue
        seen.add(pair.id)
        result.pairs.append(pair)
    return result


def write_mmedpo_json(pairs: Iterable[PreferencePair], path: Path | str) -> None:
    """The released files' formatting: 4-space indents, ASCII escapes, no final newline."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [pair_to_record(pair) for pair in pairs]
    path.write_text(json.dumps(records, indent=4, ensure_ascii=True), encoding="utf-8")
