"""The model worker: one thread that owns the model and the batch decoder.

Each turn of its loop: run queued control calls (LoRA, offload), release the slots of cancelled requests, admit
waiting requests into free slots (fair queue order, one per channel), then decode one token for every active slot
and hand each its text. Everything that touches the model happens on this thread; the asyncio side only queues,
cancels, and reads events.

Failures stay with the request they belong to: an error while admitting or delivering a request fails that request;
out of memory in a batched step fails the newest request and the rest carry on; any other error in a step fails the
requests of that step (all of them were in it) and the worker keeps serving.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gc
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from bot.domain import GenerationParams, GenerationRequest, QueuePosition, StreamEvent
from bot.errors import EngineError, GenerationCancelled, GenerationFailed
from inference.decoder import BatchDecoder, SlotRequest
from inference.detokenize import Detokenizer
from inference.request_queue import FairQueue

_log = logging.getLogger(__name__)

R = TypeVar("R")


@dataclass(frozen=True)
class End:
    """The last event of a job's stream: ``error`` is None when the reply is complete."""

    error: BaseException | None = None


JobEvent = StreamEvent | End


@dataclass(eq=False)
class Job:
    request: GenerationRequest
    prompt_ids: list[int]
    max_new_tokens: int
    emit: Callable[[JobEvent], None]  # thread-safe: hands an event to the asyncio side
    detokenizer: Detokenizer
    cancelled: bool = False
    finished: bool = False
    slot: int | None = None
    tokens: int = 0
    position: int = 0  # last queue position sent

    @property
    def params(self) -> GenerationParams:
        """The request's parameters with ``max_new_tokens`` clipped to what the context leaves: what the decoder
        reserves KV memory for is what the worker stops on."""
        params = self.request.params
        if params.max_new_tokens == self.max_new_tokens:
            return params
        return dataclasses.replace(params, max_new_tokens=self.max_new_tokens)


@dataclass
class WorkerStats:
    admitted: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    steps: int = 0
    tokens: int = 0
    max_active: int = 0
    tokens_by_request: OrderedDict[str, int] = field(default_factory=OrderedDict)

    def count_token(self, request_id: str) -> None:
        self.tokens += 1
        self.tokens_by_request[request_id] = self.tokens_by_request.get(request_id, 0) + 1
        self.tokens_by_request.move_to_end(request_id)
        while len(self.tokens_by_request) > 4096:
            self.tokens_by_request.popitem(last=False)


