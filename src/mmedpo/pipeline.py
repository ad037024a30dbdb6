"""Run the stages of a config in order, skipping the ones already finished.

    mmedpo run                       # configs/demo.yaml: SynthMed + the tiny LLaVA
    mmedpo run --config my.yaml -o train.beta=0.2

A stage's fingerprint hashes its own config section and the fingerprints of
the stages it reads from. A stage whose fingerprint is unchanged and that
finished is skipped; a changed one is cleared and run again, and so is every
stage after it. A stage that was killed resumes (its JSONL outputs keep what
was written). The state lives in RUN/stages/STAGE.json, with the stage's wall time.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmedpo.config import RunConfig, dump_config
from mmedpo.records import PreferencePair, Reject, Sample, dump_json, read_jsonl, rejects_path, write_jsonl


@dataclass(frozen=True)
class Run:
    """Paths of a run folder (see docs/architecture.md)."""

    config: RunConfig

    @property
    def dir(self) -> Path:
        return self.config.run_dir

    @property
    def images(self) -> Path:
        return self.dir / "images"

    @property
    def image_roots(self) -> list[Path]:
        root = self.config.data.image_root
        return [Path(root), self.images] if root else [self.images]

    @property
    def samples(self) -> Path:
        return self.dir / "samples.jsonl"

    @property
    def text_pairs(self) -> Path:
        return self.dir / "pairs.text.jsonl"

    @property
    def visual_pairs(self) -> Path:
        return self.dir / "pairs.visual.jsonl"

    def region_pairs(self, region: str) -> Path:
        """Visual pairs noised on the lesion (`visual_pairs`) or on the whole image."""
        return self.visual_pairs if region == "lesion" else self.dir / "pairs.visual-whole.jsonl"

    @property
    def scored_pairs(self) -> Path:
        return self.dir / "pairs.scored.jsonl"

    @property
    def localizer_cnn(self) -> Path:
        return self.dir / "models" / "localizer-cnn.pt"

    def model(self, variant: str) -> Path:
        return self.dir / "models" / variant

    def eval(self, variant: str) -> Path:
        return self.dir / "eval" / f"{variant}.json"

    def stage_state(self, stage: str) -> Path:
        return self.dir / "stages" / f"{stage.replace(':', '.')}.json"

    def split(self, name: str) -> list[Sample]:
        return [s for s in read_jsonl(self.samples, Sample) if s.split == name]


# --- the stages: each reads records and writes records -------------------------------------------


def stage_samples(run: Run, show_progress: bool) -> dict:
    data = run.config.data
    rejects: list[Reject] = []
    if data.source == "synthmed":
        from mmedpo.synth.synthmed import generate_synthmed

        samples = generate_synthmed(
            run.images, {"sft": data.n_sft, "pref": data.n_pref, "test": data.n_test}, run.config.seed, data.image_size
        )
    elif data.source == "dataset":
        from mmedpo.data.readers import read_dataset

        samples, rejects = read_dataset(data.dataset, data.image_root, data.split, **data.reader_options)
        samples = [s.model_copy(update={"split": data.split_map.get(s.split, s.split)}) for s in samples]
    else:
        samples = read_jsonl(data.samples, Sample)
    write_jsonl(run.samples, samples)
    write_jsonl(rejects_path(run.samples), rejects)
    return {
        "read": len(samples) + len(rejects),
        "samples": len(samples),
        "rejected": len(rejects),
        "by_split": _count(s.split for s in samples),
    }


def stage_base(run: Run, show_progress: bool) -> dict:
    from mmedpo.models.sft import supervised_finetune
    from mmedpo.models.tiny import build_tiny_llava

    model = run.config.model
    sft = run.split("sft")
    if model.sft_epochs and not sft:
        raise ValueError("no samples in the 'sft' split: set model.sft_epochs=0 or map a split to sft (data.split_map)")
    start_dir = Path(model.path) if model.path else None
    summary: dict = {}
    if start_dir is None:
        corpus = [text for s in read_jsonl(run.samples, Sample) for text in (s.question, s.answer)]
        start_dir = build_tiny_llava(
            corpus,
            run.model("tiny-init"),
            image_size=model.image_size,
            seed=run.config.seed,
            vision_hidden=model.vision_hidden,
            text_hidden=model.text_hidden,
            layers=model.layers,
        )
        summary["vision_pretrain"] = _pretrain_tiny_vision(run, start_dir, sft, show_progress)
    if model.sft_epochs == 0:
        shutil.copytree(start_dir, run.model("base"), dirs_exist_ok=True)
        return {**summary, "sft_samples": 0}
    supervised_finetune(
        start_dir,
        sft,
        run.image_roots,
        run.model("base"),
        epochs=model.sft_epochs,
        learning_rate=model.sft_learning_rate,
        batch_size=model.sft_batch_size,
        seed=run.config.seed,
        progress=show_progress,
        freeze_vision=model.sft_freeze_vision,
    )
    return {**summary, "sft_samples": len(sft)}


def _pretrain_tiny_vision(run: Run, model_dir: Path, sft: list[Sample], show_progress: bool) -> dict | None:
    """Pretrain the freshly built tiny model's vision tower in place (see models.vision_pretrain)."""
    from mmedpo.models.vision_pretrain import pretrain_vision_tower
    from mmedpo.models.vlm import load_vlm

    epochs = run.config.model.vision_pretrain_epochs
    if not epochs:
        return None
    model, processor = load_vlm(model_dir)
    summary = pretrain_vision_tower(
        model, processor, sft, run.image_roots, epochs, seed=run.config.seed, progress=show_progress
    )
    model.save_pretrained(model_dir)
    return summary


