"""A content-addressed, append-only cache on disk: values by key in JSON Lines files, one file per writer.

The judge cache (`scoring.cache`) and the answer cache (`models.answerer`) keep
what an endpoint returned here, so a killed or incomplete stage resumes from
what it already paid for and asks only what is missing.

Each line is `{"key": ..., field: value, ...}`, flushed as it is written: a
kill loses at most the line being written. The main writer appends to `path`
(runs/NAME/answer_cache.jsonl); any other writer, a shard worker perhaps on
another machine sharing the folder, appends to a file of its own beside it
(answer_cache.curate_visual.shard-1-of-4.jsonl), so no two processes ever
append to one file. Every reader reads them all. A writer cuts its own torn
last line when it opens its file; of the other files, a reader skips an
unfinished last line (another process may be writing it right now).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


class JsonlCache:
    """Values by key from `path` and its writers' files; `put` appends to this writer's file.

    `parse(entry)` turns a line's fields into the stored value (raising on a
    malformed one, which names the file and line); `what` names an entry in that
    error. `hits` and `misses` count `get` calls. When a key was written twice,
    the last file read wins (the main file first, then the others by name).
    """

    def __init__(
        self,
        path: Path | str,
        writer: str | None = None,
        parse: Callable[[dict], Any] = dict,
        what: str = "cache entry",
    ):
        self.path = Path(path)
        self.own = self.path if writer is None else self.path.with_name(f"{self.path.stem}.{writer}{self.path.suffix}")
        self.parse, self.what = parse, what
        self.hits = 0
        self.misses = 0
        self._entries: dict[str, Any] = {}
        self._handle = None
        others = sorted(self.path.parent.glob(f"{self.path.stem}.*{self.path.suffix}"))
        for file in [self.path, *others]:
            self._load(file)

    def _load(self, file: Path) -> None:
        if not file.exists():
            return
        data = file.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep < len(data) and file == self.own:
            # A kill mid-write left a torn last line: cut it so appends start on a clean line.
            with file.open("rb+") as handle:
                handle.truncate(keep)
        for number, line in enumerate(data[:keep].decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                self._entries[entry.pop("key")] = self.parse(entry)
            except (ValueError, KeyError, TypeError, AttributeError) as error:
                raise ValueError(f"{file}:{number}: not a {self.what} ({error})") from None

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Any:
        """The cached value, or None; counts a hit or a miss."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def put(self, key: str, **fields: Any) -> None:
        """Store an entry, on disk at once."""
        if self._handle is None:
            # One append handle for the cache's life: opening the file per entry costs more CPU
            # than a fast endpoint's whole reply.
            self.own.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.own.open("a", encoding="utf-8")
        self._handle.write(json.dumps({"key": key, **fields}, ensure_ascii=False) + "\n")
        # A flush survives a killed process; no fsync, which would cost a disk sync per entry.
        self._handle.flush()
        self._entries[key] = self.parse(dict(fields))

    def close(self) -> None:
        """Close the file (every entry is on disk already); a later `put` opens it again."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
