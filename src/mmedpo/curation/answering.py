"""The target model answering samples, batched by task (reports need longer outputs)."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from mmedpo.records import Sample

MAX_NEW_TOKENS = {"vqa": 12, "report": 64}


def answer_samples(
    model,
    processor,
    samples: Sequence[Sample],
    images: Sequence[Image.Image],
    do_sample: bool = False,
    temperature: float = 1.0,
    num_return_sequences: int = 1,
    seed: int | None = None,
) -> list[list[str]]:
    """Candidate answers of the model for each (sample, image), in input order."""
    from mmedpo.models.vlm import generate_answers

    results: list[list[str]] = [[] for _ in samples]
    for task, max_new_tokens in MAX_NEW_TOKENS.items():
        indices = [i for i, sample in enumerate(samples) if sample.task == task]
        if not indices:
            continue
        answers = generate_answers(
            model,
            processor,
            [images[i] for i in indices],
            [samples[i].question for i in indices],
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            num_return_sequences=num_return_sequences,
            seed=seed,
        )
        for i, candidates in zip(indices, answers):
            results[i] = candidates
    return results
