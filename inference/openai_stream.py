"""The wire format of OpenAI-compatible chat completions: the request body, the SSE stream, error details.

Pure functions, no I/O: ``inference.remote_engine`` does the HTTP. Servers differ in small ways that all land
here: vLLM ends the stream with ``data: [DONE]``, ``transformers serve`` just closes it; errors inside a stream arrive
as ``{"error": "..."}`` or ``{"error": {"message": ...}}``; a finish chunk may carry no choices, only usage.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from bot.domain import GenerationRequest

DONE = "[DONE]"
# Fields outside the OpenAI schema that vLLM and SGLang accept; strict servers answer 400/422 to them.
EXTRA_FIELDS = ("repetition_penalty",)


def chat_body(request: GenerationRequest, model: str, *, send_extras: bool) -> dict[str, Any]:
    """The JSON body of a streamed chat completion for ``request``.

    Greedy decoding is ``temperature: 0`` (every server maps it to argmax). ``repetition_penalty`` is a vLLM/SGLang
    extension: it is sent only when it changes anything (!= 1.0) and ``send_extras`` is true.
    """
    params = request.params
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": turn.role.value, "content": turn.content} for turn in request.turns],
        "stream": True,
        "max_tokens": params.max_new_tokens,
    }
    if params.do_sample:
        body["temperature"] = params.temperature
        body["top_p"] = params.top_p
    else:
        body["temperature"] = 0.0
    if params.seed is not None:
        body["seed"] = params.seed
    if send_extras and params.repetition_penalty != 1.0:
        body["repetition_penalty"] = params.repetition_penalty
    return body


def fairness_headers(request: GenerationRequest) -> dict[str, str]:
    """The channel and the user a request comes from (ids only), for a server that keeps its queue fair across the
    bots that share it (``python -m inference serve``); other servers ignore unknown headers."""
    headers = {"X-Hanbot-Channel": request.channel}
    if request.user:
        headers["X-Hanbot-User"] = request.user
    return headers


def has_extras(body: dict[str, Any]) -> bool:
    return any(name in body for name in EXTRA_FIELDS)


def without_extras(body: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key not in EXTRA_FIELDS}


async def sse_data(lines: AsyncIterator[str]) -> AsyncGenerator[str, None]:
    """The ``data`` payload of each server-sent event (multi-line data joined with newlines).

    Comments (``:``), ``event:``/``id:``/``retry:`` fields are skipped. A last event without its blank line is
    still delivered when the stream ends.
    """
    data: list[str] = []
    async for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


@dataclass(frozen=True)
class ChunkDelta:
    """What one streamed chunk says: new text, why it finished, or a server error."""

    text: str = ""
    finish_reason: str | None = None
    error: str | None = None


def parse_chunk(data: str) -> ChunkDelta:
    """Read one ``chat.completion.chunk`` payload. Malformed JSON is reported as an error, not raised."""
    try:
        payload = json.loads(data)
    except json.JSONDecodeError:
        return ChunkDelta(error="malformed chunk (not JSON)")
    if not isinstance(payload, dict):
        return ChunkDelta(error="malformed chunk (not an object)")
    if payload.get("error") is not None:
        return ChunkDelta(error=error_detail(payload) or "error event without a message")
    choices = payload.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return ChunkDelta()  # e.g. a usage-only chunk
    choice = choices[0]
    delta = choice.get("delta") or {}
    text = delta.get("content") if isinstance(delta, dict) else None
    return ChunkDelta(text=text if isinstance(text, str) else "", finish_reason=choice.get("finish_reason"))


def parse_completion(raw: bytes) -> ChunkDelta:
    """Read a whole (non-streamed) ``chat.completion``, from a server that ignored ``stream: true``."""
    try:
        payload = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return ChunkDelta(error="malformed completion (not JSON)")
    if not isinstance(payload, dict):
        return ChunkDelta(error="malformed completion (not an object)")
    if payload.get("error") is not None:
        return ChunkDelta(error=error_detail(payload) or "error without a message")
    choices = payload.get("choices") or []
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    text = message.get("content") if isinstance(message, dict) else None
    return ChunkDelta(
        text=text if isinstance(text, str) else "", finish_reason=choice.get("finish_reason") or "stop"
    )


def error_detail(payload: Any, limit: int = 200) -> str:
    """A short, log-safe description from an error body: only a string message, never echoed request fields.

    FastAPI's validation errors (a list under ``detail``) echo the request body, messages included: they are
    reduced to the names of the fields they point at.
    """
    if not isinstance(payload, dict):
        return ""
    error = payload.get("error")
    detail = payload.get("detail")
    if isinstance(error, dict):
        message = error.get("message")
    elif isinstance(error, str):
        message = error
    elif isinstance(detail, str):
        message = detail
    elif isinstance(detail, list):
        locs = [".".join(str(p) for p in item.get("loc", ())) for item in detail if isinstance(item, dict)]
        message = "invalid fields: " + ", ".join(loc for loc in locs if loc) if locs else ""
    else:
        message = payload.get("message")
    if not isinstance(message, str):
        return ""
    message = " ".join(message.split())
    return message if len(message) <= limit else message[: limit - 1] + "…"


def retry_after_s(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date); None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)
