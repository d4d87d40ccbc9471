"""Platform API calls counted where they leave: an aiohttp trace on the client session (discord.py and slack_sdk both
speak aiohttp), so every attempt is seen, retries included."""

from __future__ import annotations

from types import SimpleNamespace

import aiohttp

from bot.metrics import ApiResult, Metrics


def result_of(status: int) -> ApiResult:
    """429 and 5xx are what the platform clients try again; other 4xx are refusals."""
    if status == 429 or status >= 500:
        return ApiResult.RETRY
    if status >= 400:
        return ApiResult.ERROR
    return ApiResult.OK


def api_trace(metrics: Metrics, platform: str) -> aiohttp.TraceConfig:
    trace = aiohttp.TraceConfig()

    async def on_end(
        _session: aiohttp.ClientSession, _ctx: SimpleNamespace, params: aiohttp.TraceRequestEndParams
    ) -> None:
        metrics.api_call(platform, result_of(params.response.status))

    async def on_exception(
        _session: aiohttp.ClientSession, _ctx: SimpleNamespace, _params: aiohttp.TraceRequestExceptionParams
    ) -> None:
        metrics.api_call(platform, ApiResult.ERROR)

    trace.on_request_end.append(on_end)
    trace.on_request_exception.append(on_exception)
    return trace
