"""The `chat` judge: an OpenAI-compatible endpoint (GPT-4o, or a Med-LLM on vLLM) rates a pair.

The versioned `judge` prompt asks how clinically significant the difference
between the preferred and the dispreferred answer is, on a 1-5 scale, as one
JSON object `{"score": 1..5, "reason": "..."}`; the score maps to [0, 1] as
(score - 1) / 4. Where the line is drawn:
- a chat completion whose text holds no score on the scale is the judge's
  answer: it cannot score the pair, which is left UNSCORED (score None) for good;
- a request that failed (after its retries: an HTTP error, a refused
  connection, a timeout, a body that is not a chat completion) is no answer at
  all: the verdict carries `failure`, the score stage is incomplete and the
  pair is asked again next run.
A pair is never silently given weight 1.

    >>> parse_judge_reply('```json\\n{"score": 4, "reason": "invents an effusion"}\\n```')
    (0.75, 'invents an effusion')
    >>> parse_judge_reply("I cannot judge this.")
    (None, "unparseable reply: no score in 'I cannot judge this.'")
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from string import Template

from mmedpo.llm.chat import iter_chat, user_message
from mmedpo.llm.endpoint import ChatConfig, ChatError, api_key
from mmedpo.prompts import load_prompt
from mmedpo.scoring.judges import Judge, Verdict

SCALE = (1, 5)
_OBJECT_RE = re.compile(r"\{.*?\}", re.DOTALL)
# Near-JSON such as `score: 4` or `'score'=4`, when the reply is not a JSON object.
_LOOSE_SCORE_RE = re.compile(r"""["']?score["']?\s*[:=]\s*["']?(\d+(?:\.\d+)?)""", re.IGNORECASE)


def parse_judge_reply(text: str) -> tuple[float | None, str]:
    """(score in [0, 1], reason), or (None, why the reply cannot be read)."""
    raw = None
    reason = ""
    for match in _OBJECT_RE.finditer(text):
        try:
            data = json.loads(match.group())
        except json.JSONDecodeError:
            continue
        fields = {str(key).lower(): value for key, value in data.items()} if isinstance(data, dict) else {}
        if "score" in fields:
            raw, reason = fields["score"], str(fields.get("reason", "")).strip()
            break
    if raw is None and (loose := _LOOSE_SCORE_RE.search(text)):
        raw = loose.group(1)
    snippet = text.strip()[:80]
    if raw is None:
        return None, f"unparseable reply: no score in {snippet!r}"
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None, f"unparseable reply: score {raw!r} is not a number"
    low, high = SCALE
    if not low <= value <= high:
        return None, f"unparseable reply: score {value:g} is outside {low}-{high}"
    return (value - low) / (high - low), reason or "no reason given"


class ChatJudge(Judge):
    """Options are `ChatConfig` fields: `ChatJudge(base_url=..., model="gpt-4o", api_key_env="OPENAI_API_KEY")`."""

    name = "chat"

    def __init__(self, **chat_options):
        self.chat = ChatConfig(**chat_options)
        api_key(self.chat)  # a missing key is a clear error now, not a failure per pair later
        text, self.version = load_prompt("judge", self.chat.prompt_version)
        self.template = Template(text)
        self.model = self.chat.model

    def score(self, question: str, chosen: str, rejected: str) -> Verdict:
        return next(self.score_many([(question, chosen, rejected)]))[1]

    def score_many(self, items: Sequence[tuple]) -> Iterator[tuple[int, Verdict]]:
        """Yield (index, verdict) as replies come, `chat.concurrency` requests at a time.

        An item is (question, chosen, rejected), or (question, chosen, rejected, PIL image):
        the image is sent only when `chat.send_images`.
        """
        requests = []
        for question, chosen, rejected, *image in items:
            prompt = self.template.substitute(question=question, chosen=chosen, rejected=rejected)
            picture = image[0] if image and self.chat.send_images else None
            requests.append(([user_message(prompt, picture)], {"temperature": 0}))
        for index, reply in iter_chat(self.chat, requests):
            if isinstance(reply, ChatError):
                yield index, Verdict(None, f"request failed: {reply}", failure=reply.kind)
            else:
                yield index, Verdict(*parse_judge_reply(reply[0]))
