"""The evaluation a run makes of one model: answers and metrics on the test split, and visual dependence.

    evaluate_run_model(model_dir, test_samples, image_roots, out_path, config.eval, seed)

writes one eval JSON (`evaluate.evaluate_model`'s metrics and predictions) and,
with `settings.visual_dependence`, the answers again with the lesion hidden and
on a blank image (`visual_dependence`), their summary in the same file and its
headline figures among the metrics (with how many samples it measured and
skipped). The model is loaded once for both, or is a served one
(`models.answerer`), whose answers are cached: the clean-image pass of visual
dependence asks nothing the evaluation did not already ask. The lesion regions
come from `localizer` (default: the samples' annotations), all found before the
model loads, so a localizer with a model of its own is done with it by then.

Many machines can split the test split: `shard=(i, n)` evaluates every n-th
sample from the i-th into `eval/shards/NAME.shard-i-of-n.json`, and
`merge_eval_shards` scores the joined predictions into the file one run writes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from mmedpo.config import EvalConfig
from mmedpo.evaluation.compare import visual_metrics
from mmedpo.evaluation.evaluate import Prediction, evaluate_model, score_result
from mmedpo.evaluation.visual_dependence import dependence_result, greedy_answerer, visual_dependence
from mmedpo.models.answerer import LocalAnswerer
from mmedpo.records import Sample, dump_json
from mmedpo.shards import Shard, shard_path, take_shard

TASKS = ("vqa", "report")  # the order both passes answer the tasks in


def eval_shard_path(out_path: Path, shard: Shard) -> Path:
    """`eval/base.json` -> `eval/shards/base.shard-2-of-4.json`: apart, so no shard is read as a variant."""
    out_path = Path(out_path)
    return shard_path(out_path.parent / "shards" / out_path.name, shard)


def evaluate_run_model(
    model_dir: Path,
    samples: Sequence[Sample],
    image_roots: Sequence[Path],
    out_path: Path,
    settings: EvalConfig,
    seed: int = 0,
    localizer=None,
    answerer=None,
    shard: Shard | None = None,
) -> dict:
    """Evaluate the model in `model_dir` on `samples` as `settings` say; write and return the result.

    `answerer` is the model when it is served (`models.answerer`); None loads
    `model_dir` in this process. `shard=(i, n)` evaluates one shard (see above).
    """
    split = samples
    if shard is not None:
        samples, out_path = take_shard(samples, shard), eval_shard_path(out_path, shard)
    max_new_tokens = {"vqa": settings.max_new_tokens_vqa, "report": settings.max_new_tokens_report}
    regions = None
    if settings.visual_dependence:  # every region before the model loads (a localizer may hold a model)
        from mmedpo.imaging.localizers import AnnotationLocalizer
        from mmedpo.imaging.run_localizer import FixedRegions

        # An image's region comes from its first sample in the whole split, as an unsharded run finds it:
        # a question-dependent localizer (attribution) then gives each shard the same regions.
        images = {sample.image for sample in samples}
        regions = FixedRegions(localizer or AnnotationLocalizer(), [s for s in split if s.image in images], image_roots)
    answerer = answerer or LocalAnswerer(model_dir, settings.batch_size)
    result = evaluate_model(
        model_dir,
        samples,
        image_roots,
        out_path,
        batch_size=settings.batch_size,
        max_new_tokens=max_new_tokens,
        meteor=settings.meteor,
        prompts=settings.prompts or None,
        protocol=settings.protocol,
        answerer=answerer,
        report_tokenization=settings.report_tokenization,
    )
    if not settings.visual_dependence:
        return result
    dependence = visual_dependence(
        greedy_answerer(answerer, max_new_tokens),
        samples,
        image_roots,
        localizer=regions,
        timestep=settings.vd_timestep,
        seed=seed,
        prompts=settings.prompts or None,
    )
    _add_dependence(result, dependence)
    dump_json(result, out_path)
    return result


def _add_dependence(result: dict, dependence: dict) -> None:
    result["visual_dependence"] = dependence
    result["metrics"].update(visual_metrics(dependence))


def merge_eval_shards(samples: Sequence[Sample], out_path: Path, count: int, settings: EvalConfig) -> dict:
    """Join the `count` finished evaluation shards of `out_path` into it: the file one unsharded run writes.

    Predictions and visual-dependence rows go back in the order one run makes them,
    and the metrics are computed over all of them. A missing shard, or one that does
    not hold exactly its samples, is an error naming it.
    """
    position = {sample.id: index for index, sample in enumerate(samples)}
    task_order = {sample.id: (TASKS.index(sample.task), index) for index, sample in enumerate(samples)}
    predictions: list[Prediction] = []
    rows: list[dict] = []
    skipped: dict[str, str] = {}
    model = localizer = ""
    for index in range(1, count + 1):
        path = eval_shard_path(out_path, (index, count))
        if not path.exists():
            raise ValueError(f"shard {index}/{count} is missing: {path}")
        data = json.loads(path.read_text(encoding="utf-8"))
        expected = {sample.id for sample in take_shard(samples, (index, count))}
        if {row["id"] for row in data["predictions"]} != expected:
            raise ValueError(f"{path} does not hold the predictions of shard {index}/{count}: run it again")
        model = data["model"]
        predictions += [Prediction.model_validate(row) for row in data["predictions"]]
        if settings.visual_dependence:
            rows += data["visual_dependence"]["answers"]
            skipped.update(data["visual_dependence"]["skipped"])
            localizer = data["visual_dependence"]["localizer"]
    predictions.sort(key=lambda prediction: position[prediction.id])
    result = score_result(model, predictions, settings.meteor, settings.protocol, settings.report_tokenization)
    if settings.visual_dependence:
        rows.sort(key=lambda row: task_order[row["id"]])
        skipped = {key: skipped[key] for key in sorted(skipped, key=task_order.__getitem__)}
        _add_dependence(result, dependence_result(len(samples), rows, skipped, localizer, settings.vd_timestep))
    dump_json(result, out_path)
    return result
