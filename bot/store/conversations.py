"""The conversation store: each channel's turns, with who said them and whether the reply finished.

Synchronous and thread-safe (one short transaction per call); async callers await ``bot.store.async_store.AsyncStore``
(one thread hop per operation).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, CursorResult, Engine, Select, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from bot.domain import Author, ConversationKey, MessageStatus, Role
from bot.store.models import AuditEvent, Conversation, Message, ProcessedEvent, ReplyPost, utcnow

_log = logging.getLogger(__name__)

# What no database (PostgreSQL refuses NUL in text; UTF-8 has no lone surrogates) and no tokenizer takes.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def storable(text: str) -> str:
    """``text`` with NUL and lone surrogates replaced by U+FFFD (the rest of the text is kept as it is)."""
    return _UNSTORABLE.sub(REPLACEMENT, text)


@dataclass(frozen=True)
class StoredMessage:
    id: int
    conversation_id: int
    role: Role
    author_id: str | None
    author_name: str | None
    content: str
    token_count: int
    status: MessageStatus
    platform_message_id: str | None
    created_at: datetime
    reply_to_id: int | None = None  # a bot reply: the user turn it answers
    quoted: str | None = None  # a user turn: the earlier messages it replies to, as the model saw them

    @classmethod
    def of(cls, row: Message) -> StoredMessage:
        return cls(
            id=row.id,
            conversation_id=row.conversation_id,
            role=Role(row.role),
            author_id=row.author_id,
            author_name=row.author_name,
            content=row.content,
            token_count=row.token_count,
            status=MessageStatus(row.status),
            platform_message_id=row.platform_message_id,
            created_at=row.created_at,
            reply_to_id=row.reply_to_id,
            quoted=row.quoted,
        )


class ConversationStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    # conversations

    def conversation_id(self, key: ConversationKey) -> int:
        """The conversation's id, created on first use (safe when two processes create it at once)."""
        with self._sessions.begin() as session:
            found = session.scalar(_key_query(key))
            if found is not None:
                return found
        try:
            with self._sessions.begin() as session:
                conv = Conversation(
                    platform=key.platform, workspace=key.workspace, channel=key.channel, thread=key.thread
                )
                session.add(conv)
                session.flush()
                return conv.id
        except IntegrityError:
            with self._sessions.begin() as session:
                return session.scalars(_key_query(key)).one()

    def system_prompt(self, key: ConversationKey) -> str | None:
        with self._sessions.begin() as session:
            return session.scalar(select(Conversation.system_prompt).where(*_key_filter(key)))

    def channel_system_prompt(self, key: ConversationKey) -> str | None:
        """The system prompt set for this conversation (``/persona``), else for its channel (a Slack thread)."""
        own = self.system_prompt(key)
        if own is not None or not key.thread:
            return own
        return self.system_prompt(ConversationKey(key.platform, key.workspace, key.channel))

    def set_system_prompt(self, key: ConversationKey, prompt: str | None) -> None:
        conv_id = self.conversation_id(key)
        with self._sessions.begin() as session:
            session.execute(
                update(Conversation).where(Conversation.id == conv_id).values(system_prompt=prompt)
            )

    # messages

    def add_message(
        self,
        key: ConversationKey,
        role: Role,
        content: str,
        *,
        author: Author | None = None,
        token_count: int = 0,
        status: MessageStatus = MessageStatus.COMPLETE,
        platform_message_id: str | None = None,
        reply_to: int | None = None,
        quoted: str | None = None,
    ) -> StoredMessage | None:
        """Append a turn. Returns None when ``platform_message_id`` was already stored (a duplicate delivery).

        ``reply_to``: for a bot reply, the id of the user turn it answers (so /forget-me can delete it with the turn).
        ``quoted``: for a user turn, the earlier messages it replies to (``bot.quoting``).
        """
        conv_id = self.conversation_id(key)
        row = Message(
            conversation_id=conv_id,
            role=role.value,
            author_id=author.id if author else None,
            author_name=storable(author.display_name) if author else None,
            content=storable(content),
            token_count=token_count,
            status=status.value,
            platform=key.platform,
            platform_message_id=platform_message_id,
            created_at=utcnow(),
            reply_to_id=reply_to,
            quoted=storable(quoted) if quoted else quoted,
        )
        try:
            with self._sessions.begin() as session:
                session.add(row)
                session.flush()
                session.execute(
                    update(Conversation).where(Conversation.id == conv_id).values(updated_at=row.created_at)
                )
                return StoredMessage.of(row)
        except IntegrityError:
            if platform_message_id is None:
                raise
            _log.info("duplicate delivery platform=%s message=%s ignored", key.platform, platform_message_id)
            return None

    def update_message(
        self,
        message_id: int,
        *,
        content: str | None = None,
        status: MessageStatus | None = None,
        token_count: int | None = None,
        platform_message_id: str | None = None,
    ) -> None:
        values: dict[str, object] = {}
        if content is not None:
            values["content"] = storable(content)
        if status is not None:
            values["status"] = status.value
        if token_count is not None:
            values["token_count"] = token_count
        if platform_message_id is not None:
            values["platform_message_id"] = platform_message_id
        if values:
            with self._sessions.begin() as session:
                session.execute(update(Message).where(Message.id == message_id).values(**values))

    def link_posts(self, message_id: int, platform: str, post_ids: Sequence[str]) -> None:
        """Record the platform messages that show the stored reply ``message_id`` (reactions on them count)."""
        with self._sessions.begin() as session:
            known = set(
                session.scalars(
                    select(ReplyPost.platform_message_id).where(
                        ReplyPost.platform == platform, ReplyPost.platform_message_id.in_(post_ids)
                    )
                )
            )
            for post_id in dict.fromkeys(post_ids):
                if post_id not in known:
                    session.add(
                        ReplyPost(message_id=message_id, platform=platform, platform_message_id=post_id)
                    )

    def reply_shown_in(self, platform: str, post_id: str) -> tuple[ConversationKey, StoredMessage] | None:
        """The stored bot reply that the platform message ``post_id`` shows, with its conversation; None if none."""
        with self._sessions.begin() as session:
            row = session.execute(
                select(Message, Conversation)
                .join(Conversation)
                .join(ReplyPost, ReplyPost.message_id == Message.id)
                .where(ReplyPost.platform == platform, ReplyPost.platform_message_id == post_id)
            ).first()
            if row is None:
                return None
            message, conversation = row
            return conversation.key, StoredMessage.of(message)

    def history(self, key: ConversationKey, *, limit: int = 500) -> list[StoredMessage]:
        """The conversation's usable turns, oldest first (failed turns and replies still streaming are left out)."""
        with self._sessions.begin() as session:
            rows = session.scalars(
                select(Message)
                .join(Conversation)
                .where(*_key_filter(key), Message.status.not_in(_NOT_IN_HISTORY))
                .order_by(Message.id.desc())
                .limit(limit)
            ).all()
            return [StoredMessage.of(r) for r in reversed(rows)]

    def settle_interrupted(self) -> int:
        """Replies a stopped process left streaming become incomplete (at start). Returns how many."""
        with self._sessions.begin() as session:
            result = session.execute(
                update(Message)
                .where(Message.status == MessageStatus.STREAMING.value)
                .values(status=MessageStatus.INCOMPLETE.value)
            )
            settled = result.rowcount if isinstance(result, CursorResult) else 0
        if settled:
            _log.info("%d replies cut off by a stop were marked incomplete", settled)
        return settled

    def unanswered_since(self, since: datetime) -> list[tuple[ConversationKey, StoredMessage]]:
        """User turns stored at or after ``since`` that no reply answers (nor marked failed), oldest first."""
        answered = select(Message.reply_to_id).where(Message.reply_to_id.is_not(None))
        with self._sessions.begin() as session:
            rows = session.execute(
                select(Message, Conversation)
                .join(Conversation)
                .where(
                    Message.role == Role.USER.value,
                    Message.status != MessageStatus.FAILED.value,
                    Message.created_at >= since,
                    Message.id.not_in(answered),
                )
                .order_by(Message.id)
            ).all()
            return [(conversation.key, StoredMessage.of(message)) for message, conversation in rows]

    def count_messages(self, key: ConversationKey) -> int:
        with self._sessions.begin() as session:
            return (
                session.scalar(select(func.count(Message.id)).join(Conversation).where(*_key_filter(key)))
                or 0
            )

    def find_message(self, platform: str, platform_message_id: str) -> StoredMessage | None:
        with self._sessions.begin() as session:
            row = session.scalar(
                select(Message).where(
                    Message.platform == platform, Message.platform_message_id == platform_message_id
                )
            )
            return StoredMessage.of(row) if row else None

    def latest_thread_with(self, key: ConversationKey, author_id: str) -> ConversationKey | None:
        """The thread of ``key``'s channel where ``author_id`` wrote last (by their newest stored turn), if any."""
        with self._sessions.begin() as session:
            conversation = session.scalar(
                select(Conversation)
                .join(Message)
                .where(
                    Conversation.platform == key.platform,
                    Conversation.workspace == key.workspace,
                    Conversation.channel == key.channel,
                    Conversation.thread != "",
                    Message.author_id == author_id,
                    Message.role == Role.USER.value,
                )
                .order_by(Message.id.desc())
                .limit(1)
            )
            return conversation.key if conversation is not None else None

    def first_message(self, key: ConversationKey) -> StoredMessage | None:
        """The conversation's oldest stored turn."""
        with self._sessions.begin() as session:
            row = session.scalar(
                select(Message).join(Conversation).where(*_key_filter(key)).order_by(Message.id).limit(1)
            )
            return StoredMessage.of(row) if row is not None else None

    def reset(self, key: ConversationKey, *, actor: str) -> int:
        """Forget the conversation's turns (the conversation row and its settings stay). Returns how many."""
        with self._sessions.begin() as session:
            conv_id = session.scalar(_key_query(key))
            if conv_id is None:
                return 0
            result = session.execute(delete(Message).where(Message.conversation_id == conv_id))
            removed = result.rowcount if isinstance(result, CursorResult) else 0
            session.add(
                AuditEvent(action="reset", actor=actor, detail={"conversation": str(key), "removed": removed})
            )
        _log.info("reset conversation=%s removed=%d by=%s", key, removed, actor)
        return removed

    # deliveries

    def record_event(self, platform: str, event_id: str) -> bool:
        """Record a platform delivery id. True the first time, False for a repeat (across processes too)."""
        try:
            with self._sessions.begin() as session:
                session.add(ProcessedEvent(platform=platform, event_id=event_id, received_at=utcnow()))
            return True
        except IntegrityError:
            return False

    def ping(self) -> None:
        """Return when the database answers a query (the readiness check); raise StoreError otherwise."""
        with self.engine.connect() as connection:
            connection.execute(select(1))

    def dispose(self) -> None:
        """Close the pooled connections (at shutdown)."""
        self.engine.dispose()

    def session(self) -> Session:
        """A session for modules that own their own tables (learning loop, scheduler lock)."""
        return self._sessions()


_NOT_IN_HISTORY = (MessageStatus.FAILED.value, MessageStatus.STREAMING.value)


def _key_filter(key: ConversationKey) -> tuple[ColumnElement[bool], ...]:
    return (
        Conversation.platform == key.platform,
        Conversation.workspace == key.workspace,
        Conversation.channel == key.channel,
        Conversation.thread == key.thread,
    )


def _key_query(key: ConversationKey) -> Select[int]:
    return select(Conversation.id).where(*_key_filter(key))
