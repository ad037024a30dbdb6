"""Where an OpenAI-compatible endpoint is and how to authenticate, following the OpenAI client's conventions.

- The endpoint is `base_url`, else `$OPENAI_BASE_URL`, else OpenAI's
  (`endpoint_url`); Azure OpenAI's v1 endpoint, vLLM and SGLang serve the same API.
- The key comes from `$OPENAI_API_KEY`, or from the variable `api_key_env`
  names (`api_key`); `api_key: EMPTY`, the literal vLLM's docs use, or
  `api_key_env: null` means a server without keys.
- A key is never written in a config: one there is refused (without echoing
  it), so it cannot reach a config dump, a cache or a log. Error bodies may
  echo the key they were sent, so every error text is `scrub`bed of it.

    >>> ChatConfig(base_url="http://127.0.0.1:8000/v1", model="biomistral", api_key="EMPTY").api_key
    'EMPTY'
    >>> scrub("invalid key sk-123", ["sk-123"])
    'invalid key ***'
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

OPENAI_URL = "https://api.openai.com/v1"
NO_KEY = "EMPTY"  # vLLM's docs pass this to clients of a server without keys


class ChatConfig(BaseModel):
    """Where and how to reach an OpenAI-compatible chat endpoint."""

    # A validation error must not echo a key someone wrote into the config.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    base_url: str | None = Field(
        None, description="endpoint root, up to and including /v1; null: $OPENAI_BASE_URL, else " + OPENAI_URL
    )
    model: str = Field("gpt-4o", description="model name the endpoint serves")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="NAME of the environment variable holding the API key; null: send no key"
    )
    api_key: str | None = Field(
        None, description="EMPTY: the server takes no key (vLLM); a real key goes in the environment, never here"
    )
    concurrency: int = Field(8, ge=1, description="requests in flight at once")
    rate_limit: float | None = Field(None, gt=0, description="at most this many requests per second (null: no limit)")
    timeout: float = Field(60.0, gt=0, description="seconds to wait for one reply")
    max_retries: int = Field(5, ge=0, description="retries of a failed request (429, 5xx, timeout, bad body)")
    backoff: float = Field(1.0, gt=0, description="first retry waits 1-1.5x this many seconds; doubles each retry")
    max_backoff: float = Field(60.0, gt=0, description="no retry waits longer, whatever Retry-After asks")
    circuit_breaker: int = Field(
        5, ge=1, description="stop sending after this many auth (401/403) or connection failures in a row"
    )
    max_tokens: int | None = Field(None, ge=1, description="longest reply in tokens (null: the endpoint's default)")
    extra_body: dict[str, Any] = Field(
        {}, description="added to every request body, e.g. vLLM's {top_k: 20}; the stage's own fields win"
    )
    extra_headers: dict[str, str] = Field({}, description="sent with every request, e.g. a gateway's routing header")
    send_images: bool = Field(False, description="send the image as a data URL (only for endpoints that take images)")
    prompt_version: str | None = Field(None, description="prompt template version, e.g. 'v1' (null: the latest)")

    @field_validator("api_key")
    @classmethod
    def _no_key_in_config(cls, value: str | None) -> str | None:
        check_no_key(value)
        return value


def check_no_key(value: Any) -> None:
    """A ValueError, which does not repeat it, if a config's `api_key` is a key rather than EMPTY or null."""
    if value not in (None, NO_KEY):
        raise ValueError(
            f"only {NO_KEY} (a server without keys) may be written in a config; put the key in an "
            "environment variable and name it in api_key_env"
        )


class ChatError(Exception):
    """A request that failed for good: after its retries, or at once when retrying cannot help.

    `kind` names the failure without its details ("HTTP 503", "connection error"), to group them by.
    """

    def __init__(self, message: str, kind: str = "error"):
        super().__init__(message)
        self.kind = kind


def endpoint_url(config: ChatConfig) -> str:
    """`config.base_url`, else $OPENAI_BASE_URL, else OpenAI's, without a trailing slash."""
    return (config.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL).rstrip("/")


def api_key(config: ChatConfig) -> str | None:
    """The key from the environment variable `config.api_key_env` names (None: send none).

    A ValueError (one clear line) if that variable is unset: a configuration
    mistake, found before any request, not a failed request.
    """
    if config.api_key == NO_KEY or config.api_key_env is None:
        return None
    key = os.environ.get(config.api_key_env)
    if not key:
        raise ValueError(
            f"chat endpoint {endpoint_url(config)}: environment variable {config.api_key_env} is not set; "
            f"export the key in it, name another variable in api_key_env, or set api_key: {NO_KEY} "
            "for a server without keys"
        )
    return None if key == NO_KEY else key


def scrub(text: str, secrets: Sequence[str]) -> str:
    """`text` with every secret replaced by ***: error bodies may echo the key they were sent."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
