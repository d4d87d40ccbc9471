"""Small helpers shared by the learning-loop tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from bot.domain import Author, ConversationKey, Role
from bot.store.conversations import ConversationStore
from bot.store.models import Message


@dataclass
class FixedClock:
    """A clock the test moves by hand."""

    now: datetime = field(default_factory=lambda: datetime(2026, 11, 28, 3, 30, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def add_turn(
    store: ConversationStore,
    key: ConversationKey,
    role: Role,
    content: str,
    *,
    at: datetime,
    tokens: int = 10,
    author: Author | None = None,
) -> int:
    """Store a turn as if it had been said at ``at``."""
    stored = store.add_message(key, role, content, author=author, token_count=tokens)
    assert stored is not None
    with store.session() as session, session.begin():
        session.execute(update(Message).where(Message.id == stored.id).values(created_at=at))
    return stored.id
