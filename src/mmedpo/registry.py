"""The names users type in a config, and what each one names.

Every component a config file picks by name (dataset readers, hallucination
generators, localizers, judges, score normalisers, evaluation protocols) is a
line here: name -> "module:attribute". Nothing is imported until a component
is loaded, so `mmedpo.config` checks every name at load time without importing
torch or an HTTP client, and this module sits below every other one. Adding a
component is its class (or function) in its module and one line here; from
Python, `JUDGES.entries["mine"] = "my_package.judges:MyJudge"` (or the class
itself) adds one without editing this file.

    >>> JUDGES.names()
    ['findings', 'chat', 'embedding', 'hf']
    >>> JUDGES.check("findngs", "score.judges")
    Traceback (most recent call last):
    ...
    ValueError: score.judges: unknown judge 'findngs'; did you mean 'findings'? valid: findings, chat, embedding, hf
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterable
from typing import Any


def unknown_name(kind: str, name: str, valid: Iterable[str], setting: str | None = None) -> ValueError:
    """The error for a name that is not one of `valid`: the closest valid name, and all of them."""
    valid = list(valid)
    close = difflib.get_close_matches(name, valid, n=1)
    guess = f"; did you mean {close[0]!r}?" if close else ";"
    where = f"{setting}: " if setting else ""
    return ValueError(f"{where}unknown {kind} {name!r}{guess} valid: {', '.join(valid)}")


class Registry:
    """Names of one kind of component, each mapped to "module:attribute" (or to the object itself)."""

    def __init__(self, kind: str, entries: dict[str, Any]) -> None:
        self.kind = kind
        self.entries = entries  # in the order components are listed (and generators tried)

    def names(self) -> list[str]:
        return list(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def check(self, name: str, setting: str | None = None) -> str:
        """`name` when it is registered; else a ValueError naming `setting`, the closest name and all."""
        if name not in self.entries:
            raise unknown_name(self.kind, name, self.entries, setting)
        return name

    def load(self, name: str, setting: str | None = None) -> Any:
        """The component `name` names, its module imported now; an unknown name fails as in `check`."""
        target = self.entries[self.check(name, setting)]
        if not isinstance(target, str):
            return target
        module, _, attribute = target.partition(":")
        return getattr(importlib.import_module(module), attribute)


READERS = Registry(
    "dataset",
    {
        "vqa-rad": "mmedpo.data.readers.vqa_rad:read_vqa_rad",
        "llava-med-vqa": "mmedpo.data.readers.llava:read_llava_med_vqa",
        "slake": "mmedpo.data.readers.slake:read_slake",
        "pathvqa": "mmedpo.data.readers.pathvqa:read_pathvqa",
        "iu-xray": "mmedpo.data.readers.iu_xray:read_iu_xray",
        "mimic-cxr": "mmedpo.data.readers.mimic_cxr:read_mimic_cxr",
        "llava": "mmedpo.data.readers.llava:read_llava",
    },
)

# Readers whose samples can carry lesion annotations (meta lesion_mask / lesion_boxes and the findings they name).
# A localizer that needs them is refused when the config loads for a dataset read by any other reader.
ANNOTATING_READERS = frozenset({"slake"})

# Candidates are tried in this order: the model-made hallucinations first, because a mistake
# the model itself makes (or one a strong LLM finds plausible) is the one worth unlearning.
GENERATORS = Registry(
    "generator",
    {
        "target": "mmedpo.curation.generators:TargetGenerator",
        "chat": "mmedpo.curation.generators:ChatGenerator",
        "perturb": "mmedpo.curation.generators:PerturbGenerator",
    },
)

LOCALIZERS = Registry(
    "localizer",
    {
        "annotation": "mmedpo.imaging.localizers:AnnotationLocalizer",
        "gradcam": "mmedpo.imaging.gradcam:GradCamLocalizer",
        "attribution": "mmedpo.imaging.attribution:AttributionLocalizer",
    },
)

JUDGES = Registry(
    "judge",
    {
        "findings": "mmedpo.scoring.judges:FindingsJudge",
        "chat": "mmedpo.scoring.chat_judge:ChatJudge",
        "embedding": "mmedpo.scoring.embedding_judge:EmbeddingJudge",
        "hf": "mmedpo.scoring.hf_judge:HFJudge",
    },
)

NORMALISERS = Registry(
    "normaliser",
    {
        "none": "mmedpo.scoring.normalise:keep",
        "minmax": "mmedpo.scoring.normalise:minmax",
        "rank": "mmedpo.scoring.normalise:rank",
        "mean-one": "mmedpo.scoring.normalise:mean_one",
        "clip": "mmedpo.scoring.normalise:clip",
    },
)

# How VQA answers are scored: each is a function of the prediction rows (see evaluation.metrics).
PROTOCOLS = Registry(
    "evaluation protocol",
    {
        "mmedpo": "mmedpo.evaluation.metrics:vqa_item_scores",
        "llava-med-v1.0.0": "mmedpo.evaluation.llava_med:vqa_item_scores",
    },
)
