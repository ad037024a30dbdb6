"""The clinical vocabulary: findings with their synonyms, categories and severities, and the modifier words.

Finding names follow CheXpert's labels (plus the SynthMed ones, which are a subset)
so that a finding extracted from a report can be compared across datasets.

Severity lexicon
----------------
`Term.severity` is how clinically costly it is to get that finding wrong (invent it,
miss it, put it on the wrong side), on [0, 1]. It follows urgency: what needs action
within hours scores high, what is incidental scores low.

    0.9+  free air (pneumoperitoneum), pneumothorax: emergencies, need decompression or surgery
    0.8   mass, pneumomediastinum: suspected malignancy / airway or oesophageal injury
    0.7   pulmonary edema, pneumonia: need treatment now
    0.6   consolidation, pleural effusion, fracture, widened mediastinum, lung lesion
    0.5   nodule, cardiomegaly, lymphadenopathy: need follow-up, rarely urgent
    0.3-  opacity (non-specific), emphysema, atelectasis, support devices, hiatal hernia,
          granuloma (healed), degenerative changes: usually incidental

The size or severity word said with the finding shifts it (`GRADE_SHIFT`): a large
effusion (0.75) matters more than a small one (0.45); a small nodule is medium (0.4).
A mere rewording changes no finding and so scores 0.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Term:
    """One finding: canonical name, swap category, severity, and the phrases that name it."""

    name: str
    category: str
    severity: float
    synonyms: tuple[str, ...]
    plurals: tuple[str, ...] = ()

    @property
    def display(self) -> str:
        return self.synonyms[0]

    @property
    def display_plural(self) -> str:
        return self.plurals[0] if self.plurals else self.synonyms[0]


TERMS: tuple[Term, ...] = (
    Term("pneumothorax", "pleural", 0.9, ("pneumothorax",), ("pneumothoraces", "pneumothoraxes")),
    Term(
        "pleural effusion",
        "pleural",
        0.6,
        ("pleural effusion", "effusion", "pleural fluid", "hydrothorax"),
        ("pleural effusions", "effusions"),
    ),
    Term("nodule", "parenchymal", 0.55, ("nodule", "nodular opacity", "pulmonary nodule"), ("nodules",)),
    Term("mass", "parenchymal", 0.8, ("mass", "tumor", "tumour"), ("masses", "tumors", "tumours")),
    Term(
        "consolidation",
        "parenchymal",
        0.6,
        ("consolidation", "airspace consolidation", "air space consolidation"),
        ("consolidations",),
    ),
    Term("pneumonia", "parenchymal", 0.7, ("pneumonia", "infectious process"), ("pneumonias",)),
    Term("atelectasis", "parenchymal", 0.3, ("atelectasis", "collapsed lung", "lung collapse"), ("atelectases",)),
    Term(
        "edema",
        "parenchymal",
        0.7,
        ("edema", "pulmonary edema", "oedema", "pulmonary oedema", "vascular congestion", "pulmonary congestion"),
    ),
    Term(
        "opacity",
        "parenchymal",
        0.45,
        ("opacity", "airspace opacity", "air space opacity", "airspace disease", "infiltrate", "opacification"),
        ("opacities", "airspace opacities", "infiltrates"),
    ),
    Term("lung lesion", "parenchymal", 0.6, ("lesion", "lung lesion", "cavitary lesion"), ("lesions",)),
    Term("emphysema", "parenchymal", 0.35, ("emphysema", "copd", "chronic obstructive pulmonary disease")),
    Term("granuloma", "parenchymal", 0.15, ("granuloma", "calcified granuloma"), ("granulomas", "granulomata")),
    Term(
        "cardiomegaly",
        "cardiac",
        0.5,
        (
            "cardiomegaly",
            "enlarged heart",
            "heart enlargement",
            "cardiac enlargement",
            "large heart",
            "enlarged cardiac silhouette",
            "enlargement of the cardiac silhouette",
        ),
    ),
    Term(
        "enlarged cardiomediastinum",
        "cardiac",
        0.6,
        (
            "enlarged cardiomediastinum",
            "widened mediastinum",
            "mediastinal widening",
            "enlarged cardiomediastinal silhouette",
        ),
    ),
    Term("pneumomediastinum", "mediastinal", 0.8, ("pneumomediastinum",)),
    Term("lymphadenopathy", "mediastinal", 0.5, ("lymphadenopathy", "hilar enlargement", "adenopathy")),
    Term("hiatal hernia", "mediastinal", 0.2, ("hiatal hernia", "hiatus hernia"), ("hiatal hernias",)),
    Term("fracture", "osseous", 0.6, ("fracture", "rib fracture"), ("fractures", "rib fractures")),
    Term(
        "degenerative changes",
        "osseous",
        0.1,
        ("degenerative change", "degenerative disease", "spondylosis"),
        ("degenerative changes",),
    ),
    Term("pneumoperitoneum", "abdominal", 0.95, ("pneumoperitoneum", "free air", "free intraperitoneal air")),
    Term(
        "support devices",
        "devices",
        0.3,
        (
            "support device",
            "chest tube",
            "endotracheal tube",
            "nasogastric tube",
            "central line",
            "central venous catheter",
            "picc line",
            "pacemaker",
            "port-a-cath",
            "intravenous catheter",
            "sternal wires",
        ),
        ("support devices", "chest tubes", "pacemakers", "intravenous catheters"),
    ),
)

TERMS_BY_NAME: dict[str, Term] = {term.name: term for term in TERMS}

# Anatomy described as normal or abnormal rather than by the finding's name:
# "The heart size is normal." says there is no cardiomegaly. finding -> (anatomy, abnormal words);
# lungs have no abnormal word here ("increased lung volumes" is not an opacity).
NORMAL_STATE = r"normal|within normal limits|unremarkable|upper limits? of normal|clear"
ANATOMY: dict[str, tuple[str, str | None]] = {
    "cardiomegaly": (
        r"(?:heart|cardiac)(?:\s+(?:size|silhouette|contours?|shadow))?",
        r"enlarged|enlargement|increased",
    ),
    "enlarged cardiomediastinum": (
        r"(?:cardio)?mediastin(?:al|um)(?:\s+(?:silhouette|contours?|structures))?",
        r"enlarged|enlargement|widened|widening",
    ),
    "opacity": (r"(?:lungs?|lung fields?)", None),
}

# Modifier word -> normalised value. Zones: apical = upper, basilar = lower.
SIDE_WORDS: dict[str, str] = {
    "right": "right",
    "left": "left",
    "bilateral": "bilateral",
    "bilaterally": "bilateral",
    "both": "bilateral",
    "bibasilar": "bilateral",
    "bibasal": "bilateral",
    "biapical": "bilateral",
}
ZONE_WORDS: dict[str, str] = {
    "upper": "upper",
    "apical": "upper",
    "apex": "upper",
    "apices": "upper",
    "biapical": "upper",
    "lower": "lower",
    "basilar": "lower",
    "basal": "lower",
    "base": "lower",
    "bases": "lower",
    "bibasilar": "lower",
    "bibasal": "lower",
    "middle": "middle",
    "mid": "middle",
}
SEVERITY_WORDS: dict[str, str] = {
    "small": "small",
    "tiny": "small",
    "trace": "small",
    "minimal": "small",
    "large": "large",
    "massive": "large",
    "huge": "large",
    "extensive": "large",
    "mild": "mild",
    "mildly": "mild",
    "moderate": "moderate",
    "moderately": "moderate",
    "severe": "severe",
    "severely": "severe",
    "marked": "severe",
    "markedly": "severe",
    "significant": "severe",
}
# Size and severity words on one scale, so "small" and "mild" agree and "large" and "severe" agree.
GRADE: dict[str, str] = {
    "small": "low",
    "mild": "low",
    "moderate": "mid",
    "large": "high",
    "severe": "high",
}
GRADE_SHIFT: dict[str, float] = {"low": -0.15, "mid": 0.0, "high": 0.15}

# Open answers that say "no finding": comparable with the findings of another answer.
NONE_ANSWERS = frozenset({"none", "normal", "no finding", "no findings", "no abnormality", "nothing"})

# Severity used when two answers differ but name no known finding (e.g. "liver" vs "spleen").
UNRECOGNISED_SEVERITY = 0.5


def clinical_severity(name: str, severity: str | None = None) -> float:
    """How costly an error about finding `name` (said with size/severity word `severity`) is, in [0.05, 1]."""
    base = TERMS_BY_NAME[name].severity if name in TERMS_BY_NAME else UNRECOGNISED_SEVERITY
    shift = GRADE_SHIFT[GRADE[severity]] if severity in GRADE else 0.0
    return round(min(1.0, max(0.05, base + shift)), 4)
