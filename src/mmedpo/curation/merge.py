"""Curation files in sample order: joining a stage's shards, and finishing a stage that was resumed.

A curation stage writes pairs and rejects in sample order. `mmedpo curate text
--shard i/n` (or `curate visual`) writes `pairs.KIND.shard-i-of-n.jsonl` and its
rejects; `merge_curated` puts every shard's pairs and rejects back in sample
order, so the result is the same whichever shard finished first, and equal to
what one run writes. A sample whose request failed is written by a later run,
after the others: `sort_curated` puts it back in its place once the stage is
complete, so transient failures leave no trace in the order later stages (and
training) read the pairs in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mmedpo.records import PreferencePair, Reject, Sample, read_jsonl, rejects_path, write_jsonl
from mmedpo.shards import shard_path, take_shard


def _in_sample_order(samples: Sequence[Sample], pairs: list[PreferencePair], rejects: list[Reject]) -> None:
    order = {sample.id: position for position, sample in enumerate(samples)}
    # Stable sorts keep each sample's pairs in their order.
    pairs.sort(key=lambda pair: order[pair.sample_id])
    rejects.sort(key=lambda reject: order[reject.id])


def sort_curated(samples: Sequence[Sample], out_path: Path) -> None:
    """Rewrite `out_path` and its rejects in sample order, where they are not (a resumed run appended late)."""
    pairs, rejects = read_jsonl(out_path, PreferencePair), read_jsonl(rejects_path(out_path), Reject)
    ordered_pairs, ordered_rejects = list(pairs), list(rejects)
    _in_sample_order(samples, ordered_pairs, ordered_rejects)
    if ordered_pairs != pairs:
        write_jsonl(out_path, ordered_pairs)
    if ordered_rejects != rejects:
        write_jsonl(rejects_path(out_path), ordered_rejects)


def merge_curated(
    samples: Sequence[Sample], out_path: Path, count: int, key: Callable[[Sample], Any] | None = None
) -> dict:
    """Join the `count` finished shard files of `out_path` into it (and its rejects), in sample order.

    `key` groups samples as the stage's shards did (`shards.take_shard`). A missing
    or unfinished shard is an error naming it, so a merge never silently loses samples.
    """
    pairs: list[PreferencePair] = []
    rejects: list[Reject] = []
    for index in range(1, count + 1):
        path = shard_path(out_path, (index, count))
        if not path.exists():
            raise ValueError(f"shard {index}/{count} is missing: {path}")
        shard_pairs, shard_rejects = read_jsonl(path, PreferencePair), read_jsonl(rejects_path(path), Reject)
        covered = {p.sample_id for p in shard_pairs} | {r.id for r in shard_rejects}
        missing = [s.id for s in take_shard(samples, (index, count), key) if s.id not in covered]
        if missing:
            raise ValueError(
                f"shard {index}/{count} is unfinished: {len(missing)} samples missing (first {missing[0]}); "
                f"resume it with --shard {index}/{count}"
            )
        pairs += shard_pairs
        rejects += shard_rejects
    _in_sample_order(samples, pairs, rejects)
    write_jsonl(out_path, pairs)
    write_jsonl(rejects_path(out_path), rejects)
    return {"shards": count, "pairs": len(pairs), "paired": len({p.sample_id for p in pairs}), "rejected": len(rejects)}


def image_of(sample: Sample) -> str:
    """What visual shards group samples by: their image, noised once for all its questions."""
    return sample.image


def merge_visual_shards(samples: Sequence[Sample], out_paths: dict[tuple[str, str], Path], count: int) -> dict:
    """Join the `count` finished shards of every visual pairs file (by image, as they were dealt out)."""
    summaries = {
        path.name.removeprefix("pairs.").removesuffix(".jsonl"): merge_curated(samples, path, count, key=image_of)
        for path in out_paths.values()
    }
    return {**summaries[next(iter(summaries))], "by_file": summaries if len(summaries) > 1 else None}
