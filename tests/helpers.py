"""Small builders shared by test files (imported as `helpers`; pytest puts tests/ on the path)."""

from mmedpo.records import PreferencePair


def make_pair(index: int, **changes) -> PreferencePair:
    """A valid closed-question text pair `p{index}`; `changes` override any field."""
    fields = dict(
        id=f"p{index}",
        sample_id=f"s{index}",
        task="vqa",
        kind="text",
        image="a.png",
        question="Is there a nodule?",
        chosen="yes",
        rejected="no",
        answer_type="closed",
    )
    return PreferencePair(**{**fields, **changes})


# Three generated reports and their references: punctuation, case and word order differ.
REPORT_PREDICTIONS = ["No acute disease. Heart size normal.", "Small left effusion!", "lungs are clear"]
REPORT_REFERENCES = [
    "Heart size is normal; no acute disease.",
    "There is a small LEFT pleural effusion.",
    "The lungs are clear.",
]
