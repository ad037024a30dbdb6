"""The evaluation a run makes of one model: answers and metrics on the test split, and visual dependence.

    evaluate_run_model(model_dir, test_samples, image_roots, out_path, config.eval, seed)

writes one eval JSON (`evaluate.evaluate_model`'s metrics and predictions) and,
with `settings.visual_dependence`, the answers again with the lesion hidden and
on a blank image (`visual_dependence`), their summary in the same file and its
headline figures among the metrics (with how many samples it measured and
skipped). The model is loaded once for both. The lesion regions come from
`localizer` (default: the samples' annotations), all found before the model
loads, so a localizer with a model of its own is done with it by then.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mmedpo.config import EvalConfig
from mmedpo.evaluation.compare import visual_metrics
from mmedpo.evaluation.evaluate import evaluate_model
from mmedpo.records import Sample, dump_json


def evaluate_run_model(
    model_dir: Path,
    samples: Sequence[Sample],
    image_roots: Sequence[Path],
    out_path: Path,
    settings: EvalConfig,
    seed: int = 0,
    localizer=None,
) -> dict:
    """Evaluate the model in `model_dir` on `samples` as `settings` say; write and return the result."""
    max_new_tokens = {"vqa": settings.max_new_tokens_vqa, "report": settings.max_new_tokens_report}
    loaded = regions = None
    if settings.visual_dependence:  # both passes use the model: load it once
        from mmedpo.imaging.localizers import AnnotationLocalizer
        from mmedpo.imaging.run_localizer import FixedRegions
        from mmedpo.models.vlm import load_vlm

        regions = FixedRegions(localizer or AnnotationLocalizer(), samples, image_roots)
        loaded = load_vlm(model_dir)
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
        loaded=loaded,
        report_tokenization=settings.report_tokenization,
    )
    if loaded is None:
        return result
    from mmedpo.evaluation.visual_dependence import visual_dependence, vlm_answerer

    answerer = vlm_answerer(*loaded, max_new_tokens, batch_size=settings.batch_size)
    dependence = visual_dependence(
        answerer,
        samples,
        image_roots,
        localizer=regions,
        timestep=settings.vd_timestep,
        seed=seed,
        prompts=settings.prompts or None,
    )
    result["visual_dependence"] = dependence
    result["metrics"].update(visual_metrics(dependence))
    dump_json(result, out_path)
    return result
