"""Database tables (SQLAlchemy 2.x). The same models run on SQLite and PostgreSQL; migrations/ creates them."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from bot.domain import ConversationKey


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both databases (SQLite returns naive values otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store: use timezone-aware UTC datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


class Conversation(Base):
    """One conversation: a channel, a thread, a DM or a console session."""

    __tablename__ = "conversations"
    __table_args__ = (
        UniqueConstraint("platform", "workspace", "channel", "thread", name="uq_conversation_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    workspace: Mapped[str] = mapped_column(String(64), default="")
    channel: Mapped[str] = mapped_column(String(128))
    thread: Mapped[str] = mapped_column(String(128), default="")
    system_prompt: Mapped[str | None] = mapped_column(Text, default=None)  # per-channel override
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    messages: Mapped[list[Message]] = relationship(back_populates="conversation", passive_deletes=True)

    @property
    def key(self) -> ConversationKey:
        return ConversationKey(self.platform, self.workspace, self.channel, self.thread)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("platform", "platform_message_id", name="uq_platform_message"),
        Index("ix_messages_conversation_id_id", "conversation_id", "id"),
        Index("ix_messages_created_at", "created_at"),
        Index("ix_messages_reply_to_id", "reply_to_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))  # bot.domain.Role
    author_id: Mapped[str | None] = mapped_column(String(64), default=None)
    author_name: Mapped[str | None] = mapped_column(String(128), default=None)
    content: Mapped[str] = mapped_column(Text)
    token_count: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16))  # bot.domain.MessageStatus
    platform: Mapped[str] = mapped_column(String(32))
    platform_message_id: Mapped[str | None] = mapped_column(String(128), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # A bot reply: the id of the user turn it answers (None for user turns). A plain column, not a foreign key (see
    # migration 0002): once that turn is deleted the id matches nothing, and ids are never handed out again while a
    # reply, always stored after its turn, still holds a larger one.
    reply_to_id: Mapped[int | None] = mapped_column(Integer, default=None)
    # A user turn that replies to earlier messages: those messages as the model saw them (bot.quoting).
    quoted: Mapped[str | None] = mapped_column(Text, default=None)

    conversation: Mapped[Conversation] = relationship(back_populates="messages")


class ProcessedEvent(Base):
    """Platform deliveries already taken (Slack event_id, ...): recorded before any work, unique across processes."""

    __tablename__ = "processed_events"
    __table_args__ = (UniqueConstraint("platform", "event_id", name="uq_processed_event"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    event_id: Mapped[str] = mapped_column(String(255))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class Feedback(Base):
    """👍 / 👎 on a bot reply (value +1 / -1), one per user and message."""

    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("message_id", "user_id", name="uq_feedback_user"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(String(64))
    value: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ReplyPost(Base):
    """A platform message that shows (part of) a bot reply: a reaction on it is feedback on that reply."""

    __tablename__ = "reply_posts"
    __table_args__ = (UniqueConstraint("platform", "platform_message_id", name="uq_reply_post"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    platform: Mapped[str] = mapped_column(String(32))
    platform_message_id: Mapped[str] = mapped_column(String(128))


class OptOut(Base):
    """Users whose turns are never used for training."""

    __tablename__ = "opt_outs"

    platform: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class FinetuneRun(Base):
    __tablename__ = "finetune_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16))  # queued/running/succeeded/rejected/failed/cancelled
    trigger: Mapped[str] = mapped_column(String(16))  # schedule / manual
    started_by: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    progress: Mapped[dict[str, object] | None] = mapped_column(JSON, default=None)  # step, total, loss, eta_s
    train_examples: Mapped[int] = mapped_column(Integer, default=0)
    eval_examples: Mapped[int] = mapped_column(Integer, default=0)
    eval_loss: Mapped[float | None] = mapped_column(Float, default=None)
    baseline_loss: Mapped[float | None] = mapped_column(Float, default=None)
    lora_path: Mapped[str | None] = mapped_column(Text, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    # finetune.gpu_sharing of its training: pause / separate / shared (None: it never trained)
    gpu_sharing: Mapped[str | None] = mapped_column(String(16), default=None)
    gate: Mapped[dict[str, object] | None] = mapped_column(JSON, default=None)  # bot.learning.gate.GateReport
    # the learning scope (bot.learning.tenants): "shared", or the team with its own version ("discord:GUILD", "slack:T…")
    tenant: Mapped[str] = mapped_column(String(64), default="shared", server_default="shared", index=True)


class LoraVersion(Base):
    """A trained LoRA. At most one is active per tenant (learning scope); rollback activates the one promoted before it.

    ``promoted_at`` is None for a candidate: a version kept without being promoted (the quality gate refused it, or
    a trial was going), which ``/finetune try`` serves in some channels and ``/finetune promote`` makes the default.
    """

    __tablename__ = "lora_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    path: Mapped[str] = mapped_column(Text)
    run_id: Mapped[int | None] = mapped_column(
        ForeignKey("finetune_runs.id", ondelete="SET NULL"), default=None
    )
    eval_loss: Mapped[float | None] = mapped_column(Float, default=None)
    is_active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    promoted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # promoted by the gate and never rolled back: only then are its held-out examples a check for the next run
    gate_passed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # the learning scope (bot.learning.tenants): "shared", or the team with its own version ("discord:GUILD", "slack:T…")
    tenant: Mapped[str] = mapped_column(String(64), default="shared", server_default="shared", index=True)


class LoraTrial(Base):
    """``/finetune try``: a version served only in some channels (``scopes``: conversation keys or prefixes) while
    every other conversation keeps the active one. At most one trial per tenant is open (``ended_at`` is None)."""

    __tablename__ = "lora_trials"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("lora_versions.id", ondelete="CASCADE"))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    started_by: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    end_reason: Mapped[str | None] = mapped_column(
        String(32), default=None
    )  # promoted / rollback / replaced / …
    # the learning scope (bot.learning.tenants): "shared", or the team with its own version ("discord:GUILD", "slack:T…")
    tenant: Mapped[str] = mapped_column(String(64), default="shared", server_default="shared", index=True)


class AuditEvent(Base):
    """Who did what: resets, fine-tune runs, promotions, rollbacks, opt-outs. Ids only, never message text."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    action: Mapped[str] = mapped_column(String(32), index=True)
    actor: Mapped[str] = mapped_column(String(128))
    detail: Mapped[dict[str, object] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # the learning scope a fine-tune event belongs to (None: not about a version, e.g. an opt-out, which is everyone's)
    tenant: Mapped[str | None] = mapped_column(String(64), default=None, index=True)


class PruneRecord(Base):
    __tablename__ = "prune_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ran_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    conversation_id: Mapped[int | None] = mapped_column(Integer, default=None)  # the row may be gone by now
    conversation_label: Mapped[str] = mapped_column(String(255))
    removed: Mapped[int] = mapped_column(Integer)


class JobLock(Base):
    """A lease so that exactly one process runs the scheduler's jobs."""

    __tablename__ = "job_locks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
