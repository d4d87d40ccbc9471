"""The ``feedback`` rows: one 👍/👎 vote per person and bot reply (``bot.feedback`` decides what counts as a vote)."""

from __future__ import annotations

from sqlalchemy import CursorResult, delete, select

from bot.store.conversations import ConversationStore
from bot.store.models import Feedback, utcnow


class FeedbackVotes:
    def __init__(self, store: ConversationStore) -> None:
        self._store = store

    def cast(self, reply_id: int, user_id: str, value: int) -> bool:
        """``user_id``'s vote on the stored reply is ``value`` now (a new vote or a changed one). Returns whether a row
        changed (False when the same vote was already there)."""
        with self._store.session() as session, session.begin():
            row = session.scalar(
                select(Feedback).where(Feedback.message_id == reply_id, Feedback.user_id == user_id)
            )
            if row is None:
                session.add(Feedback(message_id=reply_id, user_id=user_id, value=value, created_at=utcnow()))
                return True
            if row.value == value:
                return False
            row.value, row.created_at = value, utcnow()
            return True

    def withdraw(self, reply_id: int, user_id: str, value: int) -> bool:
        """Remove ``user_id``'s vote ``value`` on the reply (a different vote stays). Returns whether one was there."""
        with self._store.session() as session, session.begin():
            result = session.execute(
                delete(Feedback).where(
                    Feedback.message_id == reply_id, Feedback.user_id == user_id, Feedback.value == value
                )
            )
            return bool(result.rowcount) if isinstance(result, CursorResult) else False
