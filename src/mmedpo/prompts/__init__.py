"""Versioned prompt templates shipped with the package: `NAME_vN.txt`.

A prompt's version is part of every pair's provenance and of the judge cache
key, so a changed prompt is a new file (`judge_v2.txt`), never an edit of an
old one. Templates use `string.Template` fields (`$question`), which leave the
braces of a JSON output format alone.

    >>> text, version = load_prompt("judge", "v1")
    >>> version, "$rejected" in text
    ('v1', True)
"""

from __future__ import annotations

import re
from importlib import resources


def prompt_versions(name: str) -> list[str]:
    """The shipped versions of prompt `name`, oldest first."""
    pattern = re.compile(rf"{re.escape(name)}_(v(\d+))\.txt")
    found = [
        (int(m.group(2)), m.group(1)) for f in resources.files(__name__).iterdir() if (m := pattern.fullmatch(f.name))
    ]
    return [version for _, version in sorted(found)]


def load_prompt(name: str, version: str | None = None) -> tuple[str, str]:
    """(template text, version) of prompt `name`; `version` None means the latest."""
    versions = prompt_versions(name)
    if not versions:
        raise ValueError(f"no prompt named {name!r} is shipped")
    version = version or versions[-1]
    if version not in versions:
        raise ValueError(f"prompt {name!r} has no version {version!r}; shipped: {versions}")
    return resources.files(__name__).joinpath(f"{name}_{version}.txt").read_text(encoding="utf-8"), version
