"""Pruning with a fixed clock, on SQLite and PostgreSQL: exactly the turns outside the limits go."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from bot.domain import Author, ConversationKey, Role
from bot.learning.pruning import PruneLimits, TurnAge, protected_tail, prune_history, turns_outside_limits
from bot.store.conversations import ConversationStore
from bot.store.learning_records import LearningRecords
from bot.store.models import Message, PruneRecord
from tests.learning.helpers import FixedClock, add_turn

ALICE = Author(id="U1", display_name="Alice")
LIMITS = PruneLimits(
    max_age=timedelta(days=30), max_messages=12, keep_recent_messages=4, keep_recent_tokens=100
)


def _ids(store: ConversationStore, key: ConversationKey) -> list[int]:
    return [m.id for m in store.history(key)]


def test_prune_removes_exactly_the_turns_outside_the_limits(store: ConversationStore) -> None:
    clock = FixedClock()
    now = clock()
    old = ConversationKey("discord", "G1", "old-channel")  # 20 turns, 40 to 21 days old
    busy = ConversationKey("discord", "G1", "busy-channel")  # 20 recent turns: over the count limit
    quiet = ConversationKey("slack", "T1", "C-quiet")  # 6 turns, all 60+ days old: the protected tail stays
    fresh = ConversationKey("console", "", "console")  # 3 recent turns: untouched
    old_ids = [
        add_turn(
            store, old, Role.USER if i % 2 == 0 else Role.ASSISTANT, f"o{i}", at=now - timedelta(days=40 - i)
        )
        for i in range(20)
    ]
    busy_ids = [
        add_turn(store, busy, Role.USER, f"b{i}", at=now - timedelta(hours=20 - i), author=ALICE)
        for i in range(20)
    ]
    quiet_ids = [
        add_turn(store, quiet, Role.USER, f"q{i}", at=now - timedelta(days=70 - i)) for i in range(6)
    ]
    fresh_ids = [add_turn(store, fresh, Role.USER, f"f{i}", at=now - timedelta(minutes=5)) for i in range(3)]

    report = prune_history(store, LIMITS, now=now)

    # old: turns 0..9 are 40..31 days old (outside), 10 is exactly 30 days old (inside), 11..19 younger
    assert _ids(store, old) == old_ids[10:]
    # busy: only the newest 12 stay
    assert _ids(store, busy) == busy_ids[-12:]
    # quiet: everything is too old, but the newest 4 turns are what the next prompt needs
    assert _ids(store, quiet) == quiet_ids[-4:]
    assert _ids(store, fresh) == fresh_ids
    assert report.removed == {str(old): 10, str(busy): 8, str(quiet): 2}
    assert report.total == 20

    with store.session() as session:
        rows = {r.conversation_label: r.removed for r in session.scalars(select(PruneRecord))}
    assert rows == {str(old): 10, str(busy): 8, str(quiet): 2, "(all)": 20}
    summary = LearningRecords(store).last_prune()
    assert summary is not None
    assert (summary.removed, summary.conversations, summary.ran_at) == (20, 3, now)

    # a second run at the same instant removes nothing and says so
    again = prune_history(store, LIMITS, now=now)
    assert again.total == 0
    summary = LearningRecords(store).last_prune()
    assert summary is not None and summary.removed == 0


def test_prune_after_reset_keeps_nothing_from_before(store: ConversationStore) -> None:
    clock = FixedClock()
    key = ConversationKey("discord", "G1", "C1")
    for i in range(6):
        add_turn(store, key, Role.USER, f"before reset {i}", at=clock() - timedelta(days=60))
    assert store.reset(key, actor="discord:admin") == 6
    newer = [
        add_turn(store, key, Role.USER, f"after {i}", at=clock() - timedelta(days=45 - i)) for i in range(6)
    ]
    prune_history(store, LIMITS, now=clock())
    assert _ids(store, key) == newer[-4:]
    with store.session() as session:
        contents = list(session.scalars(select(Message.content)))
    assert not any(c.startswith("before reset") for c in contents)


def test_protected_tail_respects_the_token_cap() -> None:
    clock = FixedClock()
    old = clock() - timedelta(days=365)
    turns = [TurnAge(id=10 - i, created_at=old, token_count=t) for i, t in enumerate([60, 30, 20, 5, 5])]
    assert protected_tail(turns, LIMITS) == 2  # 60 + 30 fit in 100 tokens, + 20 would not
    assert turns_outside_limits(turns, LIMITS, clock()) == [8, 7, 6]
    huge = [TurnAge(id=1, created_at=old, token_count=5000)]
    assert protected_tail(huge, LIMITS) == 1  # the newest turn is always protected
    none = PruneLimits(
        max_age=timedelta(days=1), max_messages=10, keep_recent_messages=0, keep_recent_tokens=0
    )
    assert turns_outside_limits(huge, none, clock()) == [1]
