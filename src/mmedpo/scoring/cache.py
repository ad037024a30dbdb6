"""A content-addressed, append-only cache of judge verdicts on disk.

A verdict is keyed by what produced it: the judge, its prompt version, the model
behind it (with a fingerprint of its folder for local weights) and the pair's text
(`cache_key`). Scoring unchanged pairs again then
sends no request, and a killed scoring run resumes from what it had already paid
for. The file is JSON Lines, one verdict a line, flushed as it is written: a
kill loses at most the line being written, and that torn line is cut off when
the cache is opened again.

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
    """Verdicts (score, reason) by `cache_key`, kept in an append-only JSON Lines file.

    `hits` and `misses` count `get` calls. When a key was written twice (two runs
    racing), the last line wins.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.hits = 0
        self.misses = 0
        self._entries: dict[str, tuple[float, str]] = {}
        self._handle = None
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep < len(data):
            # A kill mid-write left a torn last line: cut it so appends start on a clean line.
            with self.path.open("rb+") as handle:
                handle.truncate(keep)
        for number, line in enumerate(data[:keep].decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                self._entries[entry["key"]] = (float(entry["score"]), str(entry["reason"]))
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{self.path}:{number}: not a judge cache entry ({error})") from None

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> tuple[float, str] | None:
        """The cached (score, reason), or None; counts a hit or a miss."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def put(self, key: str, score: float, reason: str) -> None:
        """Store a verdict, on disk at once."""
        if self._handle is None:
            # One append handle for the cache's life: opening the file per verdict costs more CPU
            # than a fast endpoint's whole reply.
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("a", encoding="utf-8")
        self._handle.write(json.dumps({"key": key, "score": score, "reason": reason}, ensure_ascii=False) + "\n")
        # A flush survives a killed process; no fsync, which would cost a disk sync per verdict.
        self._handle.flush()
        self._entries[key] = (score, reason)

    def close(self) -> None:
        """Close the file (every verdict is on disk already); a later `put` opens it again."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
