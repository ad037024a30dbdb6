"""Benchmark: all report metrics (BLEU-1..4, ROUGE-L, CIDEr, METEOR) on 4,000 synthetic report pairs.

Goal: <= 30 s on 2 CPU cores. Prints the seconds with and without METEOR (whose
Java start-up and paraphrase table dominate on small sets).

    python bench/eval_metrics.py [--pairs 4000] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import time

from mmedpo.evaluation.metrics import report_metrics

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    references = [synthetic_report(rng) for _ in range(args.pairs)]
    predictions = [synthetic_report(rng) for _ in range(args.pairs)]

    start = time.perf_counter()
    report_metrics(predictions, references, meteor=False)
    without_meteor = time.perf_counter() - start

    start = time.perf_counter()
    scores = report_metrics(predictions, references, meteor=True)
    with_meteor = time.perf_counter() - start

    print(", ".join(f"{name}={value:.4f}" for name, value in scores.items()))
    print(f"{args.pairs} pairs: BLEU+ROUGE-L+CIDEr {without_meteor:.1f} s; all metrics with METEOR {with_meteor:.1f} s")


if __name__ == "__main__":
    main()
