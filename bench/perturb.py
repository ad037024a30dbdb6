"""The perturbation generator's vocabulary swap on a PathVQA-shaped split: each gold filtered once, against
filtering every alternative anew for every question, in the same run.

A split's open questions of one type share few gold answers: here QUESTIONS questions over GOLDS distinct
golds, each with the same VOCABULARY of alternatives (answers the split gives to that type). Prints both
times, their ratio, and whether the two give the same candidates from the same random draws.

    .venv/bin/python bench/perturb.py [--questions 2000] [--golds 200] [--vocabulary 1000]
"""

from __future__ import annotations

import argparse
import random
import time

from mmedpo.clinical.lexicon import TERMS
from mmedpo.curation import perturb


def vocabulary(size: int, rng: random.Random) -> list[str]:
    """Distinct open answers in the split's style: a finding, some with a place or a size."""
    places = ["left", "right", "upper", "lower", "apical", "basal", "hilar", "perihilar"]
    sizes = ["small", "large", "multiple", "diffuse", "focal"]
    answers: set[str] = set()
    while len(answers) < size:
        finding = rng.choice(TERMS).name
        words = [rng.choice(sizes)] if rng.random() < 0.5 else []
        words += [rng.choice(places)] if rng.random() < 0.5 else []
        answers.add(" ".join([*words, finding, *([f"grade {rng.randint(1, 40)}"] if rng.random() < 0.6 else [])]))
    return sorted(answers)


def candidates(golds: list[str], alternatives: list[str], cached: bool) -> tuple[float, list]:
    rng = random.Random(0)
    perturb._fitting_answers.cache_clear()
    made = []
    start = time.perf_counter()
    for gold in golds:
        if not cached:
            perturb._fitting_answers.cache_clear()  # the baseline: every question filters the vocabulary anew
        made.append(perturb.perturb_answer(gold, "open", "vqa", rng, alternatives))
    return time.perf_counter() - start, made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=2000)
    parser.add_argument("--golds", type=int, default=200)
    parser.add_argument("--vocabulary", type=int, default=1000)
    args = parser.parse_args()
    rng = random.Random(1)
    alternatives = vocabulary(args.vocabulary, rng)
    golds = [rng.choice(alternatives[: args.golds]) for _ in range(args.questions)]
    anew, baseline = candidates(golds, alternatives, cached=False)
    once, ours = candidates(golds, alternatives, cached=True)
    print(f"{args.questions} questions, {args.golds} golds, {len(alternatives)} alternatives")
    print(f"every question anew: {anew:.2f} s; each gold once: {once:.2f} s")
    print(f"each gold once / anew: {once / anew:.3f}; the same candidates: {ours == baseline}")


if __name__ == "__main__":
    main()
