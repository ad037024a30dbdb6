"""Hallucination generators: each proposes candidate rejected answers for a batch of samples.

`GENERATORS` maps the names a config uses to generator classes:

    target   the target VLM sampled on (image, question), several candidates per sample, batched
    chat     any OpenAI-compatible chat endpoint (GPT-4o, a Med-LLM on vLLM) with the versioned
             `hallucinate` prompt; the image goes along as a data URL when `chat.send_images`
    perturb  offline clinical perturbation of the ground truth (`curation.perturb`)

A generator is built as `cls(settings, context)` and `generate(samples)` returns,
per sample, a list of `Candidate`s or a `Failure` saying why it has none. Every
candidate carries its provenance: generator, model, prompt version, seed.
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from mmedpo.curation.perturb import perturb_answer
from mmedpo.data.images import ImageError, open_image
from mmedpo.records import Sample


@dataclass(frozen=True)
class Candidate:
    text: str
    provenance: dict[str, Any]


@dataclass(frozen=True)
class Failure:
    """No candidates for a sample. code "image": the sample's image is unreadable, so it cannot be paired."""

    code: str
    reason: str


@dataclass
class GeneratorContext:
    image_roots: Sequence[Path] = ()
    seed: int = 0
    model_dir: Path | None = None


Generated = list[Candidate] | Failure


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
            images.append(Failure("image", str(error)))
    return images


class PerturbGenerator:
    """Clinical perturbations of the ground truth: offline and deterministic per sample."""

    name = "perturb"

    def __init__(self, settings, context: GeneratorContext):
        self.seed = context.seed

    def generate(self, samples: Sequence[Sample]) -> list[Generated]:
        results: list[Generated] = []
        for sample in samples:
            rng = random.Random(sample_seed(self.seed, sample.id))
            perturbed = perturb_answer(sample.answer, sample.answer_type, sample.task, rng)
            provenance = {"generator": self.name, "seed": self.seed}
            results.append([Candidate(text, {**provenance, "operation": op}) for text, op in perturbed])
        return results


class TargetGenerator:
    """The target VLM's own sampled answers: the hallucinations worth unlearning most."""

    name = "target"

    def __init__(self, settings, context: GeneratorContext):
        if context.model_dir is None:
            raise ValueError("curate text: the 'target' generator needs a model")
        from mmedpo.models.vlm import load_vlm

        self.model, self.processor = load_vlm(context.model_dir)
        self.model_name = str(context.model_dir)
        self.settings, self.context = settings, context

    def generate(self, samples: Sequence[Sample]) -> list[Generated]:
        from mmedpo.curation.answering import answer_samples

        images = _open_images(samples, self.context.image_roots)
        readable = [i for i, image in enumerate(images) if not isinstance(image, Failure)]
        # Seeded by the batch's ids, so a resumed run that meets the same batch draws the same answers.
        seed = sample_seed(self.context.seed, "\n".join(samples[i].id for i in readable))
        answers = answer_samples(
            self.model,
            self.processor,
            [samples[i] for i in readable],
            [images[i] for i in readable],
            do_sample=True,
            temperature=self.settings.temperature,
            num_return_sequences=self.settings.candidates,
            seed=seed,
        )
        provenance = {"generator": self.name, "model": self.model_name, "seed": seed}
        results: list[Generated] = list(images)
        for index, texts in zip(readable, answers):
            results[index] = [Candidate(text, provenance) for text in texts]
        return results


class ChatGenerator:
    """An OpenAI-compatible chat endpoint asked for a plausible, clinically wrong answer."""

    name = "chat"

    def __init__(self, settings, context: GeneratorContext):
        from mmedpo.prompts import load_prompt

        self.chat = settings.chat
        text, self.prompt_version = load_prompt("hallucinate", self.chat.prompt_version)
        self.template = Template(text)
        self.settings, self.context = settings, context

    def generate(self, samples: Sequence[Sample]) -> list[Generated]:
        from mmedpo.llm.chat import ChatError, chat_many, user_message

        images = _open_images(samples, self.context.image_roots) if self.chat.send_images else [None] * len(samples)
        asked = [i for i, image in enumerate(images) if not isinstance(image, Failure)]
        requests = []
        for i in asked:
            prompt = self.template.substitute(question=samples[i].question, answer=samples[i].answer)
            params = {
                "n": self.settings.candidates,
                "temperature": self.settings.temperature,
                "seed": sample_seed(self.context.seed, samples[i].id) % 2**31,
            }
            requests.append(([user_message(prompt, images[i])], params))
        replies = chat_many(self.chat, requests)
        results: list[Generated] = list(images)
        for i, (_, params), reply in zip(asked, requests, replies):
            if isinstance(reply, ChatError):
                results[i] = Failure("request_failed", f"chat: {reply}")
                continue
            provenance = {
                "generator": self.name,
                "model": self.chat.model,
                "prompt_version": self.prompt_version,
                "seed": params["seed"],
            }
            results[i] = [Candidate(clean_reply(text), provenance) for text in reply]
        return results


def clean_reply(text: str) -> str:
    """The reply without surrounding whitespace and quotes; anything else is left for the filters to judge."""
    text = text.strip()
    quoted = re.fullmatch(r'"(.*)"|“(.*)”', text, re.DOTALL)
    return next(g for g in quoted.groups() if g is not None).strip() if quoted else text


# Candidates are tried in this order: the model-made hallucinations first, because a mistake
# the model itself makes (or one a strong LLM finds plausible) is the one worth unlearning.
GENERATORS: dict[str, type] = {"target": TargetGenerator, "chat": ChatGenerator, "perturb": PerturbGenerator}


def make_generators(names: Sequence[str], settings, context: GeneratorContext) -> list:
    """The named generators, built, in `GENERATORS` order; an error lists the valid names."""
    unknown = [name for name in names if name not in GENERATORS]
    if unknown:
        raise ValueError(f"unknown generator(s) {unknown}; valid: {list(GENERATORS)}")
    return [cls(settings, context) for name, cls in GENERATORS.items() if name in names]