class ModelWorker:
    def __init__(
        self,
        decoder: BatchDecoder,
        stop_ids: frozenset[int],
        *,
        queue_limit: int,
        queue_limit_per_user: int | None = None,
        queue_limit_per_channel: int | None = None,
        torch_threads: int | None = None,
        interleave_prefill: bool = True,
        name: str = "hanbot-model",
    ) -> None:
        """``torch_threads``: intra-op threads for the worker thread (None: torch's default).
        ``interleave_prefill``: with a decoder that ``prefills_in_steps``, a newcomer's prompt is only queued at
        admission and prefilled in chunks inside the following steps, so the running replies keep streaming; its
        first token comes back from a step like any other. Off: the whole prompt is prefilled at admission."""
        self._decoder: BatchDecoder | None = decoder
        self._interleave = interleave_prefill
        self._stop_ids = stop_ids
        self._queue: FairQueue[Job] = FairQueue(
            queue_limit, per_user=queue_limit_per_user, per_channel=queue_limit_per_channel
        )
        self._cond = threading.Condition()
        self._busy: dict[str, Job] = {}  # channel -> its admitted job
        self._active: dict[int, Job] = {}  # slot -> job (worker thread only)
        self._admission_order: list[Job] = []  # newest last (out-of-memory shedding)
        self._controls: list[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = []
        self._stopping = False
        self._memory_blocked = False  # the next request waits for decoder memory, not for a slot
        self.stats = WorkerStats()
        # GenerationRequest.lora → the decoder's adapter id (SlotRequest.lora), at admission; set by the engine
        self.resolve_lora: Callable[[str | None], str | None] | None = None
        self.heartbeat = time.monotonic()
        self._torch_threads = torch_threads
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- called from any thread

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def decoder(self) -> BatchDecoder | None:
        return self._decoder

    def submit(self, job: Job) -> None:
        """Queue ``job``; raises QueueFull past the limit."""
        with self._cond:
            self._queue.push(job.request.channel, job, user=job.request.user)
            self._publish_positions()
            self._cond.notify_all()

    def cancel(self, job: Job) -> None:
        """Withdraw a waiting job, or ask the worker to stop a running one before its next step."""
        with self._cond:
            if job.finished:
                return
            job.cancelled = True
            if self._queue.remove(job.request.channel, job):
                job.finished = True
                self.stats.cancelled += 1
                self._publish_positions()
            self._cond.notify_all()

    def fail_waiting(self, error: EngineError) -> int:
        """End every waiting job with ``error`` (running ones go on); returns how many."""
        with self._cond:
            waiting = list(self._queue)
            for job in waiting:
                self._queue.remove(job.request.channel, job)
                job.finished = True
                job.emit(End(error))
            self.stats.failed += len(waiting)
            return len(waiting)

    def counts(self) -> tuple[int, int]:
        """(waiting, running)."""
        with self._cond:
            return len(self._queue), len(self._busy)

    def call(self, fn: Callable[[], R]) -> concurrent.futures.Future[R]:
        """Run ``fn`` on the worker thread between two steps."""
        future: concurrent.futures.Future[R] = concurrent.futures.Future()
        with self._cond:
            if self._stopping:
                future.set_exception(GenerationCancelled("the engine is closed"))
                return future
            self._controls.append((fn, future))
            self._cond.notify_all()
        return future

    def set_decoder(self, decoder: BatchDecoder | None) -> None:
        """Swap the decoder (worker thread only, through ``call``); None stops admissions (offloaded)."""
        self._decoder = decoder
        with self._cond:
            self._cond.notify_all()

    def replace_decoder(self, make: Callable[[], BatchDecoder], reason: EngineError) -> None:
        """End the running requests with ``reason`` (their KV lives in the old decoder), close the old decoder (its
        KV memory goes back), then serve with the decoder ``make`` builds.

        Worker thread only, through ``call``. Waiting requests are untouched and are admitted into the new decoder."""
        for job in list(self._active.values()):
            self._finish(job, reason)
        old, self._decoder = self._decoder, None
        if old is not None:
            old.close()
        del old
        gc.collect()
        _free_accelerator_memory()
        self.set_decoder(make())

    def stop(self, timeout: float | None = None) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # ---------------------------------------------------------------- the worker thread

    def _run(self) -> None:
        if self._torch_threads:
            torch.set_num_threads(self._torch_threads)
        _log.info("model worker started (%d torch threads)", torch.get_num_threads())
        while True:
            controls, admissions, reaped, stopping = self._next_work()
            self._run_controls(controls)
            for job in reaped:
                self._finish(job, None, cancelled=True)
            if stopping:
                self._shut_down()
                return
            for job in admissions:
                self._admit(job)
            if self._active:
                self._step()
            self.heartbeat = time.monotonic()

    def _next_work(
        self,
    ) -> tuple[list[tuple[Callable[[], Any], concurrent.futures.Future[Any]]], list[Job], list[Job], bool]:
        with self._cond:
            while not (self._stopping or self._controls or self._active or self._admissible()):
                # a request the decoder has no memory for yet is retried soon; otherwise sleep until notified
                self._cond.wait(timeout=0.05 if self._blocked() else 1.0)
                self.heartbeat = time.monotonic()
            controls, self._controls = self._controls, []
            reaped = [job for job in self._active.values() if job.cancelled]
            admissions = [] if self._stopping else self._take_admissions(len(reaped))
            return controls, admissions, reaped, self._stopping

    def _admissible(self) -> bool:
        """Whether the next waiting request can start now (a free slot, and room in the decoder's memory)."""
        job = self._queue.peek(self._is_busy)
        if job is None or self._decoder is None or self._free_slots(0) <= 0:
            return False
        fits = self._decoder.can_admit(len(job.prompt_ids), job.max_new_tokens)
        if fits == self._memory_blocked:  # changed: a free slot no longer means "starts now" (or again does)
            self._memory_blocked = not fits
            self._publish_positions()
        return fits

    def _blocked(self) -> bool:
        return self._decoder is not None and self._queue.peek(self._is_busy) is not None

    def _take_admissions(self, leaving: int) -> list[Job]:
        taken: list[Job] = []
        decoder = self._decoder
        if decoder is None:
            return taken
        while self._free_slots(leaving) - len(taken) > 0:
            job = self._queue.peek(self._is_busy)
            if job is None or not _fits_with(decoder, taken, job):
                break
            self._queue.pop(self._is_busy)
            self._busy[job.request.channel] = job
            taken.append(job)
        if taken:
            self._queue.forget_idle(self._is_busy)
            self._publish_positions()
        return taken

    def _free_slots(self, leaving: int) -> int:
        capacity = self._decoder.capacity if self._decoder else 0
        return capacity - len(self._active) + leaving

    def _is_busy(self, channel: str) -> bool:
        return channel in self._busy

    def _publish_positions(self) -> None:
        """Send each waiting job its place when it moved forward (a place once shown is never taken back:
        a newcomer in a quieter channel may be served first, but the user is not told to wait longer).
        A job that a free slot takes at once hears nothing: it is not waiting."""
        positions = self._queue.positions(self._is_busy)
        free = (self._decoder.capacity - len(self._busy)) if self._decoder is not None else 0
        for job in self._queue:
            position = positions.get(id(job), 0)
            starts_now = (
                position <= free and not self._memory_blocked and not self._is_busy(job.request.channel)
            )
            if position and not starts_now and (job.position == 0 or position < job.position):
                job.position = position
                job.emit(QueuePosition(position))

    def _run_controls(self, controls: list[tuple[Callable[[], Any], concurrent.futures.Future[Any]]]) -> None:
        for fn, future in controls:
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:
                _log.exception("engine control call failed")
                future.set_exception(exc)

    def _admit(self, job: Job) -> None:
        decoder = self._decoder
        if job.cancelled or decoder is None:
            self._finish(job, None, cancelled=True)
            return
        slot = self._lowest_free_slot(decoder.capacity)
        job.slot = slot
        self._active[slot] = job
        self._admission_order.append(job)
        self.stats.admitted += 1
        self.stats.max_active = max(self.stats.max_active, len(self._active))
        _log.debug(
            "request %s admitted to slot %d (%d prompt tokens)",
            job.request.request_id,
            slot,
            len(job.prompt_ids),
        )
        try:
            lora = self.resolve_lora(job.request.lora) if self.resolve_lora is not None else None
            request = SlotRequest(slot, tuple(job.prompt_ids), job.params, lora=lora)
            if self._interleave and decoder.prefills_in_steps:
                # prefilled in the coming steps; the first token comes from one of them
                decoder.submit(request)
                return
            first = decoder.admit(request)
        except Exception as exc:
            self._finish(job, _as_failure(job, exc, "admitting"))
            return
        self._deliver(job, first)

    def _lowest_free_slot(self, capacity: int) -> int:
        return next(s for s in range(capacity) if s not in self._active)

    def _step(self) -> None:
        decoder = self._decoder
        assert decoder is not None
        try:
            tokens = decoder.step()
        except torch.OutOfMemoryError as exc:
            newest = self._admission_order[-1]
            _log.warning(
                "out of memory in a decode step of %d rows: failing the newest request %s",
                len(self._active),
                newest.request.request_id,
            )
            self._finish(newest, _as_failure(newest, exc, "decoding"))
            _free_accelerator_memory()
            return
        except Exception as exc:
            _log.exception("decode step failed: failing its %d requests", len(self._active))
            for job in list(self._active.values()):
                self._finish(job, _as_failure(job, exc, "decoding"))
            return
        self.stats.steps += 1
        self._fail_prefills(decoder)
        for slot, token in tokens.items():
            running = self._active.get(slot)
            if running is not None:
                self._deliver(running, token)

    def _fail_prefills(self, decoder: BatchDecoder) -> None:
        """End the requests whose prefill failed inside the step (the others went on decoding)."""
        for slot, exc in decoder.take_prefill_failures().items():
            job = self._active.get(slot)
            if job is not None:
                self._finish(job, _as_failure(job, exc, "prefilling"))

    def _deliver(self, job: Job, token: int) -> None:
        """Count the token, then stop on a terminator or the length limit, else hand over the text it completes."""
        try:
            job.tokens += 1
            self.stats.count_token(job.request.request_id)
            if token in self._stop_ids:
                self._complete(job)
                return
            text = job.detokenizer.push(token)
            if text:
                job.emit(text)
            if job.tokens >= job.max_new_tokens:
                self._complete(job)
        except Exception as exc:
            self._finish(job, _as_failure(job, exc, "delivering"))

    def _complete(self, job: Job) -> None:
        tail = job.detokenizer.flush()
        if tail:
            job.emit(tail)
        self._finish(job, None)

    def _finish(self, job: Job, error: BaseException | None, *, cancelled: bool = False) -> None:
        """Free the job's slot and channel and end its stream (worker thread)."""
        if job.slot is not None:
            self._active.pop(job.slot, None)
            if self._decoder is not None:
                try:
                    self._decoder.release(job.slot)
                except Exception:
                    _log.exception("releasing slot %d failed", job.slot)
        if job in self._admission_order:
            self._admission_order.remove(job)
        with self._cond:
            if self._busy.get(job.request.channel) is job:
                del self._busy[job.request.channel]
            job.finished = True
            self._publish_positions()
            self._cond.notify_all()
        if cancelled:
            self.stats.cancelled += 1
            _log.debug("request %s cancelled after %d tokens", job.request.request_id, job.tokens)
        elif error is not None:
            self.stats.failed += 1
        else:
            self.stats.completed += 1
            _log.debug("request %s complete: %d tokens", job.request.request_id, job.tokens)
        job.emit(End(error if not cancelled else GenerationCancelled("cancelled")))

    def _shut_down(self) -> None:
        for job in list(self._active.values()):
            self._finish(job, GenerationCancelled("the engine is shutting down"))
        failed = self.fail_waiting(GenerationCancelled("the engine is shutting down"))
        _log.info("model worker stopped (%d waiting requests cancelled)", failed)


def _fits_with(decoder: BatchDecoder, taken: list[Job], job: Job) -> bool:
    """Whether ``job`` fits in the decoder's memory beside the jobs already taken this round (admitted right after,
    so the decoder's own state does not count them yet)."""
    return decoder.can_admit_together([(len(j.prompt_ids), j.max_new_tokens) for j in (*taken, job)])


def _as_failure(job: Job, exc: BaseException, stage: str) -> GenerationFailed:
    if isinstance(exc, torch.OutOfMemoryError):
        _free_accelerator_memory()
    _log.error(
        "request %s failed while %s: %s", job.request.request_id, stage, type(exc).__name__, exc_info=exc
    )
    failure = GenerationFailed(f"generation failed while {stage}: {type(exc).__name__}")
    failure.__cause__ = exc
    return failure


def _free_accelerator_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
