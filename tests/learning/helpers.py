"""Small helpers shared by the learning-loop tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import update

from bot.app import trainer_launch
from bot.domain import Author, ConversationKey, Role
from bot.store.conversations import ConversationStore
from bot.store.learning_records import LearningRecords, RunOutcomeFields, RunStatus, VersionInfo
from bot.store.models import Message

TRAINER = trainer_launch()  # the composition root's: the declared trainer entry point, this interpreter


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


def seed_versions(store: ConversationStore, lora_dir: Path) -> tuple[VersionInfo, VersionInfo]:
    """v1 promoted (the active version) and v2 a candidate (trained, not promoted), each with a folder, as two runs
    would have left them."""
    records = LearningRecords(store)
    folders = [lora_dir / "versions" / name for name in ("v1", "v2")]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    first = records.create_run(trigger="manual", started_by="test", owner="elsewhere")
    records.finish_run(first.id, RunStatus.SUCCEEDED, RunOutcomeFields(eval_loss=0.5, baseline_loss=2.0))
    v1 = records.promote(name="v1", path=str(folders[0]), run_id=first.id, eval_loss=0.5, actor="test")
    second = records.create_run(trigger="schedule", started_by="scheduler", owner="elsewhere")
    records.finish_run(second.id, RunStatus.REJECTED, RunOutcomeFields(eval_loss=0.6, error="gate"))
    v2, _ = records.add_candidate(
        name="v2", path=str(folders[1]), run_id=second.id, eval_loss=0.6, actor="scheduler"
    )
    return v1, v2
