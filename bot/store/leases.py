"""A lease in the database (the ``job_locks`` table): at most one holder at a time, across processes.

A holder takes the lease for ``ttl`` and renews it before it runs out; a holder that dies simply stops renewing, and
the lease is free again once ``expires_at`` has passed. Taking and renewing is one conditional UPDATE (or an INSERT
when the row does not exist yet), so two processes can never both believe they hold it, on SQLite or PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import CursorResult, delete, or_, select, update
from sqlalchemy.exc import IntegrityError

from bot.store.conversations import ConversationStore
from bot.store.models import JobLock, utcnow

_log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def process_identity() -> str:
    """A holder name unique to this process: host, pid and a random suffix (pids are reused after restarts)."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def is_dead_local_process(holder: str) -> bool:
    """True when ``holder`` names a process on this host that no longer exists (a bot that crashed here)."""
    host, _, rest = holder.partition(":")
    pid_text = rest.split(":", 1)[0]
    if host != socket.gethostname()[:60] or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class DbLease:
    def __init__(
        self,
        store: ConversationStore,
        name: str,
        *,
        holder: str,
        ttl: timedelta,
        clock: Clock = utcnow,
    ) -> None:
        self._store = store
        self.name = name
        self.holder = holder
        self.ttl = ttl
        self._clock = clock

    async def take(self) -> bool:
        """``acquire`` off the event loop (one thread hop)."""
        return await asyncio.to_thread(self.acquire)

    async def give_up(self) -> None:
        """``release`` off the event loop (one thread hop)."""
        await asyncio.to_thread(self.release)

    def acquire(self) -> bool:
        """Take the lease, or renew it when this holder has it already. False when someone else holds it."""
        now = self._clock()
        expires = now + self.ttl
        with self._store.session() as session, session.begin():
            result = session.execute(
                update(JobLock)
                .where(
                    JobLock.name == self.name, or_(JobLock.holder == self.holder, JobLock.expires_at <= now)
                )
                .values(holder=self.holder, expires_at=expires)
            )
            if isinstance(result, CursorResult) and result.rowcount == 1:
                return True
            exists = session.scalar(select(JobLock.name).where(JobLock.name == self.name))
        if exists is not None:
            return False
        try:
            with self._store.session() as session, session.begin():
                session.add(JobLock(name=self.name, holder=self.holder, expires_at=expires))
        except IntegrityError:
            return False  # another process inserted it first
        _log.info("lease %s taken by %s", self.name, self.holder)
        return True

    def release(self) -> None:
        """Give the lease back now (only if this holder has it), so another process can take it at once."""
        with self._store.session() as session, session.begin():
            session.execute(delete(JobLock).where(JobLock.name == self.name, JobLock.holder == self.holder))

    def break_if_held_by(self, holder: str) -> None:
        """Free the lease now if ``holder`` still has it (that holder is known to be dead)."""
        with self._store.session() as session, session.begin():
            session.execute(delete(JobLock).where(JobLock.name == self.name, JobLock.holder == holder))
        _log.warning("lease %s taken from %s, which is gone", self.name, holder)

    def current_holder(self) -> str | None:
        """Who holds the lease now, or None when it is free (absent or expired)."""
        now = self._clock()
        with self._store.session() as session:
            row = session.get(JobLock, self.name)
            if row is None or row.expires_at <= now:
                return None
            return row.holder
