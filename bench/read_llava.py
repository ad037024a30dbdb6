"""Reading 10,000 LLaVA JSON records: the MMedPO preference JSON and the generic LLaVA
conversation reader (images checked to exist, as for a large dataset). Goal: < 2 s each.

    .venv/bin/python bench/read_llava.py
"""

import json
import tempfile
import time
from pathlib import Path

from PIL import Image

from mmedpo.data.llava_json import read_mmedpo_json
from mmedpo.data.readers import read_dataset

N = 10_000


def main() -> None:
    folder = Path(tempfile.mkdtemp())
    for index in range(100):
        Image.new("L", (8, 8), index).save(folder / f"img{index}.png")
    turn = lambda q, a: [{"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": f" {a}"}]  # noqa: E731
    pairs = [
        {
            "id": i,
            "image": f"img{i % 100}.png",
            "conversations": turn(f"Is there a nodule in region {i}?", "yes"),
            "rejected_conversations": turn(f"Is there a nodule in region {i}?", "no, there is an effusion"),
            "weighted_score": (i % 100) / 100,
        }
        for i in range(N)
    ]
    (folder / "pairs.json").write_text(json.dumps(pairs))
    (folder / "train.json").write_text(json.dumps([{k: p[k] for k in ("id", "image", "conversations")} for p in pairs]))

    start = time.perf_counter()
    result = read_mmedpo_json(folder / "pairs.json")
    pair_seconds = time.perf_counter() - start
    start = time.perf_counter()
    samples, rejects = read_dataset("llava", folder, split="train", check_images="exists")
    sample_seconds = time.perf_counter() - start
    assert len(result.pairs) == N and len(samples) == N and not rejects and not result.rejects
    print(f"MMedPO JSON pairs:        {N} records in {pair_seconds:.2f} s ({N / pair_seconds:,.0f}/s; goal < 2 s)")
    print(f"LLaVA conversation reader: {N} records in {sample_seconds:.2f} s ({N / sample_seconds:,.0f}/s; goal < 2 s)")


if __name__ == "__main__":
    main()
