"""Rank 0's decoder calls to the other ranks of one host through shared memory (microseconds, not a TCP round).

Every decode step rank 0 tells the other ranks what to run; they cannot start their half of the step before they
know. Over gloo (TCP) that message cost about a millisecond and a half a step; here it is a write into a shared
page that the followers poll. One writer, ``readers`` readers: the writer waits until every reader has taken the
previous message before it writes the next. Messages larger than the page go over the gloo group instead (the page
then only says so), so a long prompt is never cut.

Layout: [seq: u64][length: u64][oversized: u64][acks: u64 per reader][payload]. The writer stores the payload and
the length, then the sequence number; readers poll the sequence number. x86-64 keeps stores in order, and the
machines this runs on are x86-64.
"""

from __future__ import annotations

import pickle
import struct
import time
from collections.abc import Callable
from multiprocessing import shared_memory
from typing import Any

_U64 = struct.Struct("<Q")
_SPIN_S = (
    0.05  # poll without sleeping this long after the last message, then sleep between polls (idle engine)
)
_IDLE_SLEEP_S = 0.0005
_STALLED_S = 600.0  # a reader that has not taken a message for this long is gone (its rank died)


class ShmChannel:
    def __init__(self, shm: shared_memory.SharedMemory, readers: int, reader_index: int | None) -> None:
        self._shm = shm
        assert shm.buf is not None
        self._buf: memoryview = shm.buf
        self._readers = readers
        self._me = reader_index  # None: the writer
        self._payload_at = 24 + 8 * readers
        self._seq = 0  # a reader takes every message from the first: the writer waits for its ack of each
        self.size = shm.size - self._payload_at

    @classmethod
    def create(cls, readers: int, size: int = 8 << 20) -> ShmChannel:
        made = cls(shared_memory.SharedMemory(create=True, size=size), readers, None)
        made._buf[: made._payload_at] = bytes(made._payload_at)
        return made

    @classmethod
    def attach(cls, name: str, readers: int, reader_index: int, other_process: bool = True) -> ShmChannel:
        shm = shared_memory.SharedMemory(name=name)
        if other_process:
            _forget_in_resource_tracker(shm)  # the writer owns it: a reader exiting must not unlink it
        return cls(shm, readers, reader_index)

    @property
    def name(self) -> str:
        return self._shm.name

    def _get(self, at: int) -> int:
        return int(_U64.unpack_from(self._buf, at)[0])

    def _put(self, at: int, value: int) -> None:
        _U64.pack_into(self._buf, at, value)

    def write(self, obj: Any, oversized: Callable[[Any], None]) -> None:
        """Send ``obj`` to every reader; ``oversized(obj)`` sends one that does not fit (after the page says so)."""
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        self._wait_for_acks()
        big = len(data) > self.size
        if not big:
            self._buf[self._payload_at : self._payload_at + len(data)] = data
        self._put(8, 0 if big else len(data))
        self._put(16, 1 if big else 0)
        self._seq += 1
        self._put(0, self._seq)
        if big:
            oversized(obj)

    def read(self, oversized: Callable[[], Any]) -> Any:
        """The next message; ``oversized()`` receives one that went the other way."""
        want = self._seq + 1
        last = time.monotonic()
        while self._get(0) < want:
            if time.monotonic() - last > _SPIN_S:
                time.sleep(_IDLE_SLEEP_S)
        self._seq = want
        big = self._get(16) == 1
        data = None if big else bytes(self._buf[self._payload_at : self._payload_at + self._get(8)])
        assert self._me is not None
        self._put(24 + 8 * self._me, want)  # taken: the writer may overwrite the page
        return oversized() if big else pickle.loads(data)  # type: ignore[arg-type]

    def _wait_for_acks(self) -> None:
        start = time.monotonic()
        while any(self._get(24 + 8 * r) < self._seq for r in range(self._readers)):
            if time.monotonic() - start > _STALLED_S:
                raise RuntimeError(f"a tensor-parallel rank took no message for {_STALLED_S:.0f} s")

    def close(self) -> None:
        self._buf.release()
        self._shm.close()
        if self._me is None:
            self._shm.unlink()


def _forget_in_resource_tracker(shm: shared_memory.SharedMemory) -> None:
    """Python < 3.13 registers attached segments too, and unlinks them when the reader exits."""
    try:
        from multiprocessing import resource_tracker

        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    except Exception:
        pass
