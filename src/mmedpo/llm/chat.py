"""An OpenAI-compatible chat client: bounded concurrency, an optional rate limit, retries, a circuit breaker.

It speaks `POST {base_url}/chat/completions`, which OpenAI (GPT-4o), Azure
OpenAI's v1 endpoint, vLLM and SGLang all serve, so the same code asks GPT-4o
or a Med-LLM on your own server. `ChatConfig` (in `llm.endpoint`) says where
the endpoint is and where its key comes from (the environment, never the config).

Retries: 429, 5xx, timeouts, connection errors and malformed bodies are
retried after `min(max_backoff, max(Retry-After, backoff * 2**retry))`, times a
random 1-1.5 so waiting requests spread apart (`retry_delay`). Other 4xx (bad
request, bad key) fail at once: retrying cannot fix them. After
`circuit_breaker` auth (401/403) or connection failures in a row the client
stops sending: every request left fails at once, so a bad key is not sent for
every item. Every reply is validated (JSON, `choices[*].message.content` text),
and the key is scrubbed ("***") from every error text, which may echo it.

    >>> config = ChatConfig(base_url="http://127.0.0.1:8000/v1", model="biomistral", api_key="EMPTY")
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
import queue
import random
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

import aiohttp
from PIL import Image

from mmedpo.llm.endpoint import ChatConfig, ChatError, api_key, endpoint_url, scrub

Messages = list[dict[str, Any]]
RETRY_STATUS = {408, 409, 429}  # and every 5xx
AUTH_STATUS = {401, 403}


def retry_delay(
    retry: int, retry_after: float | None, backoff: float, cap: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait before retry number `retry` (0-based).

    min(cap, max(Retry-After, backoff * 2**retry)), times a random 1-1.5 so the
    retries of many waiting requests spread apart. The cap wins over a long
    Retry-After (which would otherwise block the run), and a Retry-After of 0
    keeps the exponential backoff (which would otherwise hammer the server).

    >>> retry_delay(0, 90.0, 1.0, 60.0)
    60.0
    >>> 4.0 <= retry_delay(2, 0.0, 1.0, 60.0) <= 6.0
    True
    """
    wait = max(retry_after or 0.0, backoff * 2**retry) * (rng or random).uniform(1.0, 1.5)
    return min(cap, wait)


async def wait_before_retry(seconds: float) -> None:
    """Sleep before a retry; a module function so that tests can record the delays instead of sleeping."""
    await asyncio.sleep(seconds)


def image_data_url(image: Image.Image) -> str:
    """A PNG data URL, the form OpenAI-compatible endpoints accept for images."""
    buffer = io.BytesIO()
    # PNG is lossless at every level; level 1 costs a third of the default's CPU (5.7 against 1.7 ms for a
    # 128 px noisy image), which the client pays per request, and its files were no larger on such images.
    image.save(buffer, format="PNG", compress_level=1)
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
    def __init__(self, message: str, kind: str, retry_after: float | None = None):
        super().__init__(message)
        self.kind = kind
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
        self.url = endpoint_url(config) + "/chat/completions"
        key = api_key(config)  # a missing key fails here, before anything is sent
        self.secrets = [key] if key else []
        self.headers = {**config.extra_headers, **({"Authorization": f"Bearer {key}"} if key else {})}
        self.requests_sent = 0
        self.failures_in_a_row = 0  # auth or connection failures since the last other reply, over all requests
        self.broken: tuple[str, str] | None = None  # (message, kind) once the circuit breaker opened

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
        config = self.config
        payload = {**config.extra_body, "model": config.model, "messages": messages}
        if config.max_tokens is not None:
            payload["max_tokens"] = config.max_tokens
        payload.update(params)
        for retry in range(config.max_retries + 1):
            try:
                return await self._attempt(payload)
            except _Retryable as error:
                if retry == config.max_retries:
                    raise self._error(f"{error} (after {retry + 1} attempts)", error.kind) from None
                if self.broken is not None:  # the circuit breaker opened: no point waiting to retry
                    raise ChatError(*self.broken) from None
                await wait_before_retry(retry_delay(retry, error.retry_after, config.backoff, config.max_backoff))
        raise AssertionError("unreachable")

    async def _attempt(self, payload: dict[str, Any]) -> list[str]:
        await self.limiter.wait()
        async with self.slots:
            if self.broken is not None:  # checked once a slot is free: queued requests are not sent either
                raise ChatError(*self.broken)
            self.requests_sent += 1
            try:
                async with self.http.post(self.url, json=payload) as response:
                    data = await response.read()
                    status, retry_after = response.status, response.headers.get("retry-after")
            except TimeoutError:  # the total timeout covers connecting, sending and reading the whole body
                raise _Retryable(f"timed out after {self.config.timeout} s", "timeout") from None
            except aiohttp.ClientConnectorError as error:  # refused, unknown host, unreachable
                message = f"connection error: {type(error).__name__}: {error}"
                self._failed_in_a_row("connection error", message)
                raise _Retryable(message, "connection error") from None
            except aiohttp.ClientError as error:  # reset, disconnected, truncated body
                raise _Retryable(f"connection error: {type(error).__name__}: {error}", "connection error") from None
        text = data.decode("utf-8", errors="replace")
        body = " ".join(text[:200].split())  # one line, for the console and the rejects file
        if status in AUTH_STATUS:
            message = f"HTTP {status} from {self.url}: {body}"
            self._failed_in_a_row(f"HTTP {status}", message)
            raise self._error(message, f"HTTP {status}")
        self.failures_in_a_row = 0  # the server answered and took the key
        if status in RETRY_STATUS or status >= 500:
            raise _Retryable(f"HTTP {status}", f"HTTP {status}", retry_after_seconds(retry_after))
        if status != 200:
            raise self._error(f"HTTP {status} from {self.url}: {body}", f"HTTP {status}")
        try:
            return reply_texts(json.loads(text))
        except ValueError as error:  # json.JSONDecodeError is a ValueError too
            raise _Retryable(f"malformed reply: {error}: {text[:80]!r}", "malformed reply") from None

    def _failed_in_a_row(self, kind: str, message: str) -> None:
        """Count an auth or connection failure; open the circuit breaker at `circuit_breaker` in a row."""
        self.failures_in_a_row += 1
        limit = self.config.circuit_breaker
        if self.failures_in_a_row >= limit and self.broken is None:
            self.broken = (
                scrub(
                    f"not sent: {limit} {kind} failures in a row stopped the client; the last: {message}", self.secrets
                ),
                f"not sent after {limit} x {kind}",
            )

    def _error(self, message: str, kind: str) -> ChatError:
        return ChatError(scrub(message, self.secrets), kind)


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
