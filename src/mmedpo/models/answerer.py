"""The target model answering questions about images: in this process, or on an OpenAI-compatible server.

Every stage that asks the target model (curate text's `target` candidates,
curate visual's answers on noised images, evaluation and its visual-dependence
passes) asks an `Answerer`:

    answerer = make_answerer(model_dir, endpoint=None)      # in process
    answerer = make_answerer(model_dir, endpoint, cache)    # a vLLM server, answers cached
    answers = answerer.submit([Question(image, "Is there a nodule?", Decoding(12))]).result()
    answers[0]  # ['yes'], or a RequestFailed the stage must not turn into data

`Decoding` says how: greedy (temperature 0) or sampled (temperature, top_p, n
candidates, seed). In process, `models.vlm.generate_answers` batches the
questions; against a server each question is one chat completion (the image a
PNG data URL, the decoding its temperature, top_p, n, seed and max_tokens),
sent through `llm.chat` with its retries, backoff and circuit breaker. Sampling
is seeded per question in both, so the same model draws the same answers either
way (`generate_answers`). `submit` returns at once for a server: the stages
keep `concurrency` questions in flight with `answer_stream`.

A server's answers go through the answer cache (`CachedAnswerer`), keyed by the
served model, the prompt, the image's pixels and the decoding: a killed or
incomplete stage asks again only what failed, and a question asked twice (the
evaluation's clean image in visual dependence) is asked once. The served model's
name is its identity: serve new weights under a new name.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from mmedpo.jsonl_cache import JsonlCache
from mmedpo.llm.endpoint import ChatConfig, api_key

T = TypeVar("T")


@dataclass(frozen=True)
class Decoding:
    """How to answer: greedy (temperature 0), or `n` candidates sampled with temperature and top_p from `seed`."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Question:
    image: Image.Image
    prompt: str
    decoding: Decoding


@dataclass(frozen=True)
class RequestFailed:
    """No answer: the request failed after its retries. `kind` is a short cause to group by ("HTTP 503")."""

    reason: str
    kind: str


Answers = list[str] | RequestFailed  # the question's n answers, or why there are none


class Pending:
    """Answers on their way; `result()` waits for them (in question order)."""

    def __init__(self, collect: Callable[[], list[Answers]]):
        self._collect = collect

    def result(self) -> list[Answers]:
        return self._collect()


class LocalAnswerer:
    """The model loaded in this process (on first use), batched by `models.vlm.generate_answers`; never fails."""

    concurrency = 0  # questions are answered when submitted: nothing to keep in flight

    def __init__(self, model_dir: Path | str, batch_size: int = 16):
        self.name = str(model_dir)
        self.model_dir, self.batch_size = model_dir, batch_size
        self._loaded = None

    def submit(self, questions: Sequence[Question]) -> Pending:
        answers = self.answer(questions)
        return Pending(lambda: answers)

    def answer(self, questions: Sequence[Question]) -> list[Answers]:
        from mmedpo.models.vlm import generate_answers, load_vlm

        results: list[Answers] = [[] for _ in questions]
        groups: dict[Decoding, list[int]] = {}  # one generate call per decoding; the seeds go per question
        for index, question in enumerate(questions):
            groups.setdefault(replace(question.decoding, seed=None), []).append(index)
        if groups and self._loaded is None:
            self._loaded = load_vlm(self.model_dir)
        for decoding, indices in groups.items():
            sampling = {}
            if not decoding.greedy:
                seeds = [questions[i].decoding.seed for i in indices]
                sampling = dict(
                    temperature=decoding.temperature,
                    top_p=decoding.top_p,
                    num_return_sequences=decoding.n,
                    seeds=None if None in seeds else seeds,
                )
            answers = generate_answers(
                *self._loaded,
                [questions[i].image for i in indices],
                [questions[i].prompt for i in indices],
                max_new_tokens=decoding.max_new_tokens,
                batch_size=self.batch_size,
                do_sample=not decoding.greedy,
                **sampling,
            )
            for index, candidates in zip(indices, answers):
                results[index] = candidates
        return results

    def close(self) -> None:
        self._loaded = None


class EndpointAnswerer:
    """The model behind an OpenAI-compatible chat endpoint (vLLM, SGLang), one request per question."""

    def __init__(self, config: ChatConfig):
        api_key(config)  # a missing key is one clear line now, not a failed request per question later
        self.config = config
        self.name = config.model
        self.concurrency = config.concurrency
        self.session = None  # opened by the first question: a stage with nothing to ask opens no connection

    def submit(self, questions: Sequence[Question]) -> Pending:
        from mmedpo.llm.chat import ChatSession, user_message

        if self.session is None and questions:
            self.session = ChatSession(self.config)
        futures = [
            self.session.submit([user_message(q.prompt, q.image)], **request_params(q.decoding)) for q in questions
        ]
        return Pending(lambda: [self._collect(future, q.decoding.n) for future, q in zip(futures, questions)])

    def _collect(self, future, n: int) -> Answers:
        from mmedpo.llm.chat import ChatError, reply_or_error

        reply = reply_or_error(future)
        if isinstance(reply, ChatError):
            return RequestFailed(f"{self.name}: {reply}", reply.kind)
        if len(reply) != n:  # a server that ignores `n` would silently change how many candidates a sample gets
            return RequestFailed(f"{self.name}: asked for {n} answers, got {len(reply)}", "wrong number of choices")
        return [text.strip() for text in reply]

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None


