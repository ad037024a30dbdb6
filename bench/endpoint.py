"""Visual curation against the loopback OpenAI-compatible server that wraps the tiny model, at concurrency 1/8/32.

Draws N SynthMed images (default 200; every question on them is a sample), takes
the tiny LLaVA in MODEL_DIR (default: an untrained one of the demo's shape,
built here), noises the images once, then curates visual pairs four ways and
prints the answers per second of each (every question on a noised image, and on
the clean image where that answer was wrong, as curation asks):

- in process: `curate_visual` with the model loaded here (the run without an endpoint);
- the server's own capacity: a trivial client (the chat client, every request built
  beforehand) keeping 1, 8 or 32 of exactly these questions in flight;
- `curate_visual` against the server at concurrency 1, 8 and 32, as a ratio to
  in-process generation and to the server's capacity at the same concurrency.

Each measurement is the best of two, alternated, because the machines this runs
on are shared. Beside each figure: the client process's CPU per answer (on a
machine where the server shares the cores, what the client spends the server
lacks) and the server's mean batch.

Goal: at concurrency 32, curation gets at least 0.8x the server's capacity. The
server (tests/vlm_server.py) runs in a process of its own, with one torch thread,
and batches what waits (up to 64), as vLLM batches continuously.

    python bench/endpoint.py [N_IMAGES] [MODEL_DIR]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from functools import partial
from pathlib import Path

from mmedpo.config import CurateVisualConfig
from mmedpo.curation.answering import sample_questions
from mmedpo.curation.visual import KEPT, curate_visual, noised_name
from mmedpo.data.images import load_image
from mmedpo.llm.chat import ChatSession, user_message
from mmedpo.llm.endpoint import ChatConfig
from mmedpo.models.answerer import make_answerer, request_params
from mmedpo.models.tiny import build_tiny_llava
from mmedpo.synth.synthmed import generate_synthmed, synthmed_corpus

SERVER = Path(__file__).resolve().parents[1] / "tests" / "vlm_server.py"
CONCURRENCIES = (1, 8, 32)


def serve(model_dir: Path) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, str(SERVER), f"tiny={model_dir}", "--port", "0", "--threads", "1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    return process, json.loads(process.stdout.readline())["url"]


def curate(samples, root: Path, out: str, answerer=None, model_dir=None) -> tuple[float, int]:
    """Seconds `curate_visual` takes (images noised already) and how many questions it asked."""
    start = time.perf_counter()
    summary = curate_visual(
        samples,
        root / out / "pairs.visual.jsonl",
        CurateVisualConfig(),
        [root / "data", root / "images"],
        root / "images",
        model_dir,
        show_progress=False,
        answerer=answerer,
    )
    kept = sum(count for reason, count in summary.drops.items() if reason.startswith(KEPT))
    return time.perf_counter() - start, summary.paired + kept


def server_stats(url: str) -> tuple[int, int]:
    """(requests, batches) the server has received and generated so far."""
    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats") as response:
        stats = json.load(response)
    return stats["requests"], stats["batches"]


def measured(run, url: str) -> tuple[float, float, float]:
    """(answers/s, this process's CPU ms per answer, the server's mean batch) of `run()`, which returns its
    seconds; the answers are the requests the server served meanwhile."""
    cpu, (requests, batches) = time.process_time(), server_stats(url)
    seconds = run()
    answers, batched = (after - before for after, before in zip(server_stats(url), (requests, batches)))
    return answers / seconds, 1000 * (time.process_time() - cpu) / answers, answers / batched


def trivial_client(url: str, requests: list, concurrency: int) -> float:
    """The server's own capacity: every request built beforehand, `concurrency` in flight; the seconds taken."""
    config = ChatConfig(base_url=url, model="tiny", api_key="EMPTY", concurrency=concurrency, timeout=600)
    with ChatSession(config) as session:
        start = time.perf_counter()
        replies = session.chat_many(requests)
        seconds = time.perf_counter() - start
    assert all(isinstance(reply, list) for reply in replies), "the server failed a request"
    return seconds


def served_curation(samples, root: Path, url: str, concurrency: int, attempt: int) -> float:
    """`curate_visual` against the server, its answers cached from empty as a run's are; the seconds taken."""
    config = ChatConfig(base_url=url, model="tiny", api_key="EMPTY", concurrency=concurrency, timeout=600)
    out = f"served-{concurrency}-{attempt}"
    answerer = make_answerer(None, config, root / out / "answer_cache.jsonl")
    try:
        return curate(samples, root, out, answerer=answerer)[0]
    finally:
        answerer.close()


def main(n_images: int, model_dir: Path | None, rounds: int = 2) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        samples = generate_synthmed(root / "data", {"pref": n_images}, seed=0)
        if model_dir is None:
            model_dir = build_tiny_llava(synthmed_corpus(samples), root / "model", image_size=64, seed=0)
        curate(samples, root, "warm-up", model_dir=model_dir)  # noises every image once; the runs below reuse them
        local_seconds, asked = curate(samples, root, "in-process", model_dir=model_dir)
        clean = len((root / "in-process" / "pairs.visual.jsonl").read_text().splitlines())  # each pair asked twice
        local = (asked + clean) / local_seconds
        lesion = [sample for sample in samples if sample.meta["lesion_mask"]]
        images = [load_image(root / "images" / noised_name(s.image, "lesion", 500)) for s in lesion]
        questions = sample_questions(lesion, images)
        requests = [([user_message(q.prompt, q.image)], request_params(q.decoding)) for q in questions]
        process, url = serve(model_dir)
        try:
            trivial_client(url, requests[:8], 8)  # loads the model
            print(
                f"{n_images} images, {len(samples)} samples, {asked} questions on noised images (and on the clean "
                f"image where the answer was wrong: {clean} more); best of {rounds}"
            )
            print(f"in process: {local:6.1f} answers/s")
            for concurrency in CONCURRENCIES:
                ceiling, curation = (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)
                for attempt in range(rounds):  # alternated, so a busy spell of the machine hits both alike
                    ceiling = max(ceiling, measured(partial(trivial_client, url, requests, concurrency), url))
                    run = partial(served_curation, samples, root, url, concurrency, attempt)
                    curation = max(curation, measured(run, url))
                print(
                    f"concurrency {concurrency:2d}: server capacity {ceiling[0]:6.1f} answers/s, curation "
                    f"{curation[0]:6.1f} answers/s = {curation[0] / local:.2f}x in process, "
                    f"{curation[0] / ceiling[0]:.2f}x the server's capacity; client CPU {ceiling[1]:.1f} and "
                    f"{curation[1]:.1f} ms per answer, mean server batch {ceiling[2]:.1f} and {curation[2]:.1f}"
                )
        finally:
            process.terminate()
            process.wait()
    print("goal: curation at concurrency 32 >= 0.8x the server's capacity")


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)  # as the server, and as the demo runs: the tiny model is faster on one thread
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200, Path(sys.argv[2]) if len(sys.argv) > 2 else None)
