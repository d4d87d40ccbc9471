"""The fair queue: per-channel order, least-recently-served channel first, one running per channel, a bound."""

from __future__ import annotations

import pytest

from bot.errors import QueueFull
from inference.request_queue import FairQueue


def drain(queue: FairQueue[str], running: set[str] | None = None) -> list[str]:
    """Start everything in order, each channel's request finishing before the next pop (busy = running)."""
    started: list[str] = []
    busy = running or set()
    while (item := queue.pop(lambda channel: channel in busy)) is not None:
        started.append(item)
    return started


def test_channels_take_turns_and_keep_their_order() -> None:
    queue: FairQueue[str] = FairQueue(limit=10)
    for item in ("a1", "a2", "a3", "b1", "c1", "b2"):
        queue.push(item[0], item)
    assert drain(queue) == ["a1", "b1", "c1", "a2", "b2", "a3"]


def test_a_quiet_channel_goes_before_a_busy_channels_next_message() -> None:
    queue: FairQueue[str] = FairQueue(limit=10)
    queue.push("busy", "busy1")
    assert queue.pop(lambda _c: False) == "busy1"
    queue.push("busy", "busy2")
    queue.push("busy", "busy3")
    queue.push("quiet", "quiet1")
    assert queue.pop(lambda _c: False) == "quiet1"  # busy was served last
    assert drain(queue) == ["busy2", "busy3"]


def test_a_running_channel_waits_for_its_reply() -> None:
    queue: FairQueue[str] = FairQueue(limit=10)
    queue.push("a", "a1")
    queue.push("a", "a2")
    assert queue.pop(lambda _c: False) == "a1"
    assert queue.pop(lambda channel: channel == "a") is None
    assert queue.peek(lambda _c: False) == "a2"


def test_the_bound_refuses_politely() -> None:
    queue: FairQueue[str] = FairQueue(limit=2)
    queue.push("a", "a1")
    queue.push("b", "b1")
    with pytest.raises(QueueFull):
        queue.push("c", "c1")
    assert queue.remove("a", "a1")
    queue.push("c", "c1")
    assert len(queue) == 2


def test_positions_follow_the_start_order() -> None:
    queue: FairQueue[str] = FairQueue(limit=10)
    items = ["a1", "a2", "b1", "c1"]
    for item in items:
        queue.push(item[0], item)
    positions = queue.positions(lambda channel: channel == "a")  # a has a request running
    by_item = {item: positions[id(item)] for item in items}
    assert by_item == {"b1": 1, "c1": 2, "a1": 3, "a2": 4}
