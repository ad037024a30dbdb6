"""Visual pairs that repeat a textual pair: the same sample, the same rejected text, only the image differs.

Such a visual pair mostly teaches what its textual twin already teaches (the
rejected answer is the model's own, both on the clean and on the noised image),
so it is marked, `provenance["duplicates"]` = the textual pair's id, and the
report counts it once. It is kept for training: the noised image still makes
it a multimodal preference. The score stage marks them, the first stage that
reads both kinds of pair.
"""

from __future__ import annotations

from collections.abc import Sequence

from mmedpo.clinical.findings import normalise_text
from mmedpo.records import PreferencePair


def mark_duplicates(pairs: Sequence[PreferencePair]) -> list[PreferencePair]:
    """The pairs, each visual pair whose sample and rejected text (case, spacing and punctuation aside) are a
    textual pair's marked with `provenance["duplicates"]`: that pair's id."""
    texts = {(pair.sample_id, normalise_text(pair.rejected)): pair.id for pair in pairs if pair.kind == "text"}
    marked = []
    for pair in pairs:
        twin = texts.get((pair.sample_id, normalise_text(pair.rejected))) if pair.kind == "visual" else None
        if twin is not None:
            pair = pair.model_copy(update={"provenance": {**pair.provenance, "duplicates": twin}})
        marked.append(pair)
    return marked
