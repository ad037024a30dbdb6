"""Finding-level clinical precision, recall and F1 of generated reports, CheXpert-style.

Each report is read by `mmedpo.clinical.findings` into the findings it states
as present: negated ("no effusion", "pneumothorax is not seen") and hedged
("cannot be excluded") mentions are not positive, and a finding said present
anywhere in the report is positive. Side, zone and severity are ignored, as
in CheXpert's labels. Over the whole corpus (micro average):

    TP = findings positive in both the generated and the reference report
    precision = TP / findings positive in the generated reports
    recall    = TP / findings positive in the reference reports

A ratio with a zero denominator is 0.0 (scikit-learn's zero_division=0), so a
corpus of normal reports on both sides scores 0, not 1: there is nothing to find.

>>> clinical_metrics(["Small left effusion. No pneumothorax."], ["Left pleural effusion and pneumothorax."])
{'clinical_precision': 1.0, 'clinical_recall': 0.5, 'clinical_f1': 0.6666666666666666}
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from mmedpo.clinical.findings import find_mentions, split_sentences


def positive_findings(text: str) -> frozenset[str]:
    """Names of the findings `text` states as present (not negated, not hedged)."""
    return frozenset().union(*(_sentence_positives(text[start:end]) for start, end in split_sentences(text)))


@lru_cache(maxsize=65536)
def _sentence_positives(sentence: str) -> frozenset[str]:
    # Reports repeat their sentences ("The lungs are clear."), so sentences are read once each.
    return frozenset(m.finding.name for m in find_mentions(sentence) if m.finding.present and not m.finding.uncertain)


def clinical_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Micro-averaged finding-level precision, recall and F1 of `predictions` against `references`."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    true_positive = predicted = expected = 0
    for prediction, reference in zip(predictions, references):
        said, truth = positive_findings(prediction), positive_findings(reference)
        true_positive += len(said & truth)
        predicted += len(said)
        expected += len(truth)
    precision = true_positive / predicted if predicted else 0.0
    recall = true_positive / expected if expected else 0.0
    f1 = 2 * precision * recall / (precision + recall) if true_positive else 0.0
    return {"clinical_precision": precision, "clinical_recall": recall, "clinical_f1": f1}
