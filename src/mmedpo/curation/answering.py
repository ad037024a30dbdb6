"""Questions for the target model about samples, with the answer length of each task (reports need longer).

Ask them of the target model (`models.answerer`: loaded in this process, or
served behind an OpenAI-compatible endpoint) with `answerer.submit(questions)`;
a sample's answers are its candidates, or a `RequestFailed` that curation must
leave for the next run.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from mmedpo.models.answerer import Decoding, Question
from mmedpo.records import Sample

MAX_NEW_TOKENS = {"vqa": 12, "report": 64}


def sample_questions(
    samples: Sequence[Sample],
    images: Sequence[Image.Image],
    temperature: float = 0.0,
    top_p: float = 1.0,
    n: int = 1,
    seeds: Sequence[int] | None = None,
) -> list[Question]:
    """One question per (sample, image): greedy by default, else `n` candidates sampled from each sample's seed."""
    return [
        Question(
            image,
            sample.question,
            Decoding(MAX_NEW_TOKENS[sample.task], temperature, top_p, n, seeds[index] if seeds else None),
        )
        for index, (sample, image) in enumerate(zip(samples, images))
    ]
