"""An Engine on any OpenAI-compatible chat-completions server: vLLM, SGLang, TGI, Ollama, a hosted API.

One streamed POST to ``{base_url}/chat/completions`` per request (server-sent events). What happens on the way:

- Retries: 429, 408, 5xx, a refused or dropped connection, or a stream that ends before its first text are retried
  with exponential backoff and jitter (``Retry-After`` is honoured: the wait is at least what the server asks),
  at most ``max_retries`` times and never past the request's deadline. Nothing is retried once text has been
  yielded: the reply cannot be resumed. When retries run out, a persistent 429 is ``QueueFull`` (the user is asked
  to come back in a minute), anything else ``GenerationFailed``.
- ``repetition_penalty`` is not in the OpenAI schema. vLLM and SGLang accept it as an extra field; strict servers
  (OpenAI itself, ``transformers serve``) answer 400/422. It is sent only when it is not 1.0; if the server rejects
  a request that carries it, the request is sent again at once without it, and from then on this engine leaves it
  out (one WARNING says so): the server's own default applies.
- Timeouts: ``timeout_s`` bounds each network wait (connect, and the silence between two chunks); the request's
  ``timeout_s`` (or ``generation_timeout_s``) bounds the whole reply, retries included. Either raises
  ``GenerationTimeout``.
- Closing the iterator (or cancelling its task) closes the HTTP response, so the server stops generating.
- LoRA: ``use_lora(name)`` sends ``name`` as the ``model`` field (vLLM serves adapters by name, from
  ``--lora-modules name=path`` or a dynamic load); ``load_lora`` calls vLLM's ``POST /v1/load_lora_adapter`` (the
  path is read by the server, on its file system).
- The API key goes in the ``Authorization`` header only; it is never logged, and neither is any message text.
- Prompt budgeting needs no server: ``tokenizer`` is the model's own tokenizer and chat template
  (``engine.remote_tokenizer``, else ``model.name_or_path``), or a conservative estimate when neither loads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import SecretStr

from bot.domain import ChatTurn, GenerationRequest, StreamEvent
from bot.errors import (
    ConfigError,
    EngineError,
    EnginePaused,
    EngineUnhealthy,
    GenerationFailed,
    GenerationTimeout,
    ModelLoadError,
    QueueFull,
)
from bot.masking import mask_url
from bot.ports import ChatTokenizer
from inference.openai_stream import (
    DONE,
    ChunkDelta,
    chat_body,
    error_detail,
    fairness_headers,
    has_extras,
    parse_chunk,
    parse_completion,
    retry_after_s,
    sse_data,
    without_extras,
)
from inference.request_queue import WaitingCaps

if TYPE_CHECKING:
    from bot.settings import Settings

_log = logging.getLogger(__name__)

DEFAULT_CONTEXT_LENGTH = 8192  # Llama-3's, used only when neither the settings nor the tokenizer say
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_MAX_ERROR_BODY = 64 * 1024


class _Retryable(Exception):
    """An attempt failed before any text in a way worth retrying; ``final`` is raised when retries run out."""

    def __init__(self, reason: str, final: EngineError, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.final = final
        self.retry_after = retry_after


class _ExtrasRejected(Exception):
    """The server answered 400/422 to a body that carried fields outside the OpenAI schema."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class RemoteEngine:
    """bot.ports.Engine over HTTP. Build it with ``from_settings``; use it from one event loop."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        tokenizer: ChatTokenizer,
        api_key: SecretStr | None = None,
        timeout_s: float = 60.0,
        generation_timeout_s: float | None = 300.0,
        max_retries: int = 3,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 8.0,
        retry_after_max_s: float = 60.0,
        drain_timeout_s: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        per_user: int | None = None,
        per_channel: int | None = None,
    ) -> None:
        """``per_user`` / ``per_channel``: at most this many requests of one user / one channel at the server at
        once (waiting there or streaming); more are refused with the reason, so nobody fills the server's queue."""
        self._base_url = base_url.rstrip("/")
        self._shown_url = mask_url(self._base_url)  # in errors and logs: without a password it may hold
        self._base_model = model
        self._tokenizer = tokenizer
        self._generation_timeout_s = generation_timeout_s
        self._max_retries = max_retries
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._retry_after_max_s = retry_after_max_s
        self._drain_timeout_s = drain_timeout_s
        self._sleep = sleep
        headers = {"Accept": "text/event-stream, application/json"}
        if api_key is not None and api_key.get_secret_value():
            headers["Authorization"] = f"Bearer {api_key.get_secret_value()}"
        self._client = httpx.AsyncClient(
            base_url=self._base_url + "/",
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
        )
        self._lora: str | None = None
        self._loaded_loras: set[str] = set()
        self._send_extras = True
        self._paused = False
        self._closed = False
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._caps = WaitingCaps(per_user=per_user, per_channel=per_channel)

    @classmethod
    def from_settings(cls, settings: Settings) -> RemoteEngine:
        """The engine the settings describe: ``engine.remote_*``, the model's name and the API key."""
        engine = settings.engine
        if not engine.remote_base_url:
            raise ConfigError(
                "engine.remote_base_url is empty: set HANBOT_ENGINE__REMOTE_BASE_URL (e.g. http://127.0.0.1:8000/v1)"
            )
        tokenizer_source = engine.remote_tokenizer or settings.model.name_or_path
        tokenizer = load_chat_tokenizer(
            tokenizer_source,
            context_length=settings.model.context_length,
            revision=None if engine.remote_tokenizer else settings.model.revision,
        )
        model = engine.remote_model or settings.model.name_or_path
        _log.info(
            "remote engine: %s, model %s, API key %s",
            mask_url(engine.remote_base_url),
            model,
            "set" if settings.remote_api_key else "not set",
        )
        return cls(
            base_url=engine.remote_base_url,
            model=model,
            tokenizer=tokenizer,
            api_key=settings.remote_api_key,
            timeout_s=engine.remote_timeout_s,
            generation_timeout_s=settings.generation.timeout_s,
            max_retries=engine.remote_max_retries,
            per_user=engine.queue_limit_per_user,
            per_channel=engine.queue_limit_per_channel,
        )

    def __repr__(self) -> str:
        return f"RemoteEngine(base_url={self._shown_url!r}, model={self.model!r})"

    @property
    def tokenizer(self) -> ChatTokenizer:
        return self._tokenizer

    @property
    def model(self) -> str:
        """The ``model`` field sent now: the LoRA in use, else the base model."""
        return self._lora or self._base_model

    def _model_for(self, request: GenerationRequest) -> str:
        """The ``model`` field of one request: the LoRA it names (vLLM serves adapters by name), the base model for
        ``BASE_MODEL``, else the engine's default."""
        if request.lora is None:
            return self.model
        return request.lora or self._base_model

    # ----- generation -----

    async def generate(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        if self._closed:
            raise GenerationFailed("the remote engine is closed")
        if self._paused:
            raise EnginePaused("the remote engine is paused")
        self._caps.check(request.user, request.channel)
        self._caps.add(request.user, request.channel)
        self._active += 1
        self._idle.clear()
        try:
            async with aclosing(self._generate(request)) as chunks:
                async for text in chunks:
                    yield text
        finally:
            self._caps.discard(request.user, request.channel)
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    async def _generate(self, request: GenerationRequest) -> AsyncGenerator[str, None]:
        loop = asyncio.get_running_loop()
        timeout_s = request.timeout_s or self._generation_timeout_s
        deadline = loop.time() + timeout_s if timeout_s else None
        body = chat_body(request, self._model_for(request), send_extras=self._send_extras)
        keys = fairness_headers(request)
        attempt = 0
        yielded = 0
        fallback = False  # True once the extra fields were dropped after a rejection
        while True:
            try:
                attempt_chunks = self._attempt(request.request_id, body, keys, deadline, fallback)
                async with aclosing(attempt_chunks) as chunks:
                    async for text in chunks:
                        yielded += 1
                        yield text
                return
            except _ExtrasRejected as exc:  # raised only while the body still carries them: at most once
                _log.info(
                    "request %s: HTTP %d to a body with extra fields: sending it again without them",
                    request.request_id,
                    exc.status,
                )
                body = without_extras(body)
                fallback = True
            except _Retryable as exc:
                if yielded:
                    raise GenerationFailed(
                        f"the reply from the remote server broke off: {exc.reason}"
                    ) from None
                delay = self._retry_delay(attempt, exc, deadline)
                _log.warning(
                    "request %s: %s (attempt %d of %d): retrying in %.2f s",
                    request.request_id,
                    exc.reason,
                    attempt + 1,
                    self._max_retries + 1,
                    delay,
                )
                attempt += 1
                await self._sleep(delay)

    def _retry_delay(self, attempt: int, exc: _Retryable, deadline: float | None) -> float:
        """Exponential backoff with jitter, at least the server's Retry-After; raises ``exc.final`` when done."""
        if attempt >= self._max_retries:
            _log.warning("remote request gave up after %d attempts: %s", attempt + 1, exc.reason)
            raise exc.final from None
        cap = min(self._backoff_max_s, self._backoff_base_s * 2**attempt)
        delay = cap / 2 + random.uniform(0, cap / 2)
        if exc.retry_after is not None:
            if exc.retry_after > self._retry_after_max_s:
                _log.warning("server asks to retry after %.0f s: giving up now", exc.retry_after)
                raise exc.final from None
            delay = max(delay, exc.retry_after)
        if deadline is not None and asyncio.get_running_loop().time() + delay >= deadline:
            _log.warning("no time left for another attempt before the deadline: %s", exc.reason)
            raise exc.final from None
        return delay

    async def _attempt(
        self,
        request_id: str,
        body: dict[str, Any],
        headers: dict[str, str],
        deadline: float | None,
        fallback: bool,
    ) -> AsyncGenerator[str, None]:
        """One POST: yields the text deltas; raises _Retryable / _ExtrasRejected / an EngineError."""
        response = await self._open(body, headers, deadline)
        try:
            if response.status_code != 200:
                await self._raise_for_status(response, body, deadline)
            if fallback and self._send_extras:
                self._send_extras = False
                _log.warning(
                    "the remote server rejects fields outside the OpenAI schema (repetition_penalty): "
                    "requests go without them from now on, so the server's default repetition penalty applies"
                )
            chars = count = 0
            finish: str | None = None
            async with aclosing(self._deltas(response, deadline)) as deltas:
                async for chunk in deltas:
                    if chunk.error is not None:
                        _log.warning(
                            "request %s: error event from the remote server: %s", request_id, chunk.error
                        )
                        raise GenerationFailed(f"the remote server failed the request: {chunk.error}")
                    if chunk.text:
                        chars += len(chunk.text)
                        count += 1
                        yield chunk.text
                    finish = chunk.finish_reason or finish
            if finish is None:
                raise _Retryable(
                    "the stream ended without a finish reason",
                    GenerationFailed("the remote stream ended early"),
                )
            _log.info(
                "request %s: remote reply done (%d chunks, %d chars, finish %s)",
                request_id,
                count,
                chars,
                finish,
            )
        finally:
            await response.aclose()

    async def _open(
        self, body: dict[str, Any], headers: dict[str, str], deadline: float | None
    ) -> httpx.Response:
        """Send the POST and return the response with its body still unread (a stream)."""
        http_request = self._client.build_request("POST", "chat/completions", json=body, headers=headers)
        try:
            async with asyncio.timeout_at(deadline):
                return await self._client.send(http_request, stream=True)
        except TimeoutError:
            raise GenerationTimeout("the remote server did not answer before the deadline") from None
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None

    async def _deltas(
        self, response: httpx.Response, deadline: float | None
    ) -> AsyncGenerator[ChunkDelta, None]:
        """The chunks of an SSE stream until [DONE] or its end; a server that ignored ``stream`` gives one."""
        try:
            if response.headers.get("content-type", "").startswith("application/json"):
                async with asyncio.timeout_at(deadline):
                    raw = await response.aread()
                yield parse_completion(raw)
                return
            events = sse_data(response.aiter_lines())
            async with aclosing(events):
                while True:
                    try:
                        async with asyncio.timeout_at(deadline):
                            data = await anext(events)
                    except StopAsyncIteration:
                        return
                    if data.strip() == DONE:
                        yield ChunkDelta(finish_reason="done")
                        return
                    yield parse_chunk(data)
        except TimeoutError:
            raise GenerationTimeout("the reply took longer than the request's timeout") from None
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None

    def _transport_error(self, exc: httpx.HTTPError) -> EngineError | _Retryable:
        name = type(exc).__name__
        if isinstance(exc, httpx.ReadTimeout | httpx.WriteTimeout):
            return GenerationTimeout(f"the remote server went silent ({name})")
        if isinstance(exc, httpx.TransportError):
            return _Retryable(
                f"connection problem ({name})",
                GenerationFailed(f"cannot reach the remote server at {self._shown_url} ({name})"),
            )
        return GenerationFailed(f"HTTP error talking to the remote server ({name})")

    async def _raise_for_status(
        self, response: httpx.Response, body: dict[str, Any], deadline: float | None
    ) -> None:
        status = response.status_code
        try:
            async with asyncio.timeout_at(deadline):
                raw = await response.aread()
            detail = error_detail(json.loads(raw[:_MAX_ERROR_BODY]))
        except Exception:  # an unreadable or non-JSON error body: the status says enough
            detail = ""
        suffix = f": {detail}" if detail else ""
        if status in (400, 422) and has_extras(body):
            raise _ExtrasRejected(status)
        if status in _RETRY_STATUSES:
            final: EngineError
            if status == 429:
                final = QueueFull("the remote server keeps answering 429 Too Many Requests")
            else:
                final = GenerationFailed(f"the remote server answered HTTP {status}{suffix}")
            raise _Retryable(f"HTTP {status}", final, retry_after_s(response.headers.get("retry-after")))
        if status in (401, 403):
            _log.error(
                "the remote server refused the API key (HTTP %d): check HANBOT_REMOTE_API_KEY or OPENAI_API_KEY",
                status,
            )
            raise GenerationFailed(f"the remote server refused the API key (HTTP {status})")
        if status == 404:
            raise GenerationFailed(
                f"the remote server answered 404{suffix}: check engine.remote_base_url (usually ending in /v1) "
                f"and the model name {self.model!r}"
            )
        raise GenerationFailed(f"the remote server rejected the request (HTTP {status}){suffix}")

    # ----- health, maintenance, LoRA -----

    async def health(self) -> None:
        """GET /models: the server answers and serves the model in use; raises EngineUnhealthy otherwise."""
        if self._closed:
            raise EngineUnhealthy("the remote engine is closed")
        try:
            served = await self._served_models()
        except EngineError as exc:
            raise EngineUnhealthy(str(exc)) from None
        if served and not _is_served(self.model, served):
            raise EngineUnhealthy(
                f"the remote server at {self._shown_url} does not serve {self.model!r} "
                f"(it serves {len(served)} other model(s)): check engine.remote_model"
            )

    async def _served_models(self) -> list[str]:
        """Model ids from GET /models; raises GenerationFailed when the server does not answer with a list."""
        try:
            response = await self._client.get("models")
        except httpx.HTTPError as exc:
            raise GenerationFailed(
                f"cannot reach the remote server at {self._shown_url} ({type(exc).__name__})"
            ) from None
        if response.status_code != 200:
            raise GenerationFailed(f"GET {self._shown_url}/models answered HTTP {response.status_code}")
        try:
            data = response.json().get("data", [])
            return [str(item["id"]) for item in data if isinstance(item, dict) and "id" in item]
        except (ValueError, AttributeError, TypeError):
            raise GenerationFailed(f"GET {self._shown_url}/models did not answer a model list") from None

    async def pause(self) -> None:
        """Refuse new requests (EnginePaused) and wait for running ones to finish (at most ``drain_timeout_s``).

        The remote server's accelerators are not this process's to free: a fine-tune beside a remote engine needs
        its own GPUs (finetune.gpu_sharing = "separate").
        """
        self._paused = True
        _log.info("remote engine paused: refusing new requests, %d running", self._active)
        try:
            async with asyncio.timeout(self._drain_timeout_s):
                await self._idle.wait()
        except TimeoutError:
            _log.warning("remote engine paused with %d request(s) still streaming", self._active)

    async def resume(self) -> None:
        self._paused = False
        _log.info("remote engine resumed")

    async def load_lora(self, name: str, path: str) -> None:
        """Ask the server to load the adapter at ``path`` (on the server's file system) as ``name``.

        vLLM: ``POST /v1/load_lora_adapter`` (needs ``--enable-lora`` and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True).
        An adapter already loaded under ``name`` is unloaded first, so a new version replaces the old one.
        """
        payload = {"lora_name": name, "lora_path": path}
        status, detail = await self._post_admin("load_lora_adapter", payload)
        if status == 400 and "already" in detail.lower():
            await self._post_admin("unload_lora_adapter", {"lora_name": name})
            status, detail = await self._post_admin("load_lora_adapter", payload)
        if status in (404, 405, 501):
            raise ModelLoadError(
                f"the remote server at {self._shown_url} cannot load LoRA adapters at run time "
                f"(POST /load_lora_adapter answered {status}). With vLLM, start it with --enable-lora and "
                f"VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, or serve the adapter from the start with "
                f"--lora-modules {name}=<path> and switch to it with use_lora({name!r})"
            )
        if status >= 300:
            suffix = f": {detail}" if detail else ""
            raise ModelLoadError(f"the remote server could not load LoRA {name!r} (HTTP {status}){suffix}")
        self._loaded_loras.add(name)
        _log.info("remote server loaded LoRA %s", name)

    async def _post_admin(self, endpoint: str, payload: dict[str, str]) -> tuple[int, str]:
        try:
            response = await self._client.post(endpoint, json=payload)
        except httpx.HTTPError as exc:
            raise ModelLoadError(
                f"cannot reach the remote server at {self._shown_url} ({type(exc).__name__})"
            ) from None
        try:
            detail = error_detail(response.json()) if response.status_code >= 300 else ""
        except ValueError:
            detail = (
                response.text[:200] if response.headers.get("content-type", "").startswith("text/") else ""
            )
        return response.status_code, detail

    async def use_lora(self, name: str | None) -> None:
        """Send ``name`` as the model from now on (None: the base model). The server must serve it by that name."""
        if name is not None and name not in self._loaded_loras:
            try:
                served = await self._served_models()
            except EngineError as exc:
                raise ModelLoadError(f"cannot check the LoRA {name!r} on the remote server: {exc}") from None
            if not _is_served(name, served):
                raise ModelLoadError(
                    f"the remote server at {self._shown_url} does not serve a LoRA named {name!r}: load it with "
                    f"load_lora, or start vLLM with --lora-modules {name}=<path>"
                )
        self._lora = name
        _log.info("remote engine now sends model %s", self.model)

    @property
    def active_lora(self) -> str | None:
        return self._lora

    async def aclose(self) -> None:
        self._closed = True
        await self._client.aclose()


def _is_served(model: str, served: Sequence[str]) -> bool:
    """Whether ``model`` is in the server's list (Ollama lists ``name:latest`` for ``name``)."""
    return model in served or f"{model}:latest" in served


# ----- counting prompt tokens without the model -----


class EstimatingTokenizer:
    """A ChatTokenizer that over-counts when no tokenizer can be loaded: one token per 2 UTF-8 bytes.

    Llama-3's 128k-entry vocabulary packs more than 2 bytes into a token on ordinary English and Korean text (a
    Hangul syllable is 3 bytes), so this errs towards trimming history early rather than overflowing the server's
    context.
    Per turn it adds 5 (the Llama-3 header and end-of-turn tokens), plus 1 for the start and 4 for the assistant
    header.
    """

    def __init__(self, context_length: int) -> None:
        self._context_length = context_length

    @property
    def context_length(self) -> int:
        return self._context_length

    def count_tokens(self, turns: Sequence[ChatTurn], *, add_generation_prompt: bool = True) -> int:
        text_tokens = sum(-(-len(turn.content.encode("utf-8")) // 2) for turn in turns)
        return 1 + text_tokens + 5 * len(turns) + (4 if add_generation_prompt else 0)


def load_chat_tokenizer(
    source: str, *, context_length: int | None = None, revision: str | None = None
) -> ChatTokenizer:
    """The tokenizer and chat template of ``source`` (a local folder or a hub id), or a conservative estimate.

    The context length is ``context_length`` when given, else the model config's, else the tokenizer's, else 8192.
    """
    is_path = Path(source).expanduser().exists()
    try:
        from transformers import AutoTokenizer

        from inference.tokenizer import HFChatTokenizer

        hf_tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, local_files_only=is_path)
        length = _context_length(source, revision, is_path, context_length, hf_tokenizer)
        tokenizer: ChatTokenizer = HFChatTokenizer(hf_tokenizer, length)  # ValueError without a chat template
    except Exception as exc:  # any failure to load means estimating, never a crash at start
        length = _context_length(source, revision, is_path, context_length, None)
        _log.warning(
            "no tokenizer with a chat template from %s (%s): prompt tokens are estimated conservatively "
            "(context length %d); set engine.remote_tokenizer to a local tokenizer folder for exact counts",
            source,
            type(exc).__name__,
            length,
        )
        return EstimatingTokenizer(length)
    _log.info("prompt tokens counted with the tokenizer of %s (context length %d)", source, length)
    return tokenizer


def _context_length(
    source: str, revision: str | None, is_path: bool, configured: int | None, tokenizer: Any
) -> int:
    """The settings' value, else the model config's max_position_embeddings, else the tokenizer's, else 8192."""
    if configured:
        return configured
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(source, revision=revision, local_files_only=is_path)
        value = getattr(config.get_text_config(), "max_position_embeddings", None)
        if isinstance(value, int) and value > 0:
            return value
    except Exception:  # no config beside the tokenizer (a tokenizer-only folder): try the tokenizer
        pass
    max_length = getattr(tokenizer, "model_max_length", None)
    if isinstance(max_length, int) and 0 < max_length < 10_000_000:
        return max_length
    return DEFAULT_CONTEXT_LENGTH
