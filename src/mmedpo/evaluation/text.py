"""The words that answers and reports are compared by.

`tokenize` is ours and the default everywhere: lower case, apostrophes removed
("there's" -> "theres"), and every other character that is not a letter or a
digit separates words, so hyphens, periods and all other punctuation disappear
("pleural-effusion." -> "pleural", "effusion"). Report metrics get these words
joined by single spaces.

R2Gen (Chen et al., EMNLP 2020), whose cleaning most report-generation papers
reuse, does NOT tokenise this way, so report metrics can also be computed on
its cleaning (`report_tokenization="r2gen-iu-xray"` or `"r2gen-mimic-cxr"`),
reimplemented from its `modules/tokenizers.py` (`clean_report_iu_xray`,
`clean_report_mimic_cxr`, github.com/zhjohnchan/R2Gen, commit e8cd3cf):

1. Runs of periods become one ("..." -> "."); list numbers are removed ("1. ",
   and " 2. " to " 5. " become ". "). The MIMIC-CXR variant also turns line
   breaks into spaces and collapses runs of underscores and of spaces first.
2. The lower-cased text is split into sentences at ". ".
3. In each sentence, quotes, slashes, backslashes and apostrophes are deleted,
   then the characters . , ? ; * ! % ^ & _ + ( ) : < = > @ [ ] { } are deleted.
   Hyphens are KEPT ("pleural-effusion" stays one word): R2Gen's character class
   `[.,?;*!%^&_+():-\\[\\]{}]` reads `:-\\[` as the range ":" to "[", not as a
   hyphen. Digits and other symbols (#, $, ~, |) are kept too.
4. Sentences are joined by " . " and the report ends with " ." (empty sentences
   are kept: its test `sent_cleaner(sent) != []` compares a string with a list).
   So every sentence end is a token "." that BLEU counts.

Not reproduced: R2Gen maps words rarer than its vocabulary threshold to <unk>
in both reports (the vocabulary comes from its training split, which we do not
have), and runs of more than 2**k periods, underscores or spaces, which its
repeated `replace` calls collapse only partly.
"""

from __future__ import annotations

import re

REPORT_TOKENIZATIONS = ("mmedpo", "r2gen-iu-xray", "r2gen-mimic-cxr")

# Apostrophes are removed rather than split on, so "there's" stays one word ("theres").
_APOSTROPHES = re.compile(r"['\u2019]")
# A word is a run of letters or digits (any script); everything else separates words.
_WORD = re.compile(r"[^\W_]+")

# R2Gen step 3: what its sentence cleaner deletes (its class, with the ":" to "[" range spelt out; the
# upper-case letters of that range never occur because the text is lower-cased first).
_R2GEN_DELETED = re.compile(r"[.,?;*!%^&_+():<=>@\[\]{}]")
_R2GEN_QUOTES = str.maketrans("", "", "\"/\\'")
_R2GEN_LIST_NUMBERS = (
    ("1. ", ""),
    *((f". {n}. ", ". ") for n in range(2, 6)),
    *((f" {n}. ", ". ") for n in range(2, 6)),
)


def tokenize(text: str) -> list[str]:
    """Lower-cased words of `text` with all punctuation stripped.

    >>> tokenize("There's NO pleural-effusion.")
    ['theres', 'no', 'pleural', 'effusion']
    """
    return _WORD.findall(_APOSTROPHES.sub("", text.lower()))


def r2gen_clean(report: str, dataset: str) -> str:
    """R2Gen's cleaning of a report ("iu_xray" or "mimic_cxr" variant), its tokens joined by single spaces.

    >>> r2gen_clean("The heart is normal. No pleural-effusion.", "iu_xray")
    'the heart is normal . no pleural-effusion .'
    """
    if dataset == "mimic_cxr":
        report = _halve_runs(_halve_runs(report.replace("\n", " "), "_", 7), " ", 6)
        report = _halve_runs(report, ".", 8)
    elif dataset == "iu_xray":
        report = _halve_runs(report, ".", 3)
    else:
        raise ValueError(f"unknown R2Gen cleaning {dataset!r}; valid: iu_xray, mimic_cxr")
    for old, new in _R2GEN_LIST_NUMBERS:
        report = report.replace(old, new)
    sentences = report.strip().lower().split(". ")
    cleaned = [_R2GEN_DELETED.sub("", sentence.translate(_R2GEN_QUOTES).strip().lower()) for sentence in sentences]
    # R2Gen hands its reports to pycocoevalcap after decoding them from token ids, i.e. single-spaced.
    return " ".join((" . ".join(cleaned) + " .").split())


def _halve_runs(text: str, char: str, times: int) -> str:
    """R2Gen's `replace(char * 2, char)` repeated `times` times: runs of up to 2**times `char`s become one."""
    for _ in range(times):
        text = text.replace(char * 2, char)
    return text


def normalize_report(text: str, tokenization: str = "mmedpo") -> str:
    """A report as the words pycocoevalcap compares, joined by single spaces, under `tokenization`.

    >>> normalize_report("No pleural-effusion.")
    'no pleural effusion'
    >>> normalize_report("No pleural-effusion.", "r2gen-iu-xray")
    'no pleural-effusion .'
    """
    if tokenization == "mmedpo":
        return " ".join(tokenize(text))
    if tokenization in ("r2gen-iu-xray", "r2gen-mimic-cxr"):
        return r2gen_clean(text, tokenization.removeprefix("r2gen-").replace("-", "_"))
    raise ValueError(f"unknown report tokenization {tokenization!r}; valid: {', '.join(REPORT_TOKENIZATIONS)}")