def stage_curate_text(run: Run, show_progress: bool) -> dict:
    from mmedpo.curation.text import curate_text

    summary = curate_text(
        run.split("pref"),
        run.text_pairs,
        run.config.curate_text,
        run.image_roots,
        seed=run.config.seed,
        model_dir=run.model("base"),
        show_progress=show_progress,
    )
    return summary.as_dict()


def stage_curate_visual(run: Run, show_progress: bool) -> dict:
    from mmedpo.curation.localizers import build_localizer, localizer_iou
    from mmedpo.curation.visual import curate_visual

    settings = run.config.curate_visual
    options = dict(settings.localizer_options)
    if settings.localizer == "gradcam":
        from mmedpo.curation.gradcam import train_default_classifier

        classifier = settings.classifier or train_default_classifier(
            run.split("sft"), run.image_roots, run.localizer_cnn, seed=run.config.seed
        )
        options.update(classifier=str(classifier), factory=settings.classifier_factory)
    localizer = build_localizer(settings.localizer, options)
    pref = run.split("pref")
    summaries = {}
    for region in settings.regions:
        summaries[region] = curate_visual(
            pref,
            run.region_pairs(region),
            settings,
            run.image_roots,
            run.images,
            run.model("base"),
            seed=run.config.seed,
            show_progress=show_progress,
            localizer=localizer,
            preview=settings.preview if region == "lesion" else 0,
            noise_region=region,
        ).as_dict()
    # How well the regions match the true lesions, where the data has them (SynthMed does).
    iou = localizer_iou(pref, run.image_roots, localizer) if settings.localizer != "annotation" else None
    first = summaries[settings.regions[0]]
    return {**first, "by_region": summaries if len(summaries) > 1 else None, "localizer_iou": iou}


def stage_score(run: Run, show_progress: bool) -> dict:
    from mmedpo.scoring.panel import score_pairs

    pairs = read_jsonl(run.text_pairs, PreferencePair)
    for region in run.config.curate_visual.regions:
        pairs += read_jsonl(run.region_pairs(region), PreferencePair)
    return score_pairs(pairs, run.scored_pairs, run.config.score, show_progress).as_dict()


def stage_train(run: Run, variant: str, show_progress: bool) -> dict:
    from mmedpo.scoring.panel import reweight
    from mmedpo.training.dpo import train_weighted_dpo

    train = run.config.variant(variant)
    pairs = [p for p in read_jsonl(run.scored_pairs, PreferencePair) if _trains_on(train, p)]
    if not pairs:
        raise ValueError(
            f"variant {variant}: no {'/'.join(train.pair_kinds)} pairs in {run.scored_pairs} "
            f"(visual_region {train.visual_region}; curate_visual.regions makes {run.config.curate_visual.regions})"
        )
    # Weights are normalised over the pairs a variant trains on, so variants that train on
    # different pairs, or weight them by different judges, are weighted the same way.
    pairs = reweight(pairs, run.config.score, train.judges)
    settings = train.settings(run.config.seed)
    train_weighted_dpo(run.model("base"), pairs, run.image_roots, run.model(variant), settings)
    return {"pairs": len(pairs), "by_kind": _count(p.kind for p in pairs)}


