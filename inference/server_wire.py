"""The engine server's side of the OpenAI chat-completions format: the request body read into a GenerationRequest,
the chunks and the completion written back, errors as OpenAI error bodies.

Pure functions, no I/O (``inference.engine_server`` does the HTTP). The client's side is ``inference.openai_stream``.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from bot.domain import BASE_MODEL, ChatTurn, GenerationParams, GenerationRequest, Role
from bot.errors import (
    EngineError,
    EnginePaused,
    EngineUnhealthy,
    GenerationCancelled,
    GenerationTimeout,
    QueueFull,
)

ROLES = {role.value: role for role in Role}
MAX_TOKENS_LIMIT = 1 << 20


class BadRequest(ValueError):
    """A request body the server cannot serve: HTTP 400 with an ``invalid_request_error``."""


@dataclass(frozen=True)
class ChatCall:
    """One parsed chat-completions request."""

    model: str
    stream: bool
    request: GenerationRequest


def parse_chat(
    body: Any, *, defaults: GenerationParams, lora: str | None, channel: str, user: str
) -> ChatCall:
    """Read a chat-completions body. ``lora`` is the version ``model`` names (BASE_MODEL for the base model)."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' must be a non-empty string")
    request = GenerationRequest(
        request_id=f"chatcmpl-{uuid.uuid4().hex[:24]}",
        channel=channel or "remote:-:default",
        turns=_turns(body.get("messages")),
        params=_params(body, defaults),
        lora=lora,
        user=user,
    )
    return ChatCall(model=model, stream=bool(body.get("stream", False)), request=request)


def _turns(messages: Any) -> tuple[ChatTurn, ...]:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list")
    turns = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role not in ROLES:
            raise BadRequest(f"messages[{i}].role must be one of {sorted(ROLES)}")
        turns.append(ChatTurn(ROLES[role], _text(content, i)))
    return tuple(turns)


def _text(content: Any, index: int) -> str:
    """A message's text: a string, or OpenAI's list of parts of which the text parts are joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(part.get("text", "")) for part in content)
    raise BadRequest(f"messages[{index}].content must be a string or text parts")


def _params(body: dict[str, Any], defaults: GenerationParams) -> GenerationParams:
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens", defaults.max_new_tokens))
    temperature = _number(body, "temperature", defaults.temperature if defaults.do_sample else 0.0, 0.0, 2.0)
    seed = body.get("seed")
    if not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise BadRequest("'max_tokens' must be a positive integer")
    if seed is not None and not isinstance(seed, int):
        raise BadRequest("'seed' must be an integer")
    return GenerationParams(
        max_new_tokens=max_tokens,
        temperature=temperature if temperature > 0 else defaults.temperature,
        top_p=_number(body, "top_p", defaults.top_p, 0.0, 1.0) or defaults.top_p,
        repetition_penalty=_number(body, "repetition_penalty", 1.0, 0.0, 10.0) or 1.0,
        do_sample=temperature > 0,
        seed=seed,
    )


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise BadRequest(f"'{name}' must be a number from {low} to {high}")
    return float(value)


def lora_for_model(model: str, base: str, loras: set[str]) -> str | None:
    """The LoRA version a ``model`` field names (BASE_MODEL for the served base model); None when unknown."""
    if model == base:
        return BASE_MODEL
    return model if model in loras else None


# ----- what goes back


def chunk(call_id: str, model: str, delta: dict[str, str], finish_reason: str | None = None) -> bytes:
    """One server-sent event carrying a ``chat.completion.chunk``."""
    payload = {
        "id": call_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    return sse(payload)


def sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


DONE_EVENT = b"data: [DONE]\n\n"


def completion(call_id: str, model: str, text: str, prompt_tokens: int) -> dict[str, Any]:
    """A whole (non-streamed) ``chat.completion``."""
    return {
        "id": call_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens},
    }


def error_body(message: str, kind: str, status: int) -> dict[str, Any]:
    """OpenAI's error JSON (vLLM adds ``object``/``code``; both shapes are read by ``openai_stream.error_detail``)."""
    return {"object": "error", "error": {"message": message, "type": kind, "code": status}}


def engine_error_status(exc: EngineError) -> tuple[int, str]:
    """The HTTP status and OpenAI error type for an engine error raised before the first token."""
    if isinstance(exc, QueueFull):
        return 429, "rate_limit_error"
    if isinstance(exc, EnginePaused | EngineUnhealthy):
        return 503, "service_unavailable"
    if isinstance(exc, GenerationTimeout):
        return 504, "timeout"
    if isinstance(exc, GenerationCancelled):
        return 499, "cancelled"
    return 400, "invalid_request_error"
