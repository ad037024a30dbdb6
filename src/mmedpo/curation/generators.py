"""Hallucination generators: each proposes candidate rejected answers for a batch of samples.

`mmedpo.registry.GENERATORS` maps the names a config uses to generator classes:

    target   the target VLM sampled on (image, question), several candidates per sample: in process
             (batched) or on an OpenAI-compatible server (`model.endpoint`, `models.answerer`)
    chat     any OpenAI-compatible chat endpoint (GPT-4o, a Med-LLM on vLLM) with the versioned
             `hallucinate` prompt; the image goes along as a data URL when `chat.send_images`
    perturb  offline clinical perturbation of the ground truth (`curation.perturb`), and a swap for another
             answer the split gives to the same type of question (`curation.vocabulary`)

A generator is built as `cls(settings, context)` and `generate(samples)` returns,
per sample, a list of `Candidate`s or a `Failure` saying why it has none: an
unreadable image (the sample cannot be paired, for good) or a failed request
(asking again may work, so `curate_text` leaves the sample for the next run
rather than pair it from the other generators alone). Every candidate carries
its provenance: generator, model, prompt version, seed.
`generate_chunks(chunks)` does the same chunk after chunk, as an iterator (the
chat generator overlaps the chunks' requests); close it if you stop early.
"""

from __future__ import annotations

import random
import re
import zlib
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from mmedpo.curation.perturb import perturb_answer
from mmedpo.curation.vocabulary import AnswerVocabulary, question_type
from mmedpo.data.images import ImageError, open_image
from mmedpo.records import Sample
from mmedpo.registry import GENERATORS


@dataclass(frozen=True)
class Candidate:
    text: str
    provenance: dict[str, Any]


IMAGE = "image"  # the sample's image is unreadable, so it cannot be paired
REQUEST_FAILED = "request_failed"  # the endpoint gave no answer (after retries); the next run asks again


@dataclass(frozen=True)
class Failure:
    """No candidates for a sample: `code` IMAGE or REQUEST_FAILED; `kind` a short cause to group by ("HTTP 503")."""

    code: str
    reason: str
    kind: str = ""


@dataclass
class GeneratorContext:
    image_roots: Sequence[Path] = ()
    seed: int = 0
    model_dir: Path | None = None
    vocabulary: AnswerVocabulary | None = None  # the split's answers per question type (perturb swaps among them)
    answerer: Any = None  # the target model (`models.answerer`); None: loaded from model_dir


Generated = list[Candidate] | Failure


class Generator:
    """Proposes candidates; a subclass sets `name` and defines `generate(samples)`."""

    name: str

    def generate(self, samples: Sequence[Sample]) -> list[Generated]:
        raise NotImplementedError

    def generate_chunks(self, chunks: Iterable[Sequence[Sample]]) -> Iterator[list[Generated]]:
        """`generate` of each chunk in turn, as the caller asks for them."""
        for chunk in chunks:
            yield self.generate(chunk)


def sample_seed(seed: int, sample_id: str) -> int:
    """A seed of its own per sample, so a resumed or sharded run draws what a whole run draws."""
    return seed * 1_000_003 + zlib.crc32(sample_id.encode())


def _open_images(samples: Sequence[Sample], image_roots: Sequence[Path]) -> list:
    """Each sample's image, or a Failure for an unreadable one."""
    images = []
    for sample in samples:
        try:
            images.append(open_image(sample.image, image_roots))
        except ImageError as error:
            images.append(Failure(IMAGE, str(error)))
    return images


class PerturbGenerator(Generator):
    """Clinical perturbations of the ground truth: offline and deterministic per sample."""

    name = "perturb"

    def __init__(self, settings, context: GeneratorContext):
        self.seed = context.seed
        self.vocabulary = context.vocabulary or AnswerVocabulary()

    def generate(self, samples: Sequence[Sample]) -> list[Generated]:
        results: list[Generated] = []
        for sample in samples:
            rng = random.Random(sample_seed(self.seed, sample.id))
            alternatives = self.vocabulary.answers(question_type(sample))
            perturbed = perturb_answer(sample.answer, sample.answer_type, sample.task, rng, alternatives)
            provenance = {"generator": self.name, "seed": self.seed}
            results.append([Candidate(text, {**provenance, "operation": op}) for text, op in perturbed])
        return results


