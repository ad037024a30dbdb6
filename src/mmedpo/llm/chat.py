"""An OpenAI-compatible chat client: bounded concurrency, an optional rate limit, retries.

It speaks `POST {base_url}/chat/completions`, which OpenAI (GPT-4o), vLLM and
SGLang all serve, so the same code asks GPT-4o or a Med-LLM on your own
server. The API key is read from the environment variable the config NAMES
(`api_key_env`), never from the config itself.

Retries: 429, 5xx, timeouts, connection errors and malformed bodies are
retried with exponential backoff and full jitter; a `Retry-After` header is
honoured. Other 4xx (bad request, bad key) fail at once: retrying cannot fix
them. Every reply is validated (JSON, `choices[*].message.content` text).

    >>> config = ChatConfig(base_url="http://127.0.0.1:8000/v1", model="biomistral", api_key_env=None)
    >>> replies = chat_many(config, [([user_message("Is the heart enlarged?")], {"temperature": 0})])  # doctest: +SKIP
    >>> replies[0]  # the choice texts, or a ChatError  # doctest: +SKIP
    ['No.']

`chat_many` and `iter_chat` open a client for one batch of requests; a
`ChatSession` keeps one open across batches, so its connections are reused.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import email.utils
import io
import json
import os
import queue
import random
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import aiohttp
from PIL import Image

from mmedpo.llm.settings import ChatConfig

Messages = list[dict[str, Any]]
RETRY_STATUS = {408, 409, 429}  # and every 5xx
MAX_BACKOFF_S = 60.0


class ChatError(Exception):
    """A request that failed for good: after its retries, or at once when retrying cannot help."""


def api_key(config: ChatConfig) -> str | None:
    """The key from the environment variable `config.api_key_env` names; a clear error if it is unset."""
    if config.api_key_env is None:
        return None
    key = os.environ.get(config.api_key_env)
    if not key:
        raise ChatError(
            f"environment variable {config.api_key_env} (chat api_key_env) is not set; "
            "set it, or set api_key_env to null for an endpoint without a key"
        )
    return key


def image_data_url(image: Image.Image) -> str:
    """A PNG data URL, the form OpenAI-compatible endpoints accept for images."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def user_message(text: str, image: Image.Image | None = None) -> dict[str, Any]:
    """A user turn: plain text, or text and an image part."""
    if image is None:
        return {"role": "user", "content": text}
    parts = [{"type": "image_url", "image_url": {"url": image_data_url(image)}}, {"type": "text", "text": text}]
    return {"role": "user", "content": parts}


