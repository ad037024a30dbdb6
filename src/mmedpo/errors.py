"""Exceptions that cross module floors: a stage says it did only part of its work."""

from __future__ import annotations


class StageIncomplete(Exception):
    """A stage wrote what succeeded but some requests failed; re-running it retries only those.

    The resume engine records the stage as "incomplete" (never "done"), prints the
    message as one line and stops the run, so no later stage runs on partial input.
    `summary` says how many failed and why.
    """

    def __init__(self, message: str, summary: dict | None = None):
        super().__init__(message)
        self.summary = summary or {}
