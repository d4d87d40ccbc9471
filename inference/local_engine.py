"""LocalEngine: bot.ports.Engine over a transformers model in this process.

``generate`` encodes the turns with the model's chat template, queues the request with the model worker (fair
across channels, bounded) and streams its events: QueuePosition while it waits, then text pieces. Closing the stream
cancels the request; the worker frees its slot before the next decode step. Timeouts cover the whole request.

Build it with ``LocalEngine.from_settings(settings)`` (loads the model; ModelLoadError on failure) or from a model
and tokenizer already loaded: ``LocalEngine(model, tokenizer, engine=..., generation=...)``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from bot.domain import GenerationRequest, StreamEvent
from bot.errors import (
    ConfigError,
    EngineError,
    EnginePaused,
    EngineUnhealthy,
    GenerationFailed,
    GenerationTimeout,
)
from bot.settings import EngineSettings, GenerationSettings, ModelSettings, Settings
from inference.decoder import BatchDecoder
from inference.decoders import make_decoder
from inference.hf_decoder import HFBatchDecoder
from inference.loading import LoadedModel, load_model
from inference.lora import LoraSwitch, PoolLoras
from inference.tokenizer import HFChatTokenizer, stop_token_ids
from inference.worker import End, Job, JobEvent, ModelWorker, WorkerStats

_log = logging.getLogger(__name__)

R = TypeVar("R")
DecoderFactory = Callable[[PreTrainedModel, EngineSettings], BatchDecoder]
SMALL_MODEL_PARAMETERS = 50_000_000
STUCK_AFTER_S = 300.0  # a worker with work that has not finished a turn for this long is unhealthy
ADAPTER_RETRY_S = 0.05  # a request whose version waits for a pool slot checks again this often


class LocalEngine:
    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        engine: EngineSettings | None = None,
        generation: GenerationSettings | None = None,
        context_length: int | None = None,
        decoder_factory: DecoderFactory = make_decoder,
        reload: Callable[[], LoadedModel] | None = None,
    ) -> None:
        """``reload`` (given by from_settings) lets pause() free the GPU by dropping the model and resume() load
        it again; without it, pause() moves the weights to the CPU and back."""
        self._model = model
        self._engine_settings = engine or EngineSettings()
        self._generation = generation or GenerationSettings()
        self._decoder_factory = decoder_factory
        self._reload = reload
        self._tokenizer = HFChatTokenizer.for_model(tokenizer, model.config, context_length)
        self._stop_ids = stop_token_ids(tokenizer, getattr(model, "generation_config", None), model.config)
        self._lora = LoraSwitch(model)  # the hf decoder: one version at a time, in the model
        self._pool = PoolLoras()  # the fast decoder: versions in its adapter pool, one per request
        self._paused = False
        self._closed = False
        self._offloaded_to: str | None = None  # "cpu" or "dropped" while paused
        self.loads = 1  # model loads, so tests can prove that a LoRA switch did not reload the base
        self._submit_lock = asyncio.Lock()
        self._worker = ModelWorker(
            decoder_factory(model, self._engine_settings),
            self._stop_ids,
            queue_limit=self._engine_settings.queue_limit,
            queue_limit_per_user=self._engine_settings.queue_limit_per_user,
            queue_limit_per_channel=self._engine_settings.queue_limit_per_channel,
            torch_threads=_worker_threads(model),
            interleave_prefill=self._engine_settings.interleave_prefill,
        )
        self._worker.resolve_lora = self._resolve_lora
        # whether the decoder serves LoRA versions from its own pool (kept while paused, when there is no decoder)
        self._pool_mode = _serves_adapters(self._worker.decoder)
        _log.info(
            "local engine ready: %s, batch %d, queue %d, stop ids %s",
            type(self._worker.decoder).__name__,
            self._engine_settings.max_batch_size,
            self._engine_settings.queue_limit,
            sorted(self._stop_ids),
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, *, decoder_factory: DecoderFactory = make_decoder
    ) -> LocalEngine:
        """Load the model the settings name and build the engine around it (raises ModelLoadError).

        One process, one device map: a model split over GPUs with ``engine.tensor_parallel`` is served by the engine
        server (``python -m inference serve`` under torchrun, ``inference.serve``), never in the bot's process."""
        if settings.engine.tensor_parallel > 1:
            raise ConfigError(
                f"engine.tensor_parallel is {settings.engine.tensor_parallel}: a model split over GPUs is served by "
                f"the engine server (torchrun --nproc-per-node {settings.engine.tensor_parallel} -m inference serve); "
                "point the bot at it with HANBOT_ENGINE__KIND=remote and HANBOT_ENGINE__REMOTE_BASE_URL"
            )
        loaded = load_model(settings.model)
        return cls(
            loaded.model,
            loaded.tokenizer,
            engine=settings.engine,
            generation=settings.generation,
            context_length=settings.model.context_length,
            decoder_factory=decoder_factory,
            reload=_reloader(settings.model),
        )

    # ---------------------------------------------------------------- what the rest of the bot uses

    @property
    def tokenizer(self) -> HFChatTokenizer:
        return self._tokenizer

    @property
    def model(self) -> PreTrainedModel:
        return self._model

    @property
    def stats(self) -> WorkerStats:
        return self._worker.stats

    @property
    def decoder(self) -> BatchDecoder | None:
        return self._worker.decoder

    def counts(self) -> tuple[int, int]:
        """(requests waiting, requests running)."""
        return self._worker.counts()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        self._check_accepting()
        deadline = time.monotonic() + (request.timeout_s or self._generation.timeout_s)
        adapter = self._pool.name_for(request.lora) if self._pool_mode else None
        if adapter is not None:
            self._pool.pin(adapter)  # not unloaded to make room while this request waits or runs
        try:
            if adapter is not None:
                await self._wait_for_adapter(adapter, deadline, request)
            async with self._submit_lock:  # FIFO: requests enter the queue in the order generate was called
                job, events = await self._make_job(request)
                self._worker.submit(job)  # QueueFull past the limit
            try:
                while True:
                    event = await _next_event(events, deadline, request)
                    if isinstance(event, End):
                        if event.error is not None:
                            raise event.error
                        return
                    yield event
            finally:
                self._worker.cancel(job)
        finally:
            if adapter is not None:
                self._pool.unpin(adapter)

    async def _wait_for_adapter(self, name: str, deadline: float, request: GenerationRequest) -> None:
        """A version unloaded to make room (more versions than ``engine.lora_slots``) is loaded again between two
        decode steps; the running replies go on. When every slot is held by running requests, this one waits for the
        first of them to end (a slot), not for the pool to empty."""
        waited = False
        while self._pool.needs_load(name):
            if await self._on_worker(lambda: self._pool.ensure(self._worker.decoder, name)):
                break
            if time.monotonic() >= deadline:
                raise GenerationTimeout(f"request {request.request_id} timed out waiting for LoRA {name}")
            waited = True
            await asyncio.sleep(ADAPTER_RETRY_S)
        if waited:
            _log.info(
                "request %s: LoRA %s loaded after waiting for a free pool slot", request.request_id, name
            )

    async def health(self) -> None:
        if self._closed:
            raise EngineUnhealthy("the engine is closed")
        if not self._worker.alive:
            raise EngineUnhealthy("the model worker thread has stopped")
        waiting, running = self._worker.counts()
        if (waiting or running) and time.monotonic() - self._worker.heartbeat > STUCK_AFTER_S:
            raise EngineUnhealthy(f"the model worker has not finished a step for {STUCK_AFTER_S:.0f} s")

    async def pause(self) -> None:
        """Refuse new work, fail the waiting requests with EnginePaused, let running ones finish, free the GPU."""
        if self._paused:
            return
        self._paused = True
        refused = self._worker.fail_waiting(EnginePaused("paused for maintenance"))
        await self._drain()
        await self._on_worker(self._offload)
        _log.info(
            "engine paused (%d waiting requests refused, weights %s)", refused, self._offloaded_to or "kept"
        )

    async def resume(self) -> None:
        if not self._paused:
            return
        await self._on_worker(self._restore)
        self._paused = False
        _log.info("engine resumed")

    async def load_lora(self, name: str, path: str) -> None:
        """Load (or replace) a LoRA between two decode steps; the base weights stay where they are.

        With the fast decoder's adapter pool the version is copied into the pool and requests can name it at once
        (``GenerationRequest.lora``); which version serves by default does not change."""

        def load() -> None:
            if self._pool_mode:
                self._pool.load(self._worker.decoder, name, path)
            else:
                self._switch_lora(lambda: self._lora.load(name, path))

        await self._on_worker(load)

    async def use_lora(self, name: str | None) -> None:
        """Serve with LoRA ``name`` (None: the base model) by default from the next request (the hf decoder: the
        next decode step) on."""

        def use() -> None:
            if self._pool_mode:
                self._pool.use(name)
            else:
                self._switch_lora(lambda: self._lora.use(name))

        await self._on_worker(use)

    @property
    def active_lora(self) -> str | None:
        return self._pool.active if self._pool_mode else self._lora.active

    def _resolve_lora(self, requested: str | None) -> str | None:
        """The decoder's adapter id for a request (worker thread, at admission)."""
        if self._pool_mode:
            return self._pool.resolve(requested)
        return self._lora.resolve(
            requested
        )  # the adapter's name inside the model: the hf decoder's mixed batches

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._worker.stop, 30.0)
        decoder = self._worker.decoder
        if decoder is not None:  # frees the static decoder's KV cache; stops tensor-parallel followers
            await asyncio.to_thread(decoder.close)
        _log.info("engine closed")

    # ---------------------------------------------------------------- steps of generate

    def _check_accepting(self) -> None:
        if self._closed:
            raise EngineUnhealthy("the engine is closed")
        if self._paused:
            raise EnginePaused("paused for maintenance")

    async def _make_job(self, request: GenerationRequest) -> tuple[Job, asyncio.Queue[JobEvent]]:
        prompt_ids = await asyncio.to_thread(self._tokenizer.encode, request.turns)
        room = self._tokenizer.context_length - len(prompt_ids)
        if room <= 0:
            raise GenerationFailed(
                f"the prompt has {len(prompt_ids)} tokens; the context holds {self._tokenizer.context_length}"
            )
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[JobEvent] = asyncio.Queue()

        def emit(event: JobEvent) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the loop is gone: nobody is listening
                pass

        job = Job(
            request=request,
            prompt_ids=prompt_ids,
            max_new_tokens=min(request.params.max_new_tokens, room),
            emit=emit,
            detokenizer=self._tokenizer.detokenizer(),
        )
        return job, events

    # ---------------------------------------------------------------- LoRA, pause and resume (worker thread)

    def _switch_lora(self, change: Callable[[], None]) -> None:
        """Apply ``change`` to the model, then make sure the decoder serves what the model now computes.

        HFBatchDecoder runs the model's own modules, so it follows at once (its ``weights_changed`` says so). A
        decoder with an adapter pool never comes here (``PoolLoras``). A decoder that keeps its own copy of the
        weights and cannot follow (``weights_changed`` False) is replaced by the hf decoder, so a promoted LoRA is
        never silently left out (the replies running at that moment end early with an error; waiting ones are
        served by the new decoder, which starts after the old one's KV memory is freed)."""
        decoder = self._worker.decoder
        if decoder is not None and not decoder.model_intact:
            raise EngineError(
                "this decoder has no adapter slots and the model's own weights are gone (FP8 or tensor-parallel "
                "build): the base model keeps serving. Set engine.lora_slots above 0 to serve fine-tuned versions."
            )
        change()
        if decoder is None or decoder.weights_changed():
            return
        _log.warning(
            "%s cannot follow a LoRA switch: serving with the hf decoder from now on", type(decoder).__name__
        )
        self._worker.replace_decoder(
            lambda: HFBatchDecoder(self._model, self._engine_settings.max_batch_size),
            GenerationFailed("the model changed under this reply (LoRA switch)"),
        )

    async def _drain(self) -> None:
        while True:
            waiting, running = self._worker.counts()
            if not waiting and not running:
                return
            await asyncio.sleep(0.05)

    def _offload(self) -> None:
        if not _on_accelerator(self._model):
            return
        self._worker.set_decoder(None)
        if self._reload is not None:
            self._model = None  # type: ignore[assignment]
            self._lora.forget_model()
            self._offloaded_to = "dropped"
        else:
            self._model.to("cpu")  # type: ignore[arg-type]
            self._offloaded_to = "cpu"
        gc.collect()
        torch.cuda.empty_cache()

    def _restore(self) -> None:
        if self._offloaded_to is None:
            return
        if self._offloaded_to == "dropped" and self._reload is not None:
            self._model = self._reload().model
            self.loads += 1
            self._lora.attach(self._model)
        else:
            self._model.to("cuda")  # type: ignore[arg-type]
        decoder = self._decoder_factory(self._model, self._engine_settings)
        self._worker.set_decoder(decoder)
        self._pool_mode = _serves_adapters(decoder)
        if self._pool_mode:
            self._pool.attach(decoder)
        self._offloaded_to = None

    async def _on_worker(self, fn: Callable[[], R]) -> R:
        return await asyncio.wrap_future(self._worker.call(fn))


