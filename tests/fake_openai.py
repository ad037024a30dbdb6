"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests and benchmarks, with scriptable faults.

    with FakeOpenAI(reply=lambda body: "No.", latency=0.05) as server:
        server.fail("429:0.2", "500", "hang:2", "garbage", "wrong_json")  # the next five requests, in order
        server.always = "503"  # every request after those, until set back to None (the endpoint recovers)
        ... ChatConfig(base_url=server.url, api_key_env=None) ...
        server.requests  # every request body received (server.connections: connections opened)

Faults: "429:SECONDS" (with Retry-After), "400", "401", "403", "500", "503", "hang:SECONDS" (reply only
after that long), "garbage" (200 with a body that is not JSON), "wrong_json" (200 with JSON that is not
a chat completion), "echo_key" (401 whose body repeats the Authorization header, as some servers do).
`reply(body)` gives the text of each choice: a string (repeated for `n` choices) or a list of strings.
`FakeOpenAI(port=P)` listens on a given port: a test can refuse connections there first, then serve.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def prompt_text(body: dict[str, Any]) -> str:
    """The text of the last user message of a request body (images left out)."""
    content = body["messages"][-1]["content"]
    if isinstance(content, str):
        return content
    return "\n".join(part["text"] for part in content if part.get("type") == "text")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # many clients connect at once in the benchmarks


class FakeOpenAI:
    def __init__(
        self, reply: Callable[[dict], str | list[str]] = lambda body: "No.", latency: float = 0.0, port: int = 0
    ):
        self.reply = reply
        self.latency = latency
        self.port = port
        self.faults: deque[str] = deque()
        self.always: str | None = None
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.connections = 0
        self.lock = threading.Lock()

    def fail(self, *faults: str | None) -> None:
        """Answer the next requests with these faults, one each, in order (None: a normal reply)."""
        self.faults.extend(faults)

    def __enter__(self) -> FakeOpenAI:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
            disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall

            def log_message(self, *args):
                pass

            def setup(self):  # one handler per connection: count them
                super().setup()
                with server.lock:
                    server.connections += 1

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    fault = server.faults.popleft() if server.faults else server.always
                try:
                    time.sleep(server.latency)
                    self._answer(body, fault)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def do_GET(self):  # /stats: how many requests so far (for a server in another process: bench/)
                self._send(200, json.dumps({"requests": len(server.requests)}))

            def _answer(self, body, fault):
                if fault is None:
                    texts = server.reply(body)
                    texts = texts if isinstance(texts, list) else [texts] * int(body.get("n", 1))
                    choices = [
                        {"index": i, "message": {"role": "assistant", "content": t}} for i, t in enumerate(texts)
                    ]
                    self._send(200, json.dumps({"object": "chat.completion", "choices": choices}))
                elif fault.startswith("429"):
                    self._send(429, '{"error": "rate limited"}', {"Retry-After": fault.split(":")[1]})
                elif fault in ("400", "401", "403", "500", "503"):
                    self._send(int(fault), json.dumps({"error": f"fault {fault}"}))
                elif fault == "echo_key":
                    authorization = self.headers.get("Authorization", "")
                    self._send(401, json.dumps({"error": f"invalid key in header 'Authorization: {authorization}'"}))
                elif fault.startswith("hang"):
                    time.sleep(float(fault.split(":")[1]))
                    self._send(200, json.dumps({"choices": [{"message": {"content": "late"}}]}))
                elif fault == "garbage":
                    self._send(200, "<html>Bad gateway</html>")
                elif fault == "wrong_json":
                    self._send(200, '{"result": "no choices here"}')
                else:
                    raise ValueError(f"unknown fault {fault!r}")

            def _send(self, status, text, headers=None):
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        self.server = _Server(("127.0.0.1", self.port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        # A short poll interval: shutdown() waits up to one interval, 0.5 s by default, in every test.
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()
