"""The fair queue in front of the model: per-channel FIFO, channels served least-recently-served first, bounded.

One active generation per channel: a channel whose previous request is still running (``busy``) is skipped, and its
next message waits behind it, so each channel's order is kept. Among the channels that can start, the one served
longest ago goes first (a channel never served goes before any that was), so a busy channel cannot starve a quiet
one: a quiet channel's message starts before a busy channel's next one. Not thread-safe: the engine holds its lock.

Caps (``WaitingCaps``): besides the total ``limit``, one channel and one user may have only so many requests waiting,
so one person or one channel cannot fill the queue for everybody; past a cap the request is refused with the reason.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from bot.errors import ChannelQueueFull, QueueFull, UserQueueFull

_log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class _Channel(Generic[T]):
    name: str
    arrival: int  # order in which channels first appeared (ties)
    last_served: int = -1  # the serve counter when this channel last started a request; -1 = never
    waiting: deque[T] = field(default_factory=deque)

    def rank(self) -> tuple[int, int]:
        return (self.last_served, self.arrival)


class WaitingCaps:
    """How many requests each user and each channel has waiting; ``check`` refuses one past its cap."""

    def __init__(self, *, per_user: int | None = None, per_channel: int | None = None) -> None:
        self.per_user = per_user
        self.per_channel = per_channel
        self._users: dict[str, int] = {}
        self._channels: dict[str, int] = {}

    def check(self, user: str, channel: str) -> None:
        if self.per_channel is not None and self._channels.get(channel, 0) >= self.per_channel:
            raise ChannelQueueFull(f"channel has {self.per_channel} requests waiting (its cap)")
        if user and self.per_user is not None and self._users.get(user, 0) >= self.per_user:
            raise UserQueueFull(f"user has {self.per_user} requests waiting (their cap)")

    def add(self, user: str, channel: str) -> None:
        self._channels[channel] = self._channels.get(channel, 0) + 1
        if user:
            self._users[user] = self._users.get(user, 0) + 1

    def discard(self, user: str, channel: str) -> None:
        _decrement(self._channels, channel)
        if user:
            _decrement(self._users, user)


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


class FairQueue(Generic[T]):
    def __init__(self, limit: int, *, per_user: int | None = None, per_channel: int | None = None) -> None:
        """``per_user`` / ``per_channel``: at most this many waiting requests of one user / one channel."""
        self._limit = limit
        self._caps = WaitingCaps(per_user=per_user, per_channel=per_channel)
        self._owners: dict[int, str] = {}  # id(item) -> its user
        self._channels: dict[str, _Channel[T]] = {}
        self._arrivals = itertools.count()
        self._served = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[T]:
        for channel in self._channels.values():
            yield from channel.waiting

    def push(self, channel: str, item: T, *, user: str = "") -> None:
        """Queue ``item`` behind the channel's earlier ones; raise QueueFull (or the channel's or the user's cap,
        which say why) past a limit."""
        self._caps.check(user, channel)
        if self._size >= self._limit:
            raise QueueFull(f"{self._size} requests waiting (limit {self._limit})")
        entry = self._channels.get(channel)
        if entry is None:
            entry = self._channels[channel] = _Channel(channel, next(self._arrivals))
        entry.waiting.append(item)
        self._caps.add(user, channel)
        self._owners[id(item)] = user
        self._size += 1

    def remove(self, channel: str, item: T) -> bool:
        entry = self._channels.get(channel)
        if entry is None or item not in entry.waiting:
            return False
        entry.waiting.remove(item)
        self._left(channel, item)
        return True

    def _left(self, channel: str, item: T) -> None:
        self._caps.discard(self._owners.pop(id(item), ""), channel)
        self._size -= 1

    def peek(self, busy: Callable[[str], bool]) -> T | None:
        """The item that ``pop`` would return, left in place."""
        channel = self._next_channel(busy)
        return channel.waiting[0] if channel else None

    def pop(self, busy: Callable[[str], bool]) -> T | None:
        """The next item to start: the head of the least recently served channel that is not busy."""
        channel = self._next_channel(busy)
        if channel is None:
            return None
        self._served += 1
        channel.last_served = self._served
        item = channel.waiting.popleft()
        self._left(channel.name, item)
        return item

    def _next_channel(self, busy: Callable[[str], bool]) -> _Channel[T] | None:
        ready = [c for c in self._channels.values() if c.waiting and not busy(c.name)]
        return min(ready, key=_Channel.rank) if ready else None

    def forget_idle(self, busy: Callable[[str], bool], keep: int = 4096) -> None:
        """Past ``keep`` channels, drop the idle ones served longest ago (their turn history resets)."""
        if len(self._channels) <= keep:
            return
        idle = sorted(
            (c for c in self._channels.values() if not c.waiting and not busy(c.name)), key=_Channel.rank
        )
        for channel in idle[: len(self._channels) - keep]:
            del self._channels[channel.name]

    def positions(self, busy: Callable[[str], bool]) -> dict[int, int]:
        """{id(item): 1-based place in the expected start order}, simulating the round-robin forward.

        A busy channel counts as just served: its next item starts after every other channel's head.
        """
        served = self._served
        heap: list[tuple[int, int, str]] = []
        cursors: dict[str, int] = {}
        for channel in self._channels.values():
            if channel.waiting:
                last = served + 1 if busy(channel.name) else channel.last_served
                heapq.heappush(heap, (last, channel.arrival, channel.name))
                cursors[channel.name] = 0
        order: dict[int, int] = {}
        tick = served + 1
        while heap:
            _last, arrival, name = heapq.heappop(heap)
            channel = self._channels[name]
            order[id(channel.waiting[cursors[name]])] = len(order) + 1
            cursors[name] += 1
            tick += 1
            if cursors[name] < len(channel.waiting):
                heapq.heappush(heap, (tick, arrival, name))
        return order
