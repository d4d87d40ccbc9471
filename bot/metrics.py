"""The metrics port: what the core and the adapters report, without knowing who collects it.

``Metrics`` is a few methods; ``NullMetrics`` (the default everywhere) does nothing, and the composition root wires
``bot.ops.prometheus.PrometheusMetrics`` in. Label values are small fixed sets (outcomes, platforms, error kinds),
never ids or text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class Outcome(StrEnum):
    """What became of one incoming message (hanbot_messages_total's ``outcome`` label)."""

    ANSWERED = "answered"  # a complete reply was shown and stored
    REFUSED = "refused"  # one polite sentence instead of a reply: empty, too long, queue full, paused
    FAILED = "failed"  # the reply started or was attempted and ended with an error sentence (incomplete)
    CANCELLED = "cancelled"  # /reset or shutdown stopped it
    DUPLICATE = "duplicate"  # a second delivery of a message already taken: not answered again


class ApiResult(StrEnum):
    """One platform API attempt (hanbot_platform_api_calls_total's ``result`` label)."""

    OK = "ok"
    ERROR = "error"  # a refusal or a transport error that is not retried
    RETRY = "retry"  # rate limited (429) or a server error (5xx) that the client tries again


@dataclass(frozen=True)
class EngineLoad:
    """The engine's load at one moment (None: this engine does not know)."""

    waiting: int | None = None
    running: int | None = None
    slots: int | None = None  # how many replies can decode at once
    kv_used_ratio: float | None = None  # share of the KV memory in use


class Metrics(Protocol):
    def message(self, platform: str, outcome: Outcome) -> None:
        """One incoming message ended with ``outcome``."""
        ...

    def reply_waiting(self, delta: int) -> None:
        """A reply started (+1) or stopped (-1) waiting for its first token."""
        ...

    def queue_wait(self, seconds: float) -> None:
        """How long a request waited in the engine's queue (0 when it never did)."""
        ...

    def first_token(self, seconds: float) -> None:
        """From the message's arrival at the core to the first token of the reply."""
        ...

    def tokens_per_second(self, rate: float) -> None:
        """One finished reply's decoding speed (tokens after the first, over the time since the first)."""
        ...

    def generation_error(self, kind: str) -> None:
        """A generation ended with an error; ``kind`` is the error class name (QueueFull, GenerationTimeout...)."""
        ...

    def api_call(self, platform: str, result: ApiResult) -> None:
        """One platform API attempt."""
        ...

    def pruned(self, turns: int) -> None:
        """The prune job removed ``turns`` turns."""
        ...


class NullMetrics:
    """Reports nowhere."""

    def message(self, platform: str, outcome: Outcome) -> None:
        pass

    def reply_waiting(self, delta: int) -> None:
        pass

    def queue_wait(self, seconds: float) -> None:
        pass

    def first_token(self, seconds: float) -> None:
        pass

    def tokens_per_second(self, rate: float) -> None:
        pass

    def generation_error(self, kind: str) -> None:
        pass

    def api_call(self, platform: str, result: ApiResult) -> None:
        pass

    def pruned(self, turns: int) -> None:
        pass


class ReplyClock:
    """Times one reply: arrival, the engine's first queue report, the first and the last token."""

    def __init__(self, metrics: Metrics, arrived: float | None = None) -> None:
        self._metrics = metrics
        self.arrived = time.monotonic() if arrived is None else arrived
        self.queued_at: float | None = None
        self.first_at: float | None = None
        self.last_at: float | None = None
        self._waiting = False

    def generation_started(self) -> None:
        self._waiting = True
        self._metrics.reply_waiting(+1)

    def queued(self) -> None:
        if self.queued_at is None:
            self.queued_at = time.monotonic()

    def token(self) -> None:
        now = time.monotonic()
        if self.first_at is None:
            self.first_at = now
            self._stop_waiting()
            self._metrics.first_token(now - self.arrived)
            self._metrics.queue_wait(now - self.queued_at if self.queued_at is not None else 0.0)
        self.last_at = now

    def finished(self, tokens: int) -> None:
        """The reply ended (complete or not) with ``tokens`` tokens."""
        self._stop_waiting()
        if self.first_at is not None and self.last_at is not None and self.last_at > self.first_at:
            self._metrics.tokens_per_second(max(tokens - 1, 0) / (self.last_at - self.first_at))

    def _stop_waiting(self) -> None:
        if self._waiting:
            self._waiting = False
            self._metrics.reply_waiting(-1)
