"""An OpenAI-compatible server on 127.0.0.1 that wraps local HF VLMs: the loopback stand-in for vLLM.

    with VLMServer({"base": model_dir}) as server:       # serves in threads of this process
        ChatConfig(base_url=server.url, model="base", api_key="EMPTY", ...)
        server.fail("429:0", "500", "hang:2")            # the next three requests, in order
        server.requests                                   # every request body received

    python tests/vlm_server.py base=runs/demo/models/base --port 8000   # a process of its own

POST /v1/chat/completions answers with `mmedpo.models.vlm.generate_answers`, as
vLLM would: the image is the user message's data URL, the text its prompt;
`temperature` 0 is greedy, otherwise `top_p`, `n` and `seed` sample (seeded per
request); `max_tokens` bounds the answer. Requests that arrive while the model is
busy wait and are answered together, batched by decoding settings, up to
`max_batch`; an idle server waits `window` seconds (5 ms) for more before it
starts, so a burst is one batch (vLLM instead admits requests at every step). A model is loaded by the first request
for it (so a run can train a model the server already names); one the server does
not serve is a 404, as in vLLM. GET /stats says how many requests came and how many batches ran.

Faults: "429:SECONDS" (with Retry-After), "500", "503", "hang:SECONDS" (a reply
only after that long, so a client with a shorter timeout gives up first).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import sys
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web
from PIL import Image


def decode_request(body: dict) -> tuple[Image.Image, str]:
    """The image (from its data URL) and the prompt text of a chat completion request's last user message."""
    image, texts = None, []
    for part in body["messages"][-1]["content"]:
        if part["type"] == "text":
            texts.append(part["text"])
        elif part["type"] == "image_url":
            _, data = part["image_url"]["url"].split(",", 1)
            image = Image.open(io.BytesIO(base64.b64decode(data)))
            image.load()
    if image is None:
        raise ValueError("the request has no image")
    return image, "\n".join(texts)


class VLMServer:
    def __init__(self, models: dict[str, Path | str], port: int = 0, max_batch: int = 64, window: float = 0.005):
        self.paths = {name: Path(path) for name, path in models.items()}
        self.port, self.max_batch, self.window = port, max_batch, window
        self.faults: deque[str | None] = deque()
        self.requests: list[dict] = []
        self.batches: list[int] = []  # the size of every batch generated

    def fail(self, *faults: str | None) -> None:
        """Answer the next requests with these faults, one each, in order (None: a normal answer)."""
        self.faults.extend(faults)

    def start(self) -> VLMServer:
        """Serve in a thread of this process (each model is loaded by the first request for it)."""
        self._load()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(ready,), daemon=True, name="vlm-server")
        self.thread.start()
        ready.wait()
        return self

    def _load(self) -> None:
        self.models: dict[str, tuple] = {}  # name -> (model, processor), loaded by its first request
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="generate")  # one generation at a time

    def _serve(self, ready: threading.Event) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self._open())
        ready.set()
        self.loop.run_forever()

    async def _open(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.batcher = asyncio.ensure_future(self._batches())
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_post("/v1/chat/completions", self._complete)
        app.router.add_get("/stats", self._stats)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port, backlog=256)
        await site.start()
        self.port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        async def shut():
            self.batcher.cancel()
            await self.runner.cleanup()

        asyncio.run_coroutine_threadsafe(shut(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.executor.shutdown()

    def __enter__(self) -> VLMServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": len(self.requests), "batches": len(self.batches)})

    async def _complete(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        fault = self.faults.popleft() if self.faults else None
        if fault is not None and fault.startswith("429"):
            return web.json_response({"error": "rate limited"}, status=429, headers={"Retry-After": fault[4:]})
        if fault in ("500", "503"):
            return web.json_response({"error": f"fault {fault}"}, status=int(fault))
        if fault is not None and fault.startswith("hang"):
            await asyncio.sleep(float(fault.split(":")[1]))
            return web.json_response({"choices": [{"message": {"content": "late"}}]})
        if body.get("model") not in self.paths:
            return web.json_response({"error": f"the model {body.get('model')!r} does not exist"}, status=404)
        image, prompt = decode_request(body)
        temperature = float(body.get("temperature", 1.0))
        n = int(body.get("n", 1))
        if temperature == 0 and n > 1:
            return web.json_response({"error": "greedy decoding gives one answer: n must be 1"}, status=400)
        settings = (body["model"], int(body.get("max_tokens", 16)), temperature, float(body.get("top_p", 1.0)), n)
        answer = asyncio.get_running_loop().create_future()
        await self.queue.put((settings, image, prompt, body.get("seed"), answer))
        texts = await answer
        choices = [
            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            for i, text in enumerate(texts)
        ]
        return web.json_response({"object": "chat.completion", "model": body["model"], "choices": choices})

    async def _batches(self) -> None:
        """Answer what waits (and what comes within `window`), batched by decoding settings; what arrives
        meanwhile waits for the next batch."""
        loop = asyncio.get_running_loop()
        while True:
            waiting = [await self.queue.get()]
            deadline = loop.time() + self.window
            while len(waiting) < self.max_batch:
                try:
                    waiting.append(await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time())))
                except TimeoutError:
                    break
            groups: dict[tuple, list] = {}
            for item in waiting:
                groups.setdefault(item[0], []).append(item)
            for settings, items in groups.items():
                try:
                    answers = await loop.run_in_executor(self.executor, self._generate, settings, items)
                except Exception as error:  # a bug shows in the test that hit it, not as a hung request
                    for *_, future in items:
                        future.set_exception(error)
                    continue
                self.batches.append(len(items))
                for (*_, future), texts in zip(items, answers):
                    future.set_result(texts)

    def _generate(self, settings: tuple, items: list) -> list[list[str]]:
        from mmedpo.models.vlm import generate_answers, load_vlm

        name, max_tokens, temperature, top_p, n = settings
        if name not in self.models:  # loaded when first asked: a model trained after the server started works
            self.models[name] = load_vlm(self.paths[name], device="cpu")
        sampling = {}
        if temperature > 0:
            seeds = [seed for _, _, _, seed, _ in items]
            seeds = None if None in seeds else seeds
            sampling = dict(temperature=temperature, top_p=top_p, num_return_sequences=n, seeds=seeds)
        return generate_answers(
            *self.models[name],
            [image for _, image, _, _, _ in items],
            [prompt for _, _, prompt, _, _ in items],
            max_new_tokens=max_tokens,
            batch_size=len(items),
            do_sample=temperature > 0,
            **sampling,
        )


def main(argv: list[str]) -> None:
    import argparse

    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="NAME=FOLDER of each served model, e.g. base=runs/demo/models/base")
    parser.add_argument("--port", type=int, default=8000, help="0: any free port")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    models = dict(model.split("=", 1) for model in args.models)
    torch.set_num_threads(args.threads)
    server = VLMServer(models, port=args.port, max_batch=args.max_batch).start()
    print(json.dumps({"url": server.url, "models": list(models)}), flush=True)
    server.thread.join()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    main(sys.argv[1:])