class TargetGenerator(Generator):
    """The target VLM's own sampled answers: the hallucinations worth unlearning most.

    The model is `context.answerer` (a served one, say), else loaded from
    `context.model_dir`. Each sample draws from a seed of its own, in process as
    on a server, so a resumed or sharded run draws what a whole run draws.
    """

    name = "target"

    def __init__(self, settings, context: GeneratorContext):
        if context.answerer is None and context.model_dir is None:
            raise ValueError("curate text: the 'target' generator needs a model")
        from mmedpo.models.answerer import LocalAnswerer

        self.answerer = context.answerer or LocalAnswerer(context.model_dir)
        self.settings, self.context = settings, context

    def generate(self, samples: Sequence[Sample]) -> list[Generated]:
        (results,) = self.generate_chunks([samples])
        return results

    def generate_chunks(self, chunks: Iterable[Sequence[Sample]]) -> Iterator[list[Generated]]:
        """Each chunk's candidates; a served model answers later chunks while earlier ones are collected."""
        from mmedpo.models.answerer import answer_stream

        jobs = (self._questions(chunk) for chunk in chunks)
        for (images, readable, seeds), answers in answer_stream(self.answerer, jobs):
            yield self._collect(images, readable, seeds, answers)

    def _questions(self, samples: Sequence[Sample]) -> tuple[tuple, list]:
        from mmedpo.curation.answering import sample_questions

        images = _open_images(samples, self.context.image_roots)
        readable = [i for i, image in enumerate(images) if not isinstance(image, Failure)]
        seeds = [sample_seed(self.context.seed, samples[i].id) % 2**31 for i in readable]
        questions = sample_questions(
            [samples[i] for i in readable],
            [images[i] for i in readable],
            temperature=self.settings.temperature,
            top_p=self.settings.top_p,
            n=self.settings.candidates,
            seeds=seeds,
        )
        return (images, readable, seeds), questions

    def _collect(self, images: list, readable: list[int], seeds: list[int], answers: list) -> list[Generated]:
        from mmedpo.models.answerer import RequestFailed

        results: list[Generated] = list(images)
        for index, seed, texts in zip(readable, seeds, answers):
            if isinstance(texts, RequestFailed):
                results[index] = Failure(REQUEST_FAILED, f"target: {texts.reason}", texts.kind)
                continue
            provenance = {"generator": self.name, "model": self.answerer.name, "seed": seed}
            results[index] = [Candidate(text, provenance) for text in texts]
        return results


class ChatGenerator(Generator):
    """An OpenAI-compatible chat endpoint asked for a plausible, clinically wrong answer."""

    name = "chat"

    def __init__(self, settings, context: GeneratorContext):
        from mmedpo.llm.endpoint import api_key
        from mmedpo.prompts import load_prompt

        self.chat = settings.chat
        api_key(self.chat)  # a missing key is a clear error now, not a failed request per sample later
        text, self.prompt_version = load_prompt("hallucinate", self.chat.prompt_version)
        self.template = Template(text)
        self.settings, self.context = settings, context

    def generate(self, samples: Sequence[Sample]) -> list[Generated]:
        (results,) = self.generate_chunks([samples])
        return results

    def generate_chunks(self, chunks: Iterable[Sequence[Sample]]) -> Iterator[list[Generated]]:
        """Each chunk's results, in order; later chunks' requests go out before earlier replies are in.

        Chunk by chunk, the endpoint would idle at the end of every chunk while its
        slowest reply came back: a third of the time at concurrency 32. One session
        serves every chunk, so they reuse its open connections; closing this
        iterator closes it.
        """
        from mmedpo.llm.chat import ChatSession

        with ChatSession(self.chat) as session:
            pending: deque = deque()
            for chunk in chunks:
                pending.append(self._send(session, chunk))
                # The oldest chunk is collected once the newer ones alone can fill every connection.
                while sum(len(sent) for _, sent in pending) - len(pending[0][1]) >= self.chat.concurrency:
                    yield self._collect(*pending.popleft())
            while pending:
                yield self._collect(*pending.popleft())

    def _send(self, session, samples: Sequence[Sample]) -> tuple[list, list]:
        """Each sample's image (or Failure), and (position, seed, future) of every request sent."""
        from mmedpo.llm.chat import user_message

        images = _open_images(samples, self.context.image_roots) if self.chat.send_images else [None] * len(samples)
        sent = []
        for i, image in enumerate(images):
            if isinstance(image, Failure):
                continue
            prompt = self.template.substitute(question=samples[i].question, answer=samples[i].answer)
            seed = sample_seed(self.context.seed, samples[i].id) % 2**31
            params = {"n": self.settings.candidates, "temperature": self.settings.temperature, "seed": seed}
            sent.append((i, seed, session.submit([user_message(prompt, image)], **params)))
        return images, sent

    def _collect(self, images: list, sent: list) -> list[Generated]:
        from mmedpo.llm.chat import ChatError, reply_or_error

        results: list[Generated] = list(images)
        for i, seed, future in sent:
            reply = reply_or_error(future)
            if isinstance(reply, ChatError):
                results[i] = Failure(REQUEST_FAILED, f"chat: {reply}", reply.kind)
                continue
            provenance = {
                "generator": self.name,
                "model": self.chat.model,
                "prompt_version": self.prompt_version,
                "seed": seed,
            }
            results[i] = [Candidate(clean_reply(text), provenance) for text in reply]
        return results


def clean_reply(text: str) -> str:
    """The reply without surrounding whitespace and quotes; anything else is left for the filters to judge."""
    text = text.strip()
    quoted = re.fullmatch(r'"(.*)"|“(.*)”', text, re.DOTALL)
    return next(g for g in quoted.groups() if g is not None).strip() if quoted else text


def make_generators(names: Sequence[str], settings, context: GeneratorContext) -> list:
    """The named generators, built, in `GENERATORS` order (the order candidates are tried in)."""
    for name in names:
        GENERATORS.check(name)
    return [GENERATORS.load(name)(settings, context) for name in GENERATORS.names() if name in names]