def request_params(decoding: Decoding) -> dict[str, Any]:
    """The chat completion fields of a decoding: greedy is temperature 0; sampling sends top_p, n and seed.

    >>> request_params(Decoding(12))
    {'max_tokens': 12, 'temperature': 0.0}
    >>> request_params(Decoding(64, temperature=1.0, top_p=0.9, n=4, seed=7))
    {'max_tokens': 64, 'temperature': 1.0, 'top_p': 0.9, 'n': 4, 'seed': 7}
    """
    params: dict[str, Any] = {"max_tokens": decoding.max_new_tokens, "temperature": float(decoding.temperature)}
    if not decoding.greedy:
        params.update(top_p=decoding.top_p, n=decoding.n)
        if decoding.seed is not None:
            params["seed"] = decoding.seed
    return params


def image_digest(image: Image.Image) -> str:
    """sha256 of an image's mode, size and pixels: what the model sees, whatever file it came from."""
    digest = hashlib.sha256(f"{image.mode}\0{image.size}\0".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def answer_key(model: str, question: Question) -> str:
    """The answer cache's key: the served model, the prompt, the image's pixels and the decoding."""
    fields = [model, question.prompt, image_digest(question.image), asdict(question.decoding)]
    return hashlib.sha256(json.dumps(fields, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


class CachedAnswerer:
    """Another answerer's answers through an on-disk cache: only questions not answered before are sent.

    Failures are never cached, so the next run asks them again. Questions with the
    same key in one submission are sent once.
    """

    def __init__(self, inner, cache_path: Path | str, writer: str | None = None):
        self.inner, self.name, self.concurrency = inner, inner.name, inner.concurrency
        self.cache = JsonlCache(cache_path, writer, parse=_answers, what="answer cache entry")

    def submit(self, questions: Sequence[Question]) -> Pending:
        keys = [answer_key(self.name, question) for question in questions]
        known: dict[str, list[str]] = {}
        missing: dict[str, int] = {}  # key -> the first question that asks it
        for index, key in enumerate(keys):
            if key not in known and key not in missing:
                hit = self.cache.get(key)
                if hit is None:
                    missing[key] = index
                else:
                    known[key] = hit
        pending = self.inner.submit([questions[index] for index in missing.values()])

        def collect() -> list[Answers]:
            fresh = dict(zip(missing, pending.result()))
            for key, answers in fresh.items():
                if not isinstance(answers, RequestFailed):
                    self.cache.put(key, answers=answers)
            return [fresh[key] if key in fresh else known[key] for key in keys]

        return Pending(collect)

    def close(self) -> None:
        self.cache.close()
        self.inner.close()


def _answers(entry: dict) -> list[str]:
    answers = entry["answers"]
    if not isinstance(answers, list) or not all(isinstance(text, str) for text in answers):
        raise ValueError("'answers' is not a list of texts")
    return answers


def make_answerer(
    model_dir: Path | str | None,
    endpoint: ChatConfig | None = None,
    cache_path: Path | str | None = None,
    writer: str | None = None,
    batch_size: int = 16,
):
    """The model in `model_dir` in process; or, with `endpoint`, the served model, through the cache at `cache_path`.

    `writer` names a shard worker's own cache file (`mmedpo.jsonl_cache`).
    """
    if endpoint is None:
        if model_dir is None:
            raise ValueError("the target model needs a model folder or an endpoint")
        return LocalAnswerer(model_dir, batch_size)
    answerer = EndpointAnswerer(endpoint)
    return CachedAnswerer(answerer, cache_path, writer) if cache_path is not None else answerer


def answer_stream(answerer, jobs: Iterable[tuple[T, Sequence[Question]]]) -> Iterator[tuple[T, list[Answers]]]:
    """(payload, answers) of each job in order, while later jobs' questions are already being answered.

    `jobs` is consumed lazily: a job is prepared (its images noised, say) while the
    questions of earlier ones are in flight, and the oldest job is collected once the
    newer ones alone keep `answerer.concurrency` questions in flight. Job by job, a
    server would idle at the end of every job while its slowest answer came back.
    """
    pending: deque[tuple[T, int, Pending]] = deque()
    for payload, questions in jobs:
        pending.append((payload, len(questions), answerer.submit(questions)))
        while pending and sum(size for _, size, _ in pending) - pending[0][1] >= answerer.concurrency:
            payload, _, answers = pending.popleft()
            yield payload, answers.result()
    while pending:
        payload, _, answers = pending.popleft()
        yield payload, answers.result()


def one_ahead(items: Iterable[T]) -> Iterator[T]:
    """Each item once the next one has been made: a second round of questions that an item sent is collected
    while the next item's are in flight, rather than before they are sent."""
    iterator = iter(items)
    previous = next(iterator, None)
    for item in iterator:
        yield previous
        previous = item
    if previous is not None:
        yield previous
