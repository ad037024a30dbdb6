"""Evaluate a model: greedy answers on test samples, scored, saved with every prediction.

The output file keeps each prediction beside its question and gold answer, so
metrics can be recomputed (`rescore_file`) and compared per sample
(`compare.compare_table`) without running the model again. Predictions are
appended to a `.partial.jsonl` file beside the output as they are made, so a
killed evaluation resumes where it stopped; delete that file if the model
changed in between.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from mmedpo.data.images import open_image
from mmedpo.evaluation.metrics import score_rows, vqa_answer_type
from mmedpo.records import AnswerType, JsonlStore, Sample, Task, describe_error, dump_json

DEFAULT_MAX_NEW_TOKENS: Mapping[str, int] = MappingProxyType({"vqa": 8, "report": 64})


class Prediction(BaseModel):
    """One model answer beside what it is scored against."""

    id: str
    task: Task
    question: str
    answer: str
    prediction: str
    answer_type: AnswerType | None = None
    image: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)


def partial_path(out_path: Path) -> Path:
    """`eval/base.json` -> `eval/base.partial.jsonl`, where predictions accumulate."""
    return out_path.with_name(out_path.stem + ".partial.jsonl")


def evaluate_model(
    model_dir: Path,
    samples: Sequence[Sample],
    image_roots: Sequence[Path],
    out_path: Path,
    batch_size: int = 16,
    max_new_tokens: Mapping[str, int] = DEFAULT_MAX_NEW_TOKENS,
    meteor: bool = False,
) -> dict[str, Any]:
    """Answer every sample greedily with the model in `model_dir`, score, and write `out_path`.

    Writes and returns {"model", "metrics", "predictions"}; predictions follow
    the order of `samples`. `max_new_tokens` overrides the defaults per task.
    """
    # Imported here so that scoring and comparing stored results never pays for loading torch/transformers.
    from mmedpo.models.vlm import generate_answers, load_vlm

    out_path = Path(out_path)
    _check_unique_ids(samples)
    tokens = {**DEFAULT_MAX_NEW_TOKENS, **max_new_tokens}
    store = JsonlStore(partial_path(out_path), Prediction)
    done = {prediction.id: prediction for prediction in store}
    todo = [sample for sample in samples if sample.id not in done]
    model, processor = load_vlm(model_dir) if todo else (None, None)
    for task in ("vqa", "report"):
        task_samples = [sample for sample in todo if sample.task == task]
        for start in range(0, len(task_samples), batch_size):
            batch = task_samples[start : start + batch_size]
            images = [open_image(sample.image, image_roots) for sample in batch]
            answers = generate_answers(
                model,
                processor,
                images,
                [sample.question for sample in batch],
                max_new_tokens=tokens[task],
                batch_size=batch_size,
                do_sample=False,
            )
            made = [_prediction(sample, candidates[0]) for sample, candidates in zip(batch, answers)]
            store.extend(made)
            done.update((prediction.id, prediction) for prediction in made)
    predictions = [done[sample.id] for sample in samples]
    result = score_result(str(model_dir), predictions, meteor=meteor)
    dump_json(result, out_path)
    store.path.unlink()
    return result


def score_result(model: str, predictions: Sequence[Prediction], meteor: bool = False) -> dict[str, Any]:
    """The evaluation file's content: model name, metrics, and the predictions."""
    rows = [prediction.model_dump() for prediction in predictions]
    return {"model": model, "metrics": score_rows(rows, meteor=meteor), "predictions": rows}


def rescore_file(path: Path, meteor: bool = False) -> dict[str, Any]:
    """Recompute the metrics of a stored evaluation file; the file is not changed."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    predictions = []
    for index, row in enumerate(data.get("predictions", [])):
        try:
            predictions.append(Prediction.model_validate(row))
        except ValidationError as error:
            raise ValueError(f"{path}: prediction {index} ({row.get('id')}): {describe_error(error)}") from None
    return score_result(data.get("model", str(path)), predictions, meteor=meteor)


def _prediction(sample: Sample, answer: str) -> Prediction:
    answer_type = vqa_answer_type(sample.answer_type, sample.answer) if sample.task == "vqa" else None
    return Prediction(
        id=sample.id,
        task=sample.task,
        question=sample.question,
        answer=sample.answer,
        prediction=answer,
        answer_type=answer_type,
        image=sample.image,
        meta=sample.meta,
    )


def _check_unique_ids(samples: Sequence[Sample]) -> None:
    seen: set[str] = set()
    for sample in samples:
        if sample.id in seen:
            raise ValueError(f"sample {sample.id}: id occurs more than once in the evaluation set")
        seen.add(sample.id)
