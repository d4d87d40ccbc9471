"""The edit budget, counted per channel: at most one message write (post or edit) per interval in a channel.

Every reply streaming into one channel shares the budget, so two replies at once in a channel never add up to a
storm of edits; other channels are not slowed down. The interval runs from the end of one write to the start of the
next, so Discord sees the writes at least ``interval_s`` apart even when a request takes a while.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager


class ChannelPacer:
    def __init__(self, interval_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[int, float] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    def ready_in(self, channel_id: int) -> float:
        """Seconds until the channel may be written to again (0 when it may now)."""
        last = self._last.get(channel_id)
        if last is None:
            return 0.0
        return max(0.0, last + self.interval_s - self._clock())

    @asynccontextmanager
    async def turn(self, channel_id: int) -> AsyncIterator[None]:
        """Hold the channel's write slot: waits for the interval, and restarts it when the write is done."""
        lock = self._locks.setdefault(channel_id, asyncio.Lock())
        async with lock:
            delay = self.ready_in(channel_id)
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                yield
            finally:
                self._last[channel_id] = self._clock()
