"""Fakes that behave like the real thing at the interface, for adapter and core tests.

The model itself is never faked where it matters (tests use the demo model through LocalEngine); ScriptedEngine is for
tests about what happens around a reply: platform limits, long replies, errors mid-stream, queue positions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from bot.domain import ChatTurn, GenerationRequest, QueuePosition, StreamEvent
from bot.errors import EngineError, EnginePaused


class CharTokenizer:
    """Counts one token per 2 characters plus 4 per turn: close enough to BPE for budget logic tests."""

    def __init__(self, context_length: int = 2048) -> None:
        self._context_length = context_length

    @property
    def context_length(self) -> int:
        return self._context_length

    def count_tokens(self, turns: Sequence[ChatTurn], *, add_generation_prompt: bool = True) -> int:
        return sum(4 + (len(t.content) + 1) // 2 for t in turns) + (4 if add_generation_prompt else 0) + 1


@dataclass
class ScriptedEngine:
    """An Engine whose replies are scripted. Records every request; can wait, report queue positions, or fail.

    ``reply`` is a fixed text or a function of the request; the text is streamed in ``chunk_size`` pieces with
    ``delay_s`` between them. ``fail_after`` raises ``error`` after that many chunks.
    """

    reply: str | Callable[[GenerationRequest], str] = "안녕하세요! Hello!"
    chunk_size: int = 8
    delay_s: float = 0.0
    queue_positions: Sequence[int] = ()
    fail_after: int | None = None
    error: Exception = field(default_factory=lambda: EngineError("scripted failure"))
    tokenizer: CharTokenizer = field(default_factory=CharTokenizer)
    requests: list[GenerationRequest] = field(default_factory=list)
    paused: bool = False
    lora: str | None = None
    loras: dict[str, str] = field(default_factory=dict)
    closed_streams: int = 0

    async def generate(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        if self.paused:
            raise EnginePaused("paused")
        self.requests.append(request)
        try:
            for position in self.queue_positions:
                yield QueuePosition(position)
                await asyncio.sleep(self.delay_s)
            text = self.reply(request) if callable(self.reply) else self.reply
            for i in range(0, len(text), self.chunk_size):
                if self.fail_after is not None and i // self.chunk_size >= self.fail_after:
                    raise self.error
                await asyncio.sleep(self.delay_s)
                yield text[i : i + self.chunk_size]
        finally:
            self.closed_streams += 1

    async def health(self) -> None:
        return None

    async def pause(self) -> None:
        self.paused = True

    async def resume(self) -> None:
        self.paused = False

    async def load_lora(self, name: str, path: str) -> None:
        self.loras[name] = path

    async def use_lora(self, name: str | None) -> None:
        self.lora = name

    @property
    def active_lora(self) -> str | None:
        return self.lora

    async def aclose(self) -> None:
        return None


@dataclass
class RecordingSink:
    """A ReplySink that keeps what it was given (for core tests; adapters have real sinks)."""

    sent: list[str] = field(default_factory=list)
    streamed: list[str] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    incomplete: bool = False
    posted: tuple[str, ...] = ()

    async def send(self, text: str) -> None:
        self.sent.append(text)

    async def stream(self, events: AsyncIterator[StreamEvent]) -> None:
        parts: list[str] = []
        try:
            async for event in events:
                if isinstance(event, QueuePosition):
                    self.positions.append(event.position)
                else:
                    parts.append(event)
        except BaseException:
            self.incomplete = True
            self.streamed.append("".join(parts))
            raise
        self.streamed.append("".join(parts))
