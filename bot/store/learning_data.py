"""The learning loop's reads and deletes over the conversation tables: the turns a dataset is built from (with their
feedback score), and history pruning. The rules live in ``bot.learning.dataset`` and ``bot.learning.pruning``;
this module only runs their queries."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, or_, select

from bot.domain import ConversationKey
from bot.store.conversations import ConversationStore
from bot.store.models import Conversation, Feedback, Message, PruneRecord

_DELETE_CHUNK = 500


@dataclass(frozen=True)
class ScoredTurn:
    """One stored turn as a dataset reads it: the sum of the 👍/👎 votes on it in ``score``."""

    role: str
    content: str
    author_id: str | None
    status: str
    score: int


@dataclass(frozen=True)
class TurnAge:
    """What pruning needs to know about one stored turn."""

    id: int
    created_at: datetime
    token_count: int


def conversations(store: ConversationStore) -> list[tuple[int, ConversationKey, str | None]]:
    """Every conversation: its id, key and own system prompt, in creation order."""
    with store.session() as session:
        rows = session.scalars(select(Conversation).order_by(Conversation.id)).all()
        return [(c.id, c.key, c.system_prompt) for c in rows]


def scored_turns(store: ConversationStore, conv_id: int) -> list[ScoredTurn]:
    """The conversation's turns in order, each with its feedback score (0 without votes)."""
    scores = (
        select(Feedback.message_id, func.sum(Feedback.value).label("score"))
        .group_by(Feedback.message_id)
        .subquery()
    )
    with store.session() as session:
        rows = session.execute(
            select(Message.role, Message.content, Message.author_id, Message.status, scores.c.score)
            .outerjoin(scores, scores.c.message_id == Message.id)
            .where(Message.conversation_id == conv_id)
            .order_by(Message.id)
        ).all()
    return [
        ScoredTurn(role, content, author_id, status, int(score or 0))
        for role, content, author_id, status, score in rows
    ]


def conversations_over_limits(
    store: ConversationStore, *, older_than: datetime, max_messages: int
) -> list[tuple[int, ConversationKey]]:
    """Conversations with a turn older than ``older_than``, or more than ``max_messages`` turns."""
    per_conversation = (
        select(Message.conversation_id)
        .group_by(Message.conversation_id)
        .having(or_(func.min(Message.created_at) < older_than, func.count(Message.id) > max_messages))
    )
    with store.session() as session:
        rows = session.scalars(
            select(Conversation).where(Conversation.id.in_(per_conversation)).order_by(Conversation.id)
        ).all()
        return [(c.id, c.key) for c in rows]


def prune_conversation(
    store: ConversationStore, conv_id: int, doomed: Callable[[Sequence[TurnAge]], list[int]]
) -> int:
    """Delete the turns ``doomed`` picks from the conversation's turns (newest first), in one transaction.
    Returns how many."""
    with store.session() as session, session.begin():
        turns = [
            TurnAge(id=row[0], created_at=row[1], token_count=row[2] or 0)
            for row in session.execute(
                select(Message.id, Message.created_at, Message.token_count)
                .where(Message.conversation_id == conv_id)
                .order_by(Message.id.desc())
            )
        ]
        ids = doomed(turns)
        for start in range(0, len(ids), _DELETE_CHUNK):
            session.execute(delete(Message).where(Message.id.in_(ids[start : start + _DELETE_CHUNK])))
    return len(ids)


def record_prune(
    store: ConversationStore, ran_at: datetime, conv_id: int | None, label: str, removed: int
) -> None:
    with store.session() as session, session.begin():
        session.add(
            PruneRecord(
                ran_at=ran_at, conversation_id=conv_id, conversation_label=label[:255], removed=removed
            )
        )
