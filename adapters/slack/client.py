"""The Slack Web API client: the bot token, the API base URL from the settings, and retries.

slack_sdk retries connection errors by default; rate-limited calls (HTTP 429) are retried only when asked, after the
``Retry-After`` the server sends.
"""

from __future__ import annotations

from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

DEFAULT_API_BASE_URL = "https://slack.com/api/"
RATE_LIMIT_RETRIES = 3


def build_web_client(token: str, *, base_url: str | None = None, timeout_s: int = 30) -> AsyncWebClient:
    return AsyncWebClient(
        token=token,
        base_url=api_base_url(base_url),
        timeout=timeout_s,
        retry_handlers=retry_handlers(),
    )


def retry_handlers() -> list[AsyncRetryHandler]:
    return [
        AsyncConnectionErrorRetryHandler(),
        AsyncRateLimitErrorRetryHandler(max_retry_count=RATE_LIMIT_RETRIES),
    ]


def api_base_url(base_url: str | None) -> str:
    """The base URL with its trailing slash (slack_sdk joins method names onto it)."""
    url = base_url or DEFAULT_API_BASE_URL
    return url if url.endswith("/") else url + "/"


def ensure_rate_limit_retries(client: AsyncWebClient) -> None:
    """Add the 429 retry handler to a client built elsewhere, when it has none."""
    if not any(isinstance(h, AsyncRateLimitErrorRetryHandler) for h in client.retry_handlers):
        client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=RATE_LIMIT_RETRIES))
