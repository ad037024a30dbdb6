"""Clinical text: findings with negation, uncertainty, laterality and severity; the severity lexicon."""

from mmedpo.clinical.findings import Finding, compare_answers, extract_findings, finding_set

__all__ = ["Finding", "compare_answers", "extract_findings", "finding_set"]
