"""Evaluate a model: greedy answers on test samples, scored, saved with every prediction.

The output file keeps each prediction beside its question and gold answer, so
metrics can be recomputed (`rescore_file`) and compared per sample
(`compare.compare_table`) without running the model again. Predictions are
appended to a `.partial.jsonl` file beside the output as they are made, so a
killed evaluation resumes where it stopped; delete that file if the model
changed in between (a changed prompt is detected and refused).

Per-task prompts are templates with a `{question}` placeholder, e.g.
{"vqa": "{question}\nAnswer with a single word or phrase."}; each prediction
stores the prompt the model saw.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from mmedpo.data.images import open_image
from mmedpo.errors import StageIncomplete
from mmedpo.evaluation.metrics import score_rows, vqa_answer_type
from mmedpo.models.answerer import Decoding, LocalAnswerer, Question, RequestFailed, answer_stream
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
    prompt: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)


def render_prompt(sample: Sample, prompts: Mapping[str, str]) -> str:
    """The text the model is asked: the task's template with `{question}` filled in, else the question.

    >>> render_prompt(Sample(id="1", task="vqa", image="a.png", question="Effusion?", answer="no"),
    ...               {"vqa": "{question} Answer yes or no."})
    'Effusion? Answer yes or no.'
    """
    template = prompts.get(sample.task)
    if template is None:
        return sample.question
    if "{question}" not in template:
        raise ValueError(f"the {sample.task} prompt {template!r} has no {{question}} placeholder")
    # replace, not format: a question may contain braces.
    return template.replace("{question}", sample.question)


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
    prompts: Mapping[str, str] | None = None,
    protocol: str = "mmedpo",
    answerer=None,
    report_tokenization: str = "mmedpo",
) -> dict[str, Any]:
    """Answer every sample greedily with the model in `model_dir`, score, and write `out_path`.

    Writes and returns {"model", "metrics", "predictions"}; predictions follow
    the order of `samples`. `max_new_tokens` overrides the defaults per task;
    `prompts` maps a task to its prompt template (see `render_prompt`).
    `answerer` is the model (`models.answerer`: one the caller already loaded, or
    a served one); None loads it from `model_dir`. `protocol` and
    `report_tokenization` choose how answers are scored (`metrics.score_rows`).
    When requests to a served model failed, the answers that came back are kept
    in the partial file and `StageIncomplete` says how many failed.
    """
    out_path = Path(out_path)
    _check_unique_ids(samples)
    tokens = {**DEFAULT_MAX_NEW_TOKENS, **max_new_tokens}
    store = JsonlStore(partial_path(out_path), Prediction)
    prompts = prompts or {}
    asked = {sample.id: render_prompt(sample, prompts) for sample in samples}
    done = {prediction.id: prediction for prediction in store}
    _check_same_prompts(done.values(), asked, store.path)
    todo = [sample for sample in samples if sample.id not in done]
    answerer = answerer or LocalAnswerer(model_dir, batch_size)

    def jobs():
        for task in ("vqa", "report"):
            task_samples = [sample for sample in todo if sample.task == task]
            for start in range(0, len(task_samples), batch_size):
                batch = task_samples[start : start + batch_size]
                images = [open_image(sample.image, image_roots) for sample in batch]
                yield batch, [Question(image, asked[s.id], Decoding(tokens[task])) for s, image in zip(batch, images)]

    failures: Counter[str] = Counter()
    first_failure = ""
    for batch, answers in answer_stream(answerer, jobs()):
        made = []
        for sample, candidates in zip(batch, answers):
            if isinstance(candidates, RequestFailed):
                failures[candidates.kind] += 1
                first_failure = first_failure or candidates.reason
            else:
                made.append(_prediction(sample, asked[sample.id], candidates[0]))
        store.extend(made)
        done.update((prediction.id, prediction) for prediction in made)
    if failures:
        raise StageIncomplete(
            f"eval: {sum(failures.values())} of {len(samples)} samples not answered because requests failed "
            f"({dict(failures)}); first: {first_failure[:200]}. The answers that came back are kept: run again "
            "to ask the rest",
            {"failed": sum(failures.values()), "failures": dict(failures)},
        )
    predictions = [done[sample.id] for sample in samples]
    result = score_result(str(model_dir), predictions, meteor, protocol, report_tokenization)
    dump_json(result, out_path)
    store.path.unlink()
    return result


def score_result(
    model: str,
    predictions: Sequence[Prediction],
    meteor: bool = False,
    protocol: str = "mmedpo",
    report_tokenization: str = "mmedpo",
) -> dict[str, Any]:
    """The evaluation file's content: model name, metrics, and the predictions."""
    rows = [prediction.model_dump() for prediction in predictions]
    metrics = score_rows(rows, meteor=meteor, protocol=protocol, report_tokenization=report_tokenization)
    return {"model": model, "metrics": metrics, "predictions": rows}


def rescore_file(
    path: Path, meteor: bool = False, protocol: str = "mmedpo", report_tokenization: str = "mmedpo"
) -> dict[str, Any]:
    """Recompute the metrics of a stored evaluation file (under any protocol); the file is not changed."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    predictions = []
    for index, row in enumerate(data.get("predictions", [])):
        try:
            predictions.append(Prediction.model_validate(row))
        except ValidationError as error:
            raise ValueError(f"{path}: prediction {index} ({row.get('id')}): {describe_error(error)}") from None
    return score_result(data.get("model", str(path)), predictions, meteor, protocol, report_tokenization)


def _check_same_prompts(done: Iterable[Prediction], asked: Mapping[str, str], path: Path) -> None:
    for prediction in done:
        if prediction.id in asked and prediction.prompt != asked[prediction.id]:
            raise ValueError(
                f"{path}: sample {prediction.id} was answered with the prompt {prediction.prompt!r}, "
                f"now {asked[prediction.id]!r}; delete that file to evaluate with the new prompts"
            )


def _prediction(sample: Sample, prompt: str, answer: str) -> Prediction:
    answer_type = vqa_answer_type(sample.answer_type, sample.answer) if sample.task == "vqa" else None
    return Prediction(
        id=sample.id,
        task=sample.task,
        question=sample.question,
        answer=sample.answer,
        prediction=answer,
        answer_type=answer_type,
        image=sample.image,
        prompt=prompt,
        meta=sample.meta,
    )


def _check_unique_ids(samples: Sequence[Sample]) -> None:
    seen: set[str] = set()
    for sample in samples:
        if sample.id in seen:
            raise ValueError(f"sample {sample.id}: id occurs more than once in the evaluation set")
        seen.add(sample.id)
