"""A content-addressed, append-only cache of judge verdicts on disk.

A verdict is keyed by what produced it: the judge, its prompt version, the model
behind it (with a fingerprint of its folder for local weights) and the pair's text
(`cache_key`). Scoring unchanged pairs again then
sends no request, and a killed scoring run resumes from what it had already paid
for. The file is JSON Lines, one verdict a line, flushed as it is written: a
kill loses at most the line being written, and that torn line is cut off when
the cache is opened again. A score shard writes a file of its own beside it
(`mmedpo.jsonl_cache`); every file is read.

    >>> import tempfile, pathlib
    >>> cache = JudgeCache(pathlib.Path(tempfile.mkdtemp()) / "judge_cache.jsonl")
    >>> key = cache_key("chat", "1", "gpt-4o", "Is there a pneumothorax?", "No", "Yes")
    >>> cache.get(key) is None
    True
    >>> cache.put(key, 0.9, "invented pneumothorax")
    >>> cache.get(key), cache.hits, cache.misses
    ((0.9, 'invented pneumothorax'), 1, 1)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mmedpo.jsonl_cache import JsonlCache


def cache_key(judge_name: str, prompt_version: str, model: str, question: str, chosen: str, rejected: str) -> str:
    """sha256 hex digest naming one judge request."""
    # A JSON list keeps the fields apart: ("a b", "c") and ("a", "b c") hash differently.
    fields = [judge_name, prompt_version, model, question, chosen, rejected]
    return hashlib.sha256(json.dumps(fields, ensure_ascii=False).encode("utf-8")).hexdigest()


def folder_fingerprint(path: Path | str) -> str:
    """A short hash of a local model folder's file names, sizes and modification times ("" if not a folder).

    Part of a local judge's cache key, so new weights under the same path are judged
    anew. Reading the weights themselves (gigabytes) would cost more than it saves; a
    copied folder gets new times, which only costs re-judging.
    """
    folder = Path(path)
    if not folder.is_dir():
        return ""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


class JudgeCache:
    """Verdicts (score, reason) by `cache_key`, kept in append-only JSON Lines files (`mmedpo.jsonl_cache`).

    `writer` names a shard worker's own file beside `path`; every file is read.
    `hits` and `misses` count `get` calls. When a key was written twice (two runs
    racing), the last line wins.
    """

    def __init__(self, path: Path | str, writer: str | None = None):
        self._cache = JsonlCache(path, writer, parse=_verdict, what="judge cache entry")
        self.path = self._cache.path

    @property
    def hits(self) -> int:
        return self._cache.hits

    @property
    def misses(self) -> int:
        return self._cache.misses

    def __len__(self) -> int:
        return len(self._cache)

    def get(self, key: str) -> tuple[float, str] | None:
        """The cached (score, reason), or None; counts a hit or a miss."""
        return self._cache.get(key)

    def put(self, key: str, score: float, reason: str) -> None:
        """Store a verdict, on disk at once."""
        self._cache.put(key, score=score, reason=reason)

    def close(self) -> None:
        """Close the file (every verdict is on disk already); a later `put` opens it again."""
        self._cache.close()


def _verdict(entry: dict) -> tuple[float, str]:
    return float(entry["score"]), str(entry["reason"])
