"""Textual preference pairs: the ground truth over a plausible hallucination.

Run it:

    mmedpo curate text --config configs/demo.yaml

For every sample the generators (`curation.generators`: the target model, a
chat endpoint, clinical perturbations) propose rejected answers. A candidate is
kept only when it contradicts the ground truth (see
`curation.filters.check_rejected`); model-made candidates come first, because a
hallucination the model itself produces is the one worth unlearning. Samples
with no acceptable candidate go to the rejects file with the reason, so samples
read = samples paired + samples rejected; the summary counts pairs per
generator and every dropped candidate per generator and reason.

Many machines can split the work: `shard=(i, n)` curates every n-th sample
from the i-th (1-based) into `pairs.text.shard-i-of-n.jsonl`, and
`merge_shards` joins the finished shards into the file a single run writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mmedpo.config import CurateTextConfig
from mmedpo.curation.filters import check_rejected
from mmedpo.curation.generators import Candidate, Failure, GeneratorContext, make_generators
from mmedpo.curation.summary import CHUNK, CurationSummary
from mmedpo.progress import progress_bar
from mmedpo.records import JsonlStore, PreferencePair, Reject, Sample, read_jsonl, rejects_path, write_jsonl


def select_pairs(
    sample: Sample, candidates: Sequence[Candidate], settings: CurateTextConfig, summary: CurationSummary
) -> list[PreferencePair]:
    """The first acceptable, distinct candidates, as pairs; counts every drop."""
    pairs, seen = [], set()
    for candidate in candidates:
        text, generator = candidate.text, candidate.provenance["generator"]
        reason = check_rejected(sample.answer, text, sample.answer_type, sample.task, settings.max_length_ratio)
        if reason is None and text.strip().lower() in seen:
            reason = "duplicate"
        if reason is not None:
            summary.drops[f"{generator}:{reason}"] += 1
            continue
        seen.add(text.strip().lower())
        pairs.append(
            PreferencePair(
                id=f"{sample.id}-text-{len(pairs)}",
                sample_id=sample.id,
                task=sample.task,
                kind="text",
                image=sample.image,
                question=sample.question,
                chosen=sample.answer,
                rejected=text.strip(),
                answer_type=sample.answer_type,
                provenance=dict(candidate.provenance),
            )
        )
        if len(pairs) == settings.pairs_per_sample:
            break
    return pairs


def shard_path(out_path: Path, index: int, count: int) -> Path:
    """`pairs.text.jsonl` -> `pairs.text.shard-2-of-4.jsonl`."""
    stem = out_path.name.removesuffix(".jsonl")
    return out_path.with_name(f"{stem}.shard-{index}-of-{count}.jsonl")


def parse_shard(text: str) -> tuple[int, int]:
    """ "2/4" -> (2, 4): the second of four shards (1-based)."""
    index, sep, count = text.partition("/")
    if not (sep and index.strip().isdigit() and count.strip().isdigit()) or not 1 <= int(index) <= int(count):
        raise ValueError(f"shard must look like i/n with 1 <= i <= n, e.g. 2/4; got {text!r}")
    return int(index), int(count)


def shard_samples(samples: Sequence[Sample], index: int, count: int) -> list[Sample]:
    """Every `count`-th sample from the `index`-th (1-based): shards are disjoint and cover all samples."""
    if not 1 <= index <= count:
        raise ValueError(f"shard {index}/{count}: need 1 <= i <= n")
    return list(samples[index - 1 :: count])


def curate_text(
    samples: Sequence[Sample],
    out_path: Path,
    settings: CurateTextConfig,
    image_roots: Sequence[Path],
    seed: int = 0,
    model_dir: Path | None = None,
    show_progress: bool = True,
    shard: tuple[int, int] | None = None,
) -> CurationSummary:
    """Write textual pairs for `samples` to `out_path` (or its shard file), resuming what is already there."""
    if shard is not None:
        samples, out_path = shard_samples(samples, *shard), shard_path(out_path, *shard)
    store = JsonlStore(out_path, PreferencePair)
    reject_store = JsonlStore(rejects_path(out_path), Reject)
    done = {pair.sample_id for pair in store} | {reject.id for reject in reject_store}
    summary = CurationSummary(read=len(samples))
    todo = [sample for sample in samples if sample.id not in done]
    summary.skipped_done = len(samples) - len(todo)
    if not todo:
        return summary
    context = GeneratorContext(image_roots=image_roots, seed=seed, model_dir=model_dir)
    generators = make_generators(settings.generators, settings, context)
    chunks = [todo[start : start + CHUNK] for start in range(0, len(todo), CHUNK)]
    streams = [generator.generate_chunks(chunks) for generator in generators]
    try:
        with progress_bar("curate text", len(todo), show_progress) as advance:
            for chunk, *results in zip(chunks, *streams):
                generated = [(generator.name, per_sample) for generator, per_sample in zip(generators, results)]
                _write_chunk(chunk, generated, settings, summary, store, reject_store)
                advance(len(chunk))
    finally:
        for stream in streams:  # the chat generator's stream holds its connections open
            stream.close()
    return summary


def _write_chunk(chunk, generated: list, settings, summary: CurationSummary, store, reject_store) -> None:
    """Pair every sample of a chunk from (generator name, per-sample results); write its pairs and rejects."""
    pairs, rejects = [], []
    for index, sample in enumerate(chunk):
        results = [(name, per_sample[index]) for name, per_sample in generated]
        reject = _pair_sample(sample, results, settings, summary, pairs)
        if reject is not None:
            rejects.append(Reject(id=sample.id, source=f"sample {sample.id}", reason=reject))
    store.extend(pairs)
    reject_store.extend(rejects)
    summary.paired += len({p.sample_id for p in pairs})
    summary.rejected += len(rejects)


def _pair_sample(sample: Sample, results: list, settings, summary: CurationSummary, pairs: list) -> str | None:
    """Append the sample's pairs to `pairs`; None, or why the sample has none.

    `results` holds (generator name, its candidates or Failure) for this sample.
    """
    failures = [(name, result) for name, result in results if isinstance(result, Failure)]
    unreadable = next((f for _, f in failures if f.code == "image"), None)
    if unreadable is not None:
        return unreadable.reason
    for name, failure in failures:
        summary.drops[f"{name}:{failure.code}"] += 1
    candidates = [candidate for _, result in results if not isinstance(result, Failure) for candidate in result]
    chosen = select_pairs(sample, candidates, settings, summary)
    if not chosen:
        failed = "".join(f"; {failure.reason}" for _, failure in failures)
        return "no candidate contradicts the answer" + failed
    pairs += chosen
    summary.pairs_by_generator.update(p.provenance["generator"] for p in chosen)
    return None


def merge_shards(samples: Sequence[Sample], out_path: Path, count: int) -> dict:
    """Join the `count` finished shard files into `out_path` (and its rejects), in sample order.

    The result is the file one unsharded run writes. A missing or unfinished
    shard is an error naming it, so a merge never silently loses samples.
    """
    order = {sample.id: position for position, sample in enumerate(samples)}
    pairs: list[PreferencePair] = []
    rejects: list[Reject] = []
    for index in range(1, count + 1):
        path = shard_path(out_path, index, count)
        if not path.exists():
            raise ValueError(f"shard {index}/{count} is missing: {path}")
        shard_pairs, shard_rejects = read_jsonl(path, PreferencePair), read_jsonl(rejects_path(path), Reject)
        covered = {p.sample_id for p in shard_pairs} | {r.id for r in shard_rejects}
        missing = [s.id for s in shard_samples(samples, index, count) if s.id not in covered]
        if missing:
            raise ValueError(
                f"shard {index}/{count} is unfinished: {len(missing)} samples missing (first {missing[0]}); "
                f"resume it with --shard {index}/{count}"
            )
        pairs += shard_pairs
        rejects += shard_rejects
    # Stable sorts keep each sample's pairs in their order.
    pairs.sort(key=lambda pair: order[pair.sample_id])
    rejects.sort(key=lambda reject: order[reject.id])
    write_jsonl(out_path, pairs)
    write_jsonl(rejects_path(out_path), rejects)
    return {"shards": count, "pairs": len(pairs), "paired": len({p.sample_id for p in pairs}), "rejected": len(rejects)}
