"""SynthMed, the embedded synthetic chest X-ray dataset (see docs/synthmed.md)."""

from mmedpo.synth.synthmed import (
    SPLITS,
    answer_statistics,
    draw_case,
    generate_synthmed,
    prior_baseline,
    synthmed_corpus,
)

__all__ = ["SPLITS", "answer_statistics", "draw_case", "generate_synthmed", "prior_baseline", "synthmed_corpus"]
