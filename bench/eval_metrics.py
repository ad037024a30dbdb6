"""Benchmark: all report metrics (BLEU-1..4, ROUGE-L, CIDEr, clinical P/R/F1, METEOR) on 4,000 report pairs.

Goal: <= 30 s on 2 CPU cores for all metrics. Prints, in one run:
- all metrics through `report_metrics(meteor=True)` with a cold METEOR process
  (its Java start-up overlaps the Python metrics),
- the same again with the process warm (a second call in one session),
- the baseline: pycocoevalcap's own `Meteor` wrapper (new process, one pair per
  round trip) on the same pairs, and the ratios against it.

    python bench/eval_metrics.py [--pairs 4000] [--seed 0] [--no-baseline]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import time

from pycocoevalcap.meteor.meteor import Meteor

from mmedpo.evaluation.clinical import _sentence_positives
from mmedpo.evaluation.meteor import meteor_scorer
from mmedpo.evaluation.metrics import report_metrics
from mmedpo.evaluation.text import normalize_report

FINDINGS = ["effusion", "consolidation", "pneumothorax", "nodule", "atelectasis", "opacity", "cardiomegaly"]
SIDES = ["left", "right", "bilateral"]
PLACES = ["upper lobe", "lower lobe", "base", "apex", "hilum"]
SEVERITY = ["small", "moderate", "large", "mild", "subtle"]
NORMAL = [
    "The heart size is normal.",
    "The mediastinal contour is within normal limits.",
    "No pneumothorax is seen.",
    "The lungs are otherwise clear.",
    "There is no acute osseous abnormality.",
    "Pulmonary vasculature is normal.",
]


def synthetic_report(rng: random.Random) -> str:
    """A radiology-like report of 3 to 6 sentences, about 30 to 60 words."""
    sentences = [
        f"There is a {rng.choice(SEVERITY)} {rng.choice(SIDES)} {rng.choice(PLACES)} {rng.choice(FINDINGS)}."
        for _ in range(rng.randint(1, 2))
    ]
    sentences += rng.sample(NORMAL, rng.randint(2, 4))
    rng.shuffle(sentences)
    return " ".join(sentences)


def cpu_seconds() -> float:
    """CPU time of this process, its reaped children and the persistent METEOR process (if started).

    Wall time on a shared 2-core machine mostly measures the neighbours; CPU time does not.
    """
    own = time.process_time() + resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
    if meteor_scorer.cache_info().currsize:
        fields = open(f"/proc/{meteor_scorer().pid}/stat").read().rsplit(")", 1)[1].split()
        own += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return own


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-baseline", action="store_true", help="skip pycocoevalcap's own METEOR wrapper")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    references = [synthetic_report(rng) for _ in range(args.pairs)]
    predictions = [synthetic_report(rng) for _ in range(args.pairs)]

    # Each timing starts with an empty sentence cache for the clinical metrics, as a fresh session would.
    start, cpu = time.perf_counter(), cpu_seconds()
    scores = report_metrics(predictions, references, meteor=True)
    cold, cold_cpu = time.perf_counter() - start, cpu_seconds() - cpu

    _sentence_positives.cache_clear()
    start, cpu = time.perf_counter(), cpu_seconds()
    report_metrics(predictions, references, meteor=False)
    without_meteor, without_cpu = time.perf_counter() - start, cpu_seconds() - cpu

    _sentence_positives.cache_clear()
    start, cpu = time.perf_counter(), cpu_seconds()
    warm_scores = report_metrics(predictions, references, meteor=True)
    warm, warm_cpu = time.perf_counter() - start, cpu_seconds() - cpu
    assert warm_scores == scores

    print(", ".join(f"{name}={value:.4f}" for name, value in scores.items()))
    print(f"load average (1 min) at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{args.pairs} pairs, all but METEOR:                  {without_meteor:6.1f} s wall {without_cpu:6.1f} s CPU")
    print(f"{args.pairs} pairs, all metrics, METEOR process cold: {cold:6.1f} s wall {cold_cpu:6.1f} s CPU")
    print(f"{args.pairs} pairs, all metrics, METEOR process warm: {warm:6.1f} s wall {warm_cpu:6.1f} s CPU")
    if not args.no_baseline:
        gts = {i: [normalize_report(text)] for i, text in enumerate(references)}
        res = {i: [normalize_report(text)] for i, text in enumerate(predictions)}
        start, cpu = time.perf_counter(), cpu_seconds()
        scorer = Meteor()
        baseline_meteor = scorer.compute_score(gts, res)[0]
        scorer.meteor_p.stdin.close()
        scorer.meteor_p.wait()
        baseline = without_meteor + time.perf_counter() - start
        baseline_cpu = without_cpu + cpu_seconds() - cpu
        print(
            f"baseline, the rest + pycocoevalcap Meteor():      {baseline:6.1f} s wall {baseline_cpu:6.1f} s CPU"
            f" (METEOR {baseline_meteor:.4f})"
        )
        print(f"wall ratio cold / baseline {cold / baseline:.2f}; warm / baseline {warm / baseline:.2f}")
        print(f"CPU ratio cold / baseline {cold_cpu / baseline_cpu:.2f}; warm / baseline {warm_cpu / baseline_cpu:.2f}")
        assert abs(baseline_meteor - scores["meteor"]) < 1e-9, "the persistent scorer must give pycocoevalcap's number"


if __name__ == "__main__":
    main()
