"""Finding extraction: negation scope, uncertainty, laterality, zone, severity, and real IU-Xray sentences."""

import json
from pathlib import Path

from mmedpo.clinical.findings import Finding, compare_answers, extract_findings, finding_set, yes_no
from mmedpo.clinical.lexicon import clinical_severity

FIXTURES = Path("/work/shared/fixtures/mmedpo-released")


def states(text):
    return [(f.name, f.present, f.uncertain, f.side, f.zone, f.severity) for f in extract_findings(text)]


def test_negation_scope_covers_a_list_of_findings():
    assert finding_set("No pleural effusion or pneumothorax.") == {
        ("pleural effusion", False, None),
        ("pneumothorax", False, None),
    }
    assert states("There is no focal airspace opacity, pleural effusion, or pneumothorax.") == [
        ("opacity", False, False, None, None, None),
        ("pleural effusion", False, False, None, None, None),
        ("pneumothorax", False, False, None, None, None),
    ]


def test_negation_stops_at_but_and_at_the_sentence_end():
    assert states("No effusion, but a small left pneumothorax.") == [
        ("pleural effusion", False, False, None, None, None),
        ("pneumothorax", True, False, "left", None, "small"),
    ]
    assert finding_set("No pneumothorax. Large right pleural effusion.") == {
        ("pneumothorax", False, None),
        ("pleural effusion", True, "right"),
    }


def test_other_negation_cues():
    assert finding_set("Mild cardiomegaly without pulmonary edema.") == {
        ("cardiomegaly", True, None),
        ("edema", False, None),
    }
    assert finding_set("The lungs are free of consolidation.") >= {("consolidation", False, None)}
    assert finding_set("Negative for pneumothorax.") == {("pneumothorax", False, None)}
    assert finding_set("Pneumothorax is not seen.") == {("pneumothorax", False, None)}


def test_uncertainty_is_present_but_hedged():
    assert states("Pneumonia cannot be excluded.") == [("pneumonia", True, True, None, None, None)]
    assert states("Possible nodule in the right upper lobe.") == [("nodule", True, True, "right", "upper", None)]


def test_synthmed_report_with_normal_heart():
    findings = extract_findings("Small right pleural effusion. No pneumothorax. The heart size is normal.")
    assert findings[0] == Finding(
        "pleural effusion", True, False, "right", None, "small", "Small right pleural effusion."
    )
    assert [(f.name, f.present) for f in findings[1:]] == [("pneumothorax", False), ("cardiomegaly", False)]
    assert finding_set("The heart is enlarged.") == {("cardiomegaly", True, None)}
    assert finding_set("The heart is not enlarged.") == {("cardiomegaly", False, None)}


def test_laterality_zone_and_synonyms():
    assert states("Bibasilar atelectasis.") == [("atelectasis", True, False, "bilateral", "lower", None)]
    assert states("A left-sided apical pneumothorax.") == [("pneumothorax", True, False, "left", "upper", None)]
    assert states("Moderate effusions.") == [("pleural effusion", True, False, None, None, "moderate")]
    assert [f.name for f in extract_findings("Calcified granuloma and a widened mediastinum.")] == [
        "granuloma",
        "enlarged cardiomediastinum",
    ]


def test_nodule_is_not_no():
    assert yes_no("Nodule") is None
    assert yes_no("No, there is none.") == "no"
    assert yes_no(" Yes") == "yes"
    assert finding_set("nodule") == {("nodule", True, None)}


def test_iu_xray_fixture_report():
    records = json.loads((FIXTURES / "iuxray_dpo_weighted_sample.json").read_text())
    report = records[0]["conversations"][1][
        "value"
    ]  # "The heart size and cardiomediastinal silhouette are normal. ..."
    assert [(f.name, f.present) for f in extract_findings(report)] == [
        ("cardiomegaly", False),
        ("enlarged cardiomediastinum", False),
        ("opacity", False),
        ("pleural effusion", False),
        ("pneumothorax", False),
        ("degenerative changes", True),
    ]


def test_compare_answers():
    assert compare_answers("Small right pleural effusion.", "A small pleural effusion on the right.") == []
    (d,) = compare_answers("Small right pleural effusion.", "Small left pleural effusion.")
    assert (d.name, d.aspect) == ("pleural effusion", "side")
    # Leaving out a negative is no disagreement; inventing a finding is.
    assert compare_answers("No pneumothorax. Small nodule.", "Small nodule.") == []
    assert [d.aspect for d in compare_answers("none", "nodule")] == ["presence"]
    assert compare_answers("liver", "spleen") is None


def test_severity_lexicon():
    assert clinical_severity("pneumothorax") == 0.9
    assert clinical_severity("pleural effusion", "large") == 0.75
    assert clinical_severity("nodule", "small") == 0.4
    assert clinical_severity("pneumothorax", "large") == 1.0
