"""Splitting a stage's work over processes or machines: shard i of n, and the files each shard writes.

    mmedpo curate visual --shard 2/4     # on each of four machines, i = 1..4
    mmedpo curate visual --merge 4       # once, after all four finished

A shard is (i, n), 1-based. `take_shard` deals groups of items out in turn:
group k (in order of first appearance) goes to shard k mod n + 1, so shards are
disjoint and together cover every item. A group keeps together what is shared
inside it (every question on one image is asked with one noised image; every pair
with the same judged text is judged once); without a key each item is its own group.

    >>> take_shard(["a", "b", "c", "d", "e"], (2, 2))
    ['b', 'd']
    >>> take_shard(["x.png", "x.png", "y.png", "z.png"], (1, 2), key=str)
    ['x.png', 'x.png', 'z.png']
    >>> shard_path(Path("runs/demo/pairs.text.jsonl"), (2, 4)).name
    'pairs.text.shard-2-of-4.jsonl'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

Shard = tuple[int, int]
T = TypeVar("T")


def parse_shard(text: str) -> Shard:
    """ "2/4" -> (2, 4): the second of four shards (1-based)."""
    index, sep, count = text.partition("/")
    if not (sep and index.strip().isdigit() and count.strip().isdigit()) or not 1 <= int(index) <= int(count):
        raise ValueError(f"shard must look like i/n with 1 <= i <= n, e.g. 2/4; got {text!r}")
    return int(index), int(count)


def shard_name(shard: Shard) -> str:
    """(2, 4) -> "shard-2-of-4", the tag of the shard's files."""
    return f"shard-{shard[0]}-of-{shard[1]}"


def shard_path(path: Path, shard: Shard) -> Path:
    """The file shard (i, n) writes instead of `path`: `pairs.text.jsonl` -> `pairs.text.shard-2-of-4.jsonl`."""
    path = Path(path)
    return path.with_name(f"{path.stem}.{shard_name(shard)}{path.suffix}")


def take_shard(items: Sequence[T], shard: Shard, key: Callable[[T], Any] | None = None) -> list[T]:
    """The items of shard (i, n): every n-th group from the i-th, groups by `key` (default: each item alone)."""
    index, count = shard
    if not 1 <= index <= count:
        raise ValueError(f"shard {index}/{count}: need 1 <= i <= n")
    if key is None:
        return list(items[index - 1 :: count])
    groups: dict[Any, int] = {}
    for item in items:
        groups.setdefault(key(item), len(groups))
    return [item for item in items if groups[key(item)] % count == index - 1]