def _trains_on(train, pair: PreferencePair) -> bool:
    if pair.kind not in train.pair_kinds:
        return False
    return pair.kind == "text" or pair.provenance.get("region", "lesion") == train.visual_region


def stage_eval(run: Run, variant: str, show_progress: bool) -> dict:
    from mmedpo.evaluation.evaluate import evaluate_model

    settings = run.config.eval
    test = run.split("test")
    max_new_tokens = {"vqa": settings.max_new_tokens_vqa, "report": settings.max_new_tokens_report}
    loaded = None
    if settings.visual_dependence:  # both passes use the model: load it once
        from mmedpo.models.vlm import load_vlm

        loaded = load_vlm(run.model(variant))
    result = evaluate_model(
        run.model(variant),
        test,
        run.image_roots,
        run.eval(variant),
        batch_size=settings.batch_size,
        max_new_tokens=max_new_tokens,
        meteor=settings.meteor,
        prompts=settings.prompts or None,
        protocol=settings.protocol,
        loaded=loaded,
    )
    if loaded is not None:
        result = add_visual_dependence(run, variant, result, test, max_new_tokens, loaded)
    return result["metrics"]


def add_visual_dependence(
    run: Run, variant: str, result: dict, test: list[Sample], max_new_tokens: dict, loaded: tuple
) -> dict:
    """Answer the test questions again with the lesion hidden and on a blank image; store it in the result."""
    from mmedpo.evaluation.compare import visual_metrics
    from mmedpo.evaluation.visual_dependence import visual_dependence, vlm_answerer

    settings = run.config.eval
    answerer = vlm_answerer(*loaded, max_new_tokens, batch_size=settings.batch_size)
    dependence = visual_dependence(
        answerer,
        test,
        run.image_roots,
        timestep=settings.vd_timestep,
        seed=run.config.seed,
        prompts=settings.prompts or None,
    )
    result["visual_dependence"] = dependence
    result["metrics"].update(visual_metrics(dependence))
    dump_json(result, run.eval(variant))
    return result


def stage_report(run: Run, show_progress: bool) -> dict:
    from mmedpo.report.html import write_report

    return {"report": str(write_report(run.dir))}


@dataclass(frozen=True)
class Stage:
    name: str
    settings: Callable[[RunConfig], Any]  # the part of the config it depends on directly
    after: tuple[str, ...]  # stages whose outputs it reads
    outputs: Callable[[Run], list[Path]]
    run: Callable[[Run, bool], dict]


def _section(name: str) -> Callable[[RunConfig], Any]:
    return lambda config: getattr(config, name).model_dump(mode="json")


def build_stages(config: RunConfig) -> tuple[Stage, ...]:
    """The stages of a run in order: the fixed ones, then a train and an eval stage per variant."""
    stages = [
        Stage(
            "samples",
            _section("data"),
            (),
            lambda r: [r.samples, rejects_path(r.samples), r.images / "synthmed"],
            stage_samples,
        ),
        Stage("base", _section("model"), ("samples",), lambda r: [r.model("tiny-init"), r.model("base")], stage_base),
        Stage(
            "curate_text",
            _section("curate_text"),
            ("samples", "base"),
            lambda r: [r.text_pairs, rejects_path(r.text_pairs)],
            stage_curate_text,
        ),
        Stage(
            "curate_visual",
            _section("curate_visual"),
            ("samples", "base"),
            lambda r: [
                *(
                    path
                    for region in ("lesion", "whole")
                    for path in (r.region_pairs(region), rejects_path(r.region_pairs(region)))
                ),
                r.images / "noised",
                r.dir / "preview",
                r.localizer_cnn,
            ],
            stage_curate_visual,
        ),
        Stage(
            "score",
            _section("score"),
            ("curate_text", "curate_visual"),
            lambda r: [r.scored_pairs, rejects_path(r.scored_pairs)],
            stage_score,
        ),
        _eval_stage("base", "base"),
    ]
    for variant in config.variants:
        stages.append(
            Stage(
                f"train:{variant}",
                lambda c, v=variant: c.variant(v).model_dump(mode="json"),
                ("score",),
                lambda r, v=variant: [r.model(v)],
                lambda r, p, v=variant: stage_train(r, v, p),
            )
        )
        stages.append(_eval_stage(variant, f"train:{variant}"))
    after = tuple(stage.name for stage in stages if stage.name.startswith("eval:"))
    stages.append(Stage("report", lambda c: None, after, lambda r: [r.dir / "report"], stage_report))
    return tuple(stages)