class _RateLimiter:
    """Spaces request starts at least 1/rate seconds apart."""

    def __init__(self, rate: float | None):
        self.interval = 1.0 / rate if rate else 0.0
        self.next_start = 0.0
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self.lock:
            now = time.monotonic()
            start = max(now, self.next_start)
            self.next_start = start + self.interval
        await asyncio.sleep(start - now)


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` in seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def reply_texts(body: Any) -> list[str]:
    """The text of every choice in a chat completion body; ValueError if it is not one."""
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list) or not body["choices"]:
        raise ValueError("no 'choices' in the reply")
    texts = []
    for choice in body["choices"]:
        content = choice.get("message", {}).get("content") if isinstance(choice, dict) else None
        if not isinstance(content, str):
            raise ValueError("a choice has no text 'message.content'")
        texts.append(content)
    return texts


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for `url` (HTTPS_PROXY, NO_PROXY, ...), or None.

    Looked up once per client: aiohttp's `trust_env` looks it up, and reads
    ~/.netrc, in a worker thread on every request, which tripled its CPU cost.
    """
    parts = urllib.parse.urlsplit(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return urllib.request.getproxies().get(parts.scheme)


class ChatClient:
    """Async client; use as `async with ChatClient(config) as client: await client.complete(messages)`."""

    def __init__(self, config: ChatConfig):
        self.config = config
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        key = api_key(config)
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.requests_sent = 0

    async def __aenter__(self) -> ChatClient:
        # aiohttp rather than httpx: its pool costs ~0.5 ms of CPU a request, httpx's several ms, which
        # capped throughput at high concurrency. It sets TCP_NODELAY on every connection itself.
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.config.concurrency),
            headers=self.headers,
            timeout=aiohttp.ClientTimeout(total=self.config.timeout),
            proxy=env_proxy(self.url),
        )
        self.slots = asyncio.Semaphore(self.config.concurrency)
        self.limiter = _RateLimiter(self.config.rate_limit)
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.http.close()

    async def complete(self, messages: Messages, **params: Any) -> list[str]:
        """The choice texts of one chat completion; ChatError once retries are spent."""
        payload = {"model": self.config.model, "messages": messages, **params}
        for attempt in range(self.config.max_retries + 1):
            try:
                return await self._attempt(payload)
            except _Retryable as error:
                if attempt == self.config.max_retries:
                    raise ChatError(f"{error} (after {attempt + 1} attempts)") from None
                # Full jitter spreads the retries of many waiting requests apart.
                delay = random.uniform(0, min(MAX_BACKOFF_S, self.config.backoff * 2**attempt))
                await asyncio.sleep(error.retry_after if error.retry_after is not None else delay)
        raise AssertionError("unreachable")

    async def _attempt(self, payload: dict[str, Any]) -> list[str]:
        await self.limiter.wait()
        async with self.slots:
            self.requests_sent += 1
            try:
                async with self.http.post(self.url, json=payload) as response:
                    data = await response.read()
                    status, retry_after = response.status, response.headers.get("retry-after")
            except TimeoutError:  # the total timeout covers connecting, sending and reading the whole body
                raise _Retryable(f"timed out after {self.config.timeout} s") from None
            except aiohttp.ClientError as error:  # refused, reset, disconnected, truncated body
                raise _Retryable(f"connection error: {type(error).__name__}: {error}") from None
        if status in RETRY_STATUS or status >= 500:
            raise _Retryable(f"HTTP {status}", retry_after_seconds(retry_after))
        text = data.decode("utf-8", errors="replace")
        if status != 200:
            raise ChatError(f"HTTP {status} from {self.url}: {text[:200]}")
        try:
            return reply_texts(json.loads(text))
        except ValueError as error:  # json.JSONDecodeError is a ValueError too
            raise _Retryable(f"malformed reply: {error}: {text[:80]!r}") from None


async def complete_each(
    config: ChatConfig, requests: Sequence[tuple[Messages, dict[str, Any]]], on_result: Callable[[int, Any], None]
) -> None:
    """Send every (messages, params) request, `config.concurrency` at a time.

    `on_result(index, choice texts or ChatError)` is called as each finishes.
    """
    async with ChatClient(config) as client:

        async def one(index: int, messages: Messages, params: dict[str, Any]) -> None:
            try:
                on_result(index, await client.complete(messages, **params))
            except ChatError as error:
                on_result(index, error)

        await asyncio.gather(*(one(index, *request) for index, request in enumerate(requests)))


class ChatSession:
    """A ChatClient on an event loop in a thread of its own, for callers outside an event loop.

    Keep one open across batches of requests: it reuses its connections, where a
    fresh client per batch would open `concurrency` new ones (and a loop and a
    thread) every time, which costs more than the batch at high concurrency.
    Close it when done, or use it as a context manager.
    """

    def __init__(self, config: ChatConfig):
        self.client = ChatClient(config)  # a missing key fails here, before a thread starts
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="chat-requests")
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.client.__aenter__(), self.loop).result()

    def submit(self, messages: Messages, **params: Any) -> concurrent.futures.Future:
        """Send one request now; the future's result is the choice texts, or it raises ChatError."""
        return asyncio.run_coroutine_threadsafe(self.client.complete(messages, **params), self.loop)

    def iter_chat(
        self, requests: Sequence[tuple[Messages, dict[str, Any]]]
    ) -> Iterator[tuple[int, list[str] | ChatError]]:
        """Yield (index, choice texts or ChatError) as requests finish; the caller works meanwhile."""
        finished: queue.Queue = queue.Queue()
        futures = [self.submit(messages, **params) for messages, params in requests]
        for index, future in enumerate(futures):
            future.add_done_callback(lambda _, index=index: finished.put(index))
        try:
            for _ in futures:
                index = finished.get()
                yield index, reply_or_error(futures[index])
        finally:
            for future in futures:  # a caller that stops early leaves no requests running
                future.cancel()

    def chat_many(self, requests: Sequence[tuple[Messages, dict[str, Any]]]) -> list[list[str] | ChatError]:
        """Every request's choice texts (or ChatError), in input order."""
        results: list = [None] * len(requests)
        for index, result in self.iter_chat(requests):
            results[index] = result
        return results

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shut(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()

    async def _shut(self) -> None:
        others = asyncio.all_tasks() - {asyncio.current_task()}
        for task in others:  # requests nobody waits for any more
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        await self.client.__aexit__(None, None, None)

    def __enter__(self) -> ChatSession:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def reply_or_error(future: concurrent.futures.Future) -> list[str] | ChatError:
    """A finished request's choice texts, or its ChatError; any other exception (a bug) is raised."""
    try:
        return future.result()
    except ChatError as error:
        return error


def iter_chat(
    config: ChatConfig, requests: Sequence[tuple[Messages, dict[str, Any]]]
) -> Iterator[tuple[int, list[str] | ChatError]]:
    """Yield (index, choice texts or ChatError) as requests finish, for callers outside an event loop.

    The event loop runs in a thread of its own, so the caller can store each
    result (a cache, a JSONL file) while the other requests are in flight.
    """
    with ChatSession(config) as session:
        yield from session.iter_chat(requests)


def chat_many(config: ChatConfig, requests: Sequence[tuple[Messages, dict[str, Any]]]) -> list[list[str] | ChatError]:
    """Every request's choice texts (or ChatError), in input order."""
    with ChatSession(config) as session:
        return session.chat_many(requests)
