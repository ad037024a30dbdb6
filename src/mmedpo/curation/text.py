"""Textual preference pairs: the ground truth over a plausible hallucination.

Run it:

    mmedpo curate text --config configs/demo.yaml

For every sample the generators (`curation.generators`: the target model, a
chat endpoint, clinical perturbations) propose rejected answers. A candidate is
kept only when it contradicts the ground truth (see
`curation.filters.check_rejected`); model-made candidates come first, because a
hallucination the model itself produces is the one worth unlearning. Samples
with no acceptable candidate go to the rejects file with the reason; the
summary counts pairs per generator and every dropped candidate per generator
and reason. A sample whose request to a generator failed (an HTTP error, a
refused connection) is neither: pairing it from the other generators alone
would silently shift their mix, so it is left out, the stage raises
`StageIncomplete` with the failures grouped by cause, and the next run asks
again for those samples only. Samples read = paired + rejected + failed. A
configured generator with no pair in the finished file fails the stage
(`check_generators`) unless `allow_empty_generators` names it: otherwise a
generator that makes nothing usable would shift the mix without a word.

Many machines can split the work: `shard=(i, n)` curates every n-th sample
from the i-th (1-based) into `pairs.text.shard-i-of-n.jsonl`, and
`curation.merge.merge_curated` joins the finished shards into the file a single run writes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from mmedpo.config import CurateTextConfig
from mmedpo.curation.filters import check_rejected
from mmedpo.curation.generators import REQUEST_FAILED, Candidate, Failure, GeneratorContext, make_generators
from mmedpo.curation.merge import sort_curated
from mmedpo.curation.summary import CHUNK, CurationSummary
from mmedpo.curation.vocabulary import AnswerVocabulary, question_type
from mmedpo.errors import StageIncomplete
from mmedpo.progress import progress_bar
from mmedpo.records import JsonlStore, PreferencePair, Reject, Sample, rejects_path
from mmedpo.shards import Shard, shard_path, take_shard


def select_pairs(
    sample: Sample,
    candidates: Sequence[Candidate],
    settings: CurateTextConfig,
    summary: CurationSummary,
    vocabulary: AnswerVocabulary | None = None,
) -> list[PreferencePair]:
    """The first acceptable, distinct candidates, as pairs; counts every drop.

    `vocabulary` (the split's answers per question type) lets the filters refuse an
    answer to another type of question.
    """
    pairs, seen = [], set()
    kind = question_type(sample)
    for candidate in candidates:
        text, generator = candidate.text, candidate.provenance["generator"]
        reason = check_rejected(
            sample.answer, text, sample.answer_type, sample.task, settings.max_length_ratio, kind, vocabulary
        )
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


def curate_text(
    samples: Sequence[Sample],
    out_path: Path,
    settings: CurateTextConfig,
    image_roots: Sequence[Path],
    seed: int = 0,
    model_dir: Path | None = None,
    show_progress: bool = True,
    shard: Shard | None = None,
    answerer=None,
) -> CurationSummary:
    """Write textual pairs for `samples` to `out_path` (or its shard file), resuming what is already there.

    `answerer` is the target model (`models.answerer`, e.g. a served one); None loads it from `model_dir`.
    The split's answer vocabulary (`curation.vocabulary`) comes from all of `samples`,
    so every shard filters and perturbs with the same one.
    """
    vocabulary = AnswerVocabulary.of(samples)
    if shard is not None:
        samples, out_path = take_shard(samples, shard), shard_path(out_path, shard)
    store = JsonlStore(out_path, PreferencePair)
    reject_store = JsonlStore(rejects_path(out_path), Reject)
    done = {pair.sample_id for pair in store} | {reject.id for reject in reject_store}
    summary = CurationSummary(read=len(samples))
    todo = [sample for sample in samples if sample.id not in done]
    summary.skipped_done = len(samples) - len(todo)
    if not todo:
        return summary
    context = GeneratorContext(
        image_roots=image_roots, seed=seed, model_dir=model_dir, vocabulary=vocabulary, answerer=answerer
    )
    generators = make_generators(settings.generators, settings, context)
    chunks = [todo[start : start + CHUNK] for start in range(0, len(todo), CHUNK)]
    streams = [generator.generate_chunks(chunks) for generator in generators]
    try:
        with progress_bar("curate text", len(todo), show_progress) as advance:
            for chunk, *results in zip(chunks, *streams):
                generated = [(generator.name, per_sample) for generator, per_sample in zip(generators, results)]
                _write_chunk(chunk, generated, settings, summary, store, reject_store, vocabulary)
                advance(len(chunk))
    finally:
        for stream in streams:  # the chat generator's stream holds its connections open
            stream.close()
    if summary.skipped_done and not summary.failed:
        sort_curated(samples, out_path)  # samples a failed request held back were appended after the others
    if summary.failed:
        grouped = ", ".join(f"{why}: {count}" for why, count in summary.failures.items())
        raise StageIncomplete(
            f"curate text: {summary.failed} of {summary.read} samples left unpaired because generator requests "
            f"failed ({grouped}); first: {summary.first_failure[:200]}. The other samples are written: run again "
            "to retry these",
            summary.as_dict(),
        )
    return summary


def _write_chunk(chunk, generated: list, settings, summary: CurationSummary, store, reject_store, vocabulary) -> None:
    """Pair every sample of a chunk from (generator name, per-sample results); write its pairs and rejects."""
    pairs, rejects = [], []
    for index, sample in enumerate(chunk):
        results = [(name, per_sample[index]) for name, per_sample in generated]
        if _requests_failed(results, summary):
            continue  # neither paired nor rejected: the next run asks again
        reject = _pair_sample(sample, results, settings, summary, pairs, vocabulary)
        if reject is not None:
            rejects.append(Reject(id=sample.id, source=f"sample {sample.id}", reason=reject))
    store.extend(pairs)
    reject_store.extend(rejects)
    summary.paired += len({p.sample_id for p in pairs})
    summary.rejected += len(rejects)


def _requests_failed(results: list, summary: CurationSummary) -> bool:
    """Whether a generator's request for this sample failed (counted in `summary`).

    An unreadable image outranks it: the sample cannot be paired whatever the endpoint says.
    """
    failures = [(name, r) for name, r in results if isinstance(r, Failure)]
    failed = [(name, failure) for name, failure in failures if failure.code == REQUEST_FAILED]
    if not failed or len(failed) < len(failures):
        return False
    summary.failed += 1
    summary.failures.update(f"{name}: {failure.kind}" for name, failure in failed)
    summary.first_failure = summary.first_failure or failed[0][1].reason
    return True


def _pair_sample(
    sample: Sample, results: list, settings, summary: CurationSummary, pairs: list, vocabulary
) -> str | None:
    """Append the sample's pairs to `pairs`; None, or why the sample has none.

    `results` holds (generator name, its candidates or Failure) for this sample;
    the only Failure left here is an unreadable image.
    """
    unreadable = next((result for _, result in results if isinstance(result, Failure)), None)
    if unreadable is not None:
        return unreadable.reason
    candidates = [candidate for _, result in results for candidate in result]
    chosen = select_pairs(sample, candidates, settings, summary, vocabulary)
    if not chosen:
        return "no candidate contradicts the answer"
    pairs += chosen
    summary.pairs_by_generator.update(p.provenance["generator"] for p in chosen)
    return None


def check_generators(out_path: Path, settings: CurateTextConfig) -> dict[str, int]:
    """Pairs per generator in the finished pairs file; ValueError naming each configured one with none.

    Model-made candidates come first, so a later generator may rightly pair few
    samples, but a configured generator that pairs none is a fault in it or in its
    endpoint, not a mix the user chose; `allow_empty_generators` accepts it.
    """
    counts = Counter(pair.provenance.get("generator") for pair in JsonlStore(out_path, PreferencePair))
    empty = [name for name in settings.generators if not counts[name] and name not in settings.allow_empty_generators]
    if empty:
        made = ", ".join(f"{name} {count}" for name, count in counts.items()) or "none"
        raise ValueError(
            f"curate text: the generators {empty} made no pair in {out_path} (pairs by generator: {made}); "
            "fix them, drop them from curate_text.generators, or name them in curate_text.allow_empty_generators"
        )
    return dict(counts)
