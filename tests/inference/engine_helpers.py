"""Helpers for the local engine's tests: requests for FAQ questions, a stream collector, decoder wrappers."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from bot.domain import ChatTurn, GenerationParams, GenerationRequest, QueuePosition, Role
from bot.errors import BotError
from inference.decoder import BatchDecoder, DecoderDefaults, SlotRequest
from inference.demo_model import SYSTEM_PROMPT
from inference.local_engine import LocalEngine

GREEDY = GenerationParams(do_sample=False, max_new_tokens=64)


def request(question: str, channel: str = "c", request_id: str = "r", **kwargs: object) -> GenerationRequest:
    params = kwargs.pop("params", GREEDY)
    assert isinstance(params, GenerationParams)
    turns = (ChatTurn(Role.SYSTEM, SYSTEM_PROMPT), ChatTurn(Role.USER, question))
    return GenerationRequest(request_id, channel, turns, params, **kwargs)  # type: ignore[arg-type]


@dataclass
class Reply:
    request_id: str
    text: str = ""
    positions: list[int] = field(default_factory=list)
    error: BaseException | None = None
    first_text_at: float | None = None
    ended_at: float = 0.0
    chunks: int = 0


async def collect(engine: LocalEngine, req: GenerationRequest) -> Reply:
    """Read a whole stream; an engine error is kept in the reply instead of raised."""
    reply = Reply(req.request_id)
    parts: list[str] = []
    try:
        async for event in engine.generate(req):
            if isinstance(event, QueuePosition):
                reply.positions.append(event.position)
                continue
            if reply.first_text_at is None:
                reply.first_text_at = time.monotonic()
            reply.chunks += 1
            parts.append(event)
    except BotError as exc:
        reply.error = exc
    reply.text = "".join(parts)
    reply.ended_at = time.monotonic()
    return reply


class WrappedDecoder(DecoderDefaults):
    """A BatchDecoder that forwards the core five to a real one (the optional capabilities are the defaults: prefill
    at admission, no adapter pool); subclasses change one behaviour."""

    def __init__(self, inner: BatchDecoder) -> None:
        self.inner = inner
        self.admitted: list[SlotRequest] = []

    @property
    def capacity(self) -> int:
        return self.inner.capacity

    def can_admit(self, prompt_len: int, max_new_tokens: int) -> bool:
        return self.inner.can_admit(prompt_len, max_new_tokens)

    def admit(self, request: SlotRequest) -> int:
        self.admitted.append(request)
        return self.inner.admit(request)

    def step(self) -> dict[int, int]:
        return self.inner.step()

    def release(self, slot: int) -> None:
        self.inner.release(slot)


class NeverStops(WrappedDecoder):
    """Replaces every terminator by an ordinary token, so a stream runs until max_new_tokens or a cancel."""

    def __init__(self, inner: BatchDecoder, stop_ids: frozenset[int], filler: int) -> None:
        super().__init__(inner)
        self._stop_ids = stop_ids
        self._filler = filler

    def admit(self, request: SlotRequest) -> int:
        return self._swap(super().admit(request))

    def step(self) -> dict[int, int]:
        return {slot: self._swap(token) for slot, token in super().step().items()}

    def _swap(self, token: int) -> int:
        return self._filler if token in self._stop_ids else token


class Faulty(WrappedDecoder):
    """Raises ``error`` from admit for prompts ``poisoned`` says yes to, or from the ``fail_step``-th step."""

    def __init__(
        self,
        inner: BatchDecoder,
        poisoned: Callable[[SlotRequest], bool] = lambda _r: False,
        fail_step: int | None = None,
        error: Callable[[], BaseException] = lambda: RuntimeError("injected fault"),
    ) -> None:
        super().__init__(inner)
        self._poisoned = poisoned
        self._fail_step = fail_step
        self._error = error
        self.steps = 0

    def admit(self, request: SlotRequest) -> int:
        if self._poisoned(request):
            raise self._error()
        return super().admit(request)

    def step(self) -> dict[int, int]:
        self.steps += 1
        if self.steps == self._fail_step:
            raise self._error()
        return super().step()


class Slow(WrappedDecoder):
    """Sleeps ``delay_s`` in every step: a stand-in for a big model, so that a test can act mid-generation."""

    def __init__(self, inner: BatchDecoder, delay_s: float = 0.005) -> None:
        super().__init__(inner)
        self._delay_s = delay_s

    def step(self) -> dict[int, int]:
        time.sleep(self._delay_s)
        return super().step()


class Gate(WrappedDecoder):
    """Admits nothing until ``open`` is set, so a test can queue everything first and release it at once."""

    def __init__(self, inner: BatchDecoder) -> None:
        super().__init__(inner)
        self.open = threading.Event()

    def can_admit(self, prompt_len: int, max_new_tokens: int) -> bool:
        return self.open.is_set() and super().can_admit(prompt_len, max_new_tokens)


async def wait_until(condition: Callable[[], bool], within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.005)


def out_of_memory() -> BaseException:
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