def _eval_stage(variant: str, model_stage: str) -> Stage:
    return Stage(
        f"eval:{variant}",
        _section("eval"),
        ("samples", model_stage),
        lambda r: [r.eval(variant), r.eval(variant).with_name(f"{variant}.partial.jsonl")],
        lambda r, p: stage_eval(r, variant, p),
    )


def fingerprints(stages: tuple[Stage, ...], config: RunConfig) -> dict[str, str]:
    """Each stage's fingerprint: its settings, the seed, and its inputs' fingerprints."""
    result: dict[str, str] = {}
    for stage in stages:
        material = {
            "settings": stage.settings(config),
            "seed": config.seed,
            "after": [result[name] for name in stage.after],
        }
        result[stage.name] = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]
    return result


def _read_state(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _clear(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


@dataclass
class StageResult:
    name: str
    status: str  # "ran" | "skipped"
    seconds: float
    summary: dict


def run_stage(run: Run, stage: Stage, fingerprint: str, show_progress: bool = True, force: bool = False) -> StageResult:
    """Run one stage unless it finished with this fingerprint; resume it if it was killed."""
    state_path = run.stage_state(stage.name)
    state = _read_state(state_path)
    if not force and state.get("fingerprint") == fingerprint and state.get("status") == "done":
        return StageResult(stage.name, "skipped", state.get("seconds", 0.0), state.get("summary", {}))
    if force or state.get("fingerprint") != fingerprint:
        _clear(stage.outputs(run))  # changed settings: what is there belongs to another config
    dump_json({"fingerprint": fingerprint, "status": "running"}, state_path)
    started = time.perf_counter()
    summary = stage.run(run, show_progress)
    seconds = round(time.perf_counter() - started, 2)
    dump_json({"fingerprint": fingerprint, "status": "done", "seconds": seconds, "summary": summary}, state_path)
    return StageResult(stage.name, "ran", seconds, summary)


def finished(config: RunConfig, names: list[str]) -> None:
    """Raise unless the named stages finished with the config's current settings."""
    stages = build_stages(config)
    prints = fingerprints(stages, config)
    run = Run(config)
    for name in names:
        state = _read_state(run.stage_state(name))
        if state.get("status") != "done" or state.get("fingerprint") != prints[name]:
            raise ValueError(f"stage {name} has not finished with this config: run `mmedpo run` up to it first")


def mark_done(config: RunConfig, name: str, summary: dict) -> None:
    """Record a stage finished outside `run_pipeline` (merged shards), so later runs skip it."""
    prints = fingerprints(build_stages(config), config)
    state = {"fingerprint": prints[name], "status": "done", "seconds": 0.0, "summary": summary}
    dump_json(state, Run(config).stage_state(name))


def run_pipeline(
    config: RunConfig,
    only: list[str] | None = None,
    force: bool = False,
    show_progress: bool = True,
    on_stage: Callable[[StageResult], None] | None = None,
) -> list[StageResult]:
    """Run every stage (or `only` those named), in order; returns what each did.

    `force` re-runs the selected stages from scratch even if they finished.
    """
    stages = build_stages(config)
    names = [stage.name for stage in stages]
    unknown = [name for name in only or () if name not in names and not any(n.startswith(name + ":") for n in names)]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; valid: {', '.join(names)}")
    run = Run(config)
    run.dir.mkdir(parents=True, exist_ok=True)
    dump_config(config, run.dir / "config.yaml")
    prints = fingerprints(stages, config)
    results = []
    for stage in stages:
        if only and not any(stage.name == name or stage.name.startswith(name + ":") for name in only):
            continue
        result = run_stage(run, stage, prints[stage.name], show_progress, force=force)
        results.append(result)
        if on_stage:
            on_stage(result)
    return results


def _count(values) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts
