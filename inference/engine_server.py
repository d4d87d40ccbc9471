"""An Engine behind an OpenAI-compatible HTTP API, so several bot processes share one GPU engine.

    GET  /health                     200 {"status": "ok", ...} or 503 with the reason
    GET  /v1/models                  the base model and the LoRA versions loaded, by name
    POST /v1/chat/completions        streamed (server-sent events, ending in [DONE]) or one JSON completion
    POST /v1/load_lora_adapter       {"lora_name", "lora_path"}: vLLM's runtime LoRA loading
    POST /v1/unload_lora_adapter     {"lora_name"}

A request's ``model`` picks the version: the served model's name is the base model, a loaded LoRA's name that LoRA
(vLLM's convention, which ``RemoteEngine`` speaks). Errors are OpenAI error bodies: 400 for a request the server
cannot serve, 404 for an unknown model, 429 when the queue is full, 503 while unhealthy. A client that disconnects
cancels its request: the handler is cancelled, which closes the engine's stream, which frees the decoder slot.
The fairness keys come from the ``X-Hanbot-Channel`` and ``X-Hanbot-User`` headers the bot sends (ids only).
Nothing here logs a message's text.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import replace
from typing import Any, Protocol, cast

from aiohttp import web

from bot.domain import GenerationParams, StreamEvent
from bot.errors import EngineError, ModelLoadError
from bot.ports import Engine
from inference.server_wire import (
    DONE_EVENT,
    BadRequest,
    ChatCall,
    chunk,
    completion,
    engine_error_status,
    error_body,
    lora_for_model,
    parse_chat,
    sse,
)
from inference.worker import WorkerStats

_log = logging.getLogger(__name__)
MAX_BODY_BYTES = 8 * 1024 * 1024


class ServedEngine(Engine, Protocol):
    """An engine the server can report the load of (``LocalEngine``)."""

    def counts(self) -> tuple[int, int]:
        """(requests waiting, requests running)."""
        ...

    @property
    def stats(self) -> WorkerStats: ...


class EngineServer:
    """The HTTP front of one engine. ``start`` binds; ``stop`` closes the listener (not the engine)."""

    def __init__(
        self,
        engine: ServedEngine,
        *,
        model_name: str,
        defaults: GenerationParams | None = None,
        host: str = "127.0.0.1",
        port: int = 8000,
        api_key: str | None = None,
    ) -> None:
        self.engine = engine
        self.model_name = model_name
        self._defaults = defaults or GenerationParams()
        self._host = host
        self.port = port
        self._api_key = api_key or None
        self.loras: dict[str, str] = {}  # name -> path, as loaded through the API
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._errors, self._auth])
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/load_lora_adapter", self._load_lora)
        app.router.add_post("/v1/unload_lora_adapter", self._unload_lora)
        return app

    async def start(self) -> EngineServer:
        # handler_cancellation: a client that goes away cancels its handler at once, even while it waits in the queue
        self._runner = web.AppRunner(self.app(), access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        _log.info(
            "engine server listening on http://%s:%d/v1 (model %s)", self._host, self.port, self.model_name
        )
        return self

    @property
    def base_url(self) -> str:
        """What a client sets as its base URL (``engine.remote_base_url``)."""
        return f"http://{self._host}:{self.port}/v1"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ----- middlewares

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Every failure as OpenAI error JSON, never aiohttp's HTML page."""
        try:
            return await handler(request)  # type: ignore[no-any-return]
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _error(exc.reason, "invalid_request_error", exc.status)
        except BadRequest as exc:
            return _error(str(exc), "invalid_request_error", 400)
        except Exception as exc:  # a bug: OpenAI error JSON all the same, and the traceback in the log
            _log.exception("%s %s failed", request.method, request.path)
            return _error(f"the server failed ({type(exc).__name__})", "internal_error", 500)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self._api_key and request.path.startswith("/v1/"):
            if request.headers.get("Authorization", "") != f"Bearer {self._api_key}":
                return _error("invalid API key", "authentication_error", 401)
        return await handler(request)  # type: ignore[no-any-return]

    # ----- routes

    async def _health(self, request: web.Request) -> web.Response:
        try:
            await self.engine.health()
        except EngineError as exc:
            return _error(str(exc), "service_unavailable", 503)
        body: dict[str, Any] = {"status": "ok", "model": self.model_name, "loras": sorted(self.loras)}
        body["waiting"], body["running"] = self.engine.counts()
        body["cancelled"] = self.engine.stats.cancelled
        return web.json_response(body)

    async def _models(self, request: web.Request) -> web.Response:
        names = [self.model_name, *sorted(self.loras)]
        data = [
            {"id": name, "object": "model", "owned_by": "hanbot", "root": self.model_name} for name in names
        ]
        return web.json_response({"object": "list", "data": data})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        call = parse_chat(
            await _json(request),
            defaults=self._defaults,
            lora=None,
            channel=request.headers.get("X-Hanbot-Channel", ""),
            user=request.headers.get("X-Hanbot-User", ""),
        )
        lora = lora_for_model(call.model, self.model_name, set(self.loras))
        if lora is None:
            return _error(f"the model {call.model!r} does not exist", "NotFoundError", 404)
        call = ChatCall(call.model, call.stream, replace(call.request, lora=lora))
        if call.stream:
            return await self._stream(request, call)
        return await self._complete(call)

    async def _stream(self, request: web.Request, call: ChatCall) -> web.StreamResponse:
        """Server-sent events. An error before the first text is an HTTP error; after it, an error event."""
        call_id = call.request.request_id
        response: web.StreamResponse | None = None
        async with aclosing(_stream_of(self.engine, call)) as events:
            try:
                async for event in events:
                    if not isinstance(event, str) or not event:
                        continue  # a queue position: nothing to send
                    if response is None:
                        response = await _open_stream(request)
                        await response.write(chunk(call_id, call.model, {"role": "assistant"}))
                    await response.write(chunk(call_id, call.model, {"content": event}))
            except EngineError as exc:
                _log.info("request %s failed: %s", call_id, type(exc).__name__)
                status, kind = engine_error_status(exc)
                if response is None:
                    return _error(str(exc), kind, status)
                await response.write(sse(error_body(str(exc), kind, status)))
                return response
            except Exception as exc:  # a bug in the engine: one request fails, the server goes on
                _log.exception("request %s: the engine failed", call_id)
                message = f"the engine failed ({type(exc).__name__})"
                if response is None:
                    return _error(message, "internal_error", 500)
                await response.write(sse(error_body(message, "internal_error", 500)))
                return response
        if response is None:  # an empty reply
            response = await _open_stream(request)
            await response.write(chunk(call_id, call.model, {"role": "assistant"}))
        await response.write(chunk(call_id, call.model, {}, finish_reason="stop"))
        await response.write(DONE_EVENT)
        await response.write_eof()
        _log.info("request %s streamed", call_id)
        return response

    async def _complete(self, call: ChatCall) -> web.Response:
        parts: list[str] = []
        try:
            async with aclosing(_stream_of(self.engine, call)) as events:
                async for event in events:
                    if isinstance(event, str):
                        parts.append(event)
        except EngineError as exc:
            status, kind = engine_error_status(exc)
            return _error(str(exc), kind, status)
        prompt_tokens = self.engine.tokenizer.count_tokens(call.request.turns)
        return web.json_response(
            completion(call.request.request_id, call.model, "".join(parts), prompt_tokens)
        )

    async def _load_lora(self, request: web.Request) -> web.Response:
        body = await _json(request)
        name, path = _field(body, "lora_name"), _field(body, "lora_path")
        if name == self.model_name:
            raise BadRequest("'lora_name' must differ from the served model's name")
        if name in self.loras:
            return _error(f"The lora adapter '{name}' has already been loaded.", "invalid_request_error", 400)
        try:
            await self.engine.load_lora(name, path)
        except (ModelLoadError, EngineError, OSError, ValueError) as exc:
            _log.warning("LoRA %s could not be loaded: %s", name, type(exc).__name__)
            return _error(f"could not load LoRA {name!r}: {exc}", "invalid_request_error", 400)
        self.loras[name] = path
        _log.info("LoRA %s loaded", name)
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def _unload_lora(self, request: web.Request) -> web.Response:
        name = _field(await _json(request), "lora_name")
        if self.loras.pop(name, None) is None:
            return _error(f"The lora adapter '{name}' cannot be found.", "NotFoundError", 404)
        _log.info("LoRA %s unloaded", name)
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")


def _stream_of(engine: Engine, call: ChatCall) -> AsyncGenerator[StreamEvent, None]:
    """The engine's stream, closable: both engines' ``generate`` are async generators (closing one cancels it)."""
    return cast(AsyncGenerator[StreamEvent, None], engine.generate(call.request))


async def _json(request: web.Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("the body is not JSON") from None


def _field(body: Any, name: str) -> str:
    value = body.get(name) if isinstance(body, dict) else None
    if not isinstance(value, str) or not value:
        raise BadRequest(f"'{name}' must be a non-empty string")
    return value


async def _open_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    return response


def _error(message: str, kind: str, status: int) -> web.Response:
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    return web.json_response(error_body(message, kind, status), status=status, headers=headers)


async def serve_forever(server: EngineServer, stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set, then close the listener and the engine."""
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.stop()
        await server.engine.aclose()
