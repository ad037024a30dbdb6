"""What both curation stages share: how many samples they write at a time, and the summary they count in."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

CHUNK = 32  # samples generated and written together; also the resume granularity


@dataclass
class CurationSummary:
    read: int = 0
    paired: int = 0
    rejected: int = 0
    skipped_done: int = 0
    failed: int = 0  # samples left for the next run because a generator's request failed
    pairs_by_generator: Counter = field(default_factory=Counter)
    drops: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)  # "generator: why" -> samples
    first_failure: str = ""
    pair_classes: Counter = field(default_factory=Counter)  # visual pairs: the error each shows, lesion found or not

    def as_dict(self) -> dict:
        return {
            "read": self.read,
            "paired": self.paired,
            "rejected": self.rejected,
            "already_done": self.skipped_done,
            "failed": self.failed,
            "pairs_by_generator": dict(self.pairs_by_generator),
            "drop_reasons": dict(self.drops),
            "failures": dict(self.failures),
            **({"pair_classes": dict(self.pair_classes)} if self.pair_classes else {}),  # visual pairs only
        }
