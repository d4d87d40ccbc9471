"""The shared-memory channel that carries rank 0's decoder calls: every message, in order, to every reader; a
message larger than the page goes the other way (here a queue standing in for gloo), announced in order."""

from __future__ import annotations

import queue
import threading
from typing import Any

from inference.fast.channel import ShmChannel


def test_every_reader_gets_every_message_in_order_and_big_ones_go_the_other_way() -> None:
    writer = ShmChannel.create(readers=2, size=4096)
    side: list[queue.Queue[Any]] = [queue.Queue(), queue.Queue()]
    messages: list[Any] = (
        [("step", ())] * 50 + [("admit", (list(range(5000)),))] + [("release", (3,)), "stop"]
    )
    got: list[list[Any]] = [[], []]

    def read(index: int) -> None:
        reader = ShmChannel.attach(writer.name, readers=2, reader_index=index, other_process=False)
        while True:
            message = reader.read(oversized=side[index].get)
            got[index].append(message)
            if message == "stop":
                reader.close()
                return

    threads = [threading.Thread(target=read, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for message in messages:
        writer.write(message, oversized=lambda obj: [q.put(obj) for q in side])
    for t in threads:
        t.join(30)
    writer.close()
    assert got == [messages, messages]
    assert len(repr(messages[50])) > writer.size  # the admit really was too big for the page