async def _next_event(
    events: asyncio.Queue[JobEvent], deadline: float, request: GenerationRequest
) -> JobEvent:
    remaining = deadline - time.monotonic()
    try:
        if remaining <= 0:
            raise TimeoutError
        return await asyncio.wait_for(events.get(), remaining)
    except TimeoutError:
        _log.warning("request %s timed out", request.request_id)
        raise GenerationTimeout(f"request {request.request_id} timed out") from None


def _serves_adapters(decoder: BatchDecoder | None) -> bool:
    """Whether the decoder serves LoRA versions from its own pool, one per request (the fast decoder)."""
    return decoder is not None and decoder.lora_slots > 0


def _worker_threads(model: PreTrainedModel) -> int | None:
    """One thread for a small model on the CPU (the demo): its matrices are too small to split, and on a busy
    machine spinning OpenMP threads make each step many times slower. None (torch's default) otherwise."""
    if _on_accelerator(model) or sum(p.numel() for p in model.parameters()) > SMALL_MODEL_PARAMETERS:
        return None
    return 1


def _on_accelerator(model: PreTrainedModel) -> bool:
    """Whether the model's weights sit on an accelerator (a meta-device skeleton, whose weights the decoders hold,
    does not: pausing keeps them)."""
    return any(p.device.type not in ("cpu", "meta") for p in model.parameters())


def _reloader(settings: ModelSettings) -> Callable[[], LoadedModel]:
    def reload() -> LoadedModel:
        return load_model(settings)

    return reload
