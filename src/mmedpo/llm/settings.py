"""Where and how to reach a chat endpoint: the settings a run's config holds, light to import (no HTTP client)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ChatConfig(BaseModel):
    """Where and how to reach an OpenAI-compatible chat endpoint."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field("https://api.openai.com/v1", description="endpoint root, up to and including /v1")
    model: str = Field("gpt-4o", description="model name the endpoint serves")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="NAME of the environment variable holding the API key; null: send no key"
    )
    concurrency: int = Field(8, ge=1, description="requests in flight at once")
    rate_limit: float | None = Field(None, gt=0, description="at most this many requests per second (null: no limit)")
    timeout: float = Field(60.0, gt=0, description="seconds to wait for one reply")
    max_retries: int = Field(5, ge=0, description="retries of a failed request (429, 5xx, timeout, bad body)")
    backoff: float = Field(1.0, gt=0, description="first retry waits up to this many seconds; doubles each retry")
    send_images: bool = Field(False, description="send the image as a data URL (only for endpoints that take images)")
    prompt_version: str | None = Field(None, description="prompt template version, e.g. 'v1' (null: the latest)")
