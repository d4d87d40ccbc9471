"""The database lease: one holder at a time, renewal, expiry, release; on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

from bot.store.conversations import ConversationStore
from bot.store.leases import DbLease
from tests.learning.helpers import FixedClock


def test_take_renew_expire_release(store: ConversationStore) -> None:
    clock = FixedClock()
    a = DbLease(store, "jobs", holder="a", ttl=timedelta(seconds=60), clock=clock)
    b = DbLease(store, "jobs", holder="b", ttl=timedelta(seconds=60), clock=clock)

    assert a.acquire()
    assert not b.acquire()
    assert b.current_holder() == "a"
    clock.advance(seconds=50)
    assert a.acquire()  # renewed: now valid until +110 s
    clock.advance(seconds=50)
    assert not b.acquire()
    clock.advance(seconds=11)  # a stopped renewing and its lease ran out
    assert b.current_holder() is None
    assert b.acquire()
    assert not a.acquire()
    a.release()  # not a's to release: nothing happens
    assert a.current_holder() == "b"
    b.release()
    assert a.current_holder() is None
    assert a.acquire()


def test_concurrent_takers_get_one_winner(store: ConversationStore) -> None:
    clock = FixedClock()
    leases = [
        DbLease(store, "race", holder=f"h{i}", ttl=timedelta(seconds=60), clock=clock) for i in range(6)
    ]
    results: list[bool] = []
    barrier = threading.Barrier(len(leases))

    def take(lease: DbLease) -> None:
        barrier.wait()
        results.append(lease.acquire())

    threads = [threading.Thread(target=take, args=(lease,)) for lease in leases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 1
