"""History pruning: each conversation kept within an age limit and a count limit.

The rule, per conversation, with its turns ordered newest first:

1. The *protected tail* is never removed: the newest turns, at most ``keep_recent_messages`` of them, as long as their
   stored token counts add up to at most ``keep_recent_tokens`` (the newest turn is always in it when
   ``keep_recent_messages`` ≥ 1). These are what the next prompt is built from, so a conversation that was quiet for
   longer than the age limit still has its last exchange when someone comes back.
2. Every other turn is removed when it is older than ``max_age_days`` at ``now`` (strictly: created before
   ``now - max_age_days``), or when it is not among the newest ``max_messages_per_conversation`` turns.

``/reset`` deletes a conversation's turns at once; pruning counts and ages only what is left, so nothing from before a
reset is ever kept or brought back. Each run writes one ``PruneRecord`` per conversation that lost turns (labelled
with the conversation key: ids only) and one summary row (label ``(all)``) with the total, also when it is zero.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from bot.domain import ConversationKey
from bot.settings import HistorySettings
from bot.store.conversations import ConversationStore
from bot.store.learning_data import (
    TurnAge,
    conversations_over_limits,
    prune_conversation,
    record_prune,
)
from bot.store.learning_records import PRUNE_TOTAL_LABEL

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneLimits:
    max_age: timedelta
    max_messages: int
    keep_recent_messages: int
    keep_recent_tokens: int

    @classmethod
    def from_settings(cls, history: HistorySettings) -> PruneLimits:
        return cls(
            max_age=timedelta(days=history.max_age_days),
            max_messages=history.max_messages_per_conversation,
            keep_recent_messages=history.keep_recent_messages,
            keep_recent_tokens=history.keep_recent_tokens,
        )


@dataclass(frozen=True)
class PruneReport:
    ran_at: datetime
    removed: dict[str, int]  # conversation key -> turns removed (only conversations that lost some)

    @property
    def total(self) -> int:
        return sum(self.removed.values())


def protected_tail(newest_first: Sequence[TurnAge], limits: PruneLimits) -> int:
    """How many of the newest turns the next prompt may still need (never pruned)."""
    kept = 0
    tokens = 0
    for turn in newest_first:
        if kept >= limits.keep_recent_messages:
            break
        if kept > 0 and tokens + turn.token_count > limits.keep_recent_tokens:
            break
        kept += 1
        tokens += turn.token_count
    return kept


def turns_outside_limits(newest_first: Sequence[TurnAge], limits: PruneLimits, now: datetime) -> list[int]:
    """Ids of the turns the rule above removes."""
    protected = protected_tail(newest_first, limits)
    cutoff = now - limits.max_age
    return [
        turn.id
        for index, turn in enumerate(newest_first)
        if index >= protected and (index >= limits.max_messages or turn.created_at < cutoff)
    ]


def prune_history(store: ConversationStore, limits: PruneLimits, *, now: datetime) -> PruneReport:
    """Apply the rule to every conversation that may be over a limit, and record what was removed."""
    removed: dict[str, int] = {}
    for conv_id, key in _conversations_over_limits(store, limits, now):
        count = _prune_conversation(store, conv_id, limits, now)
        if count:
            removed[str(key)] = count
            _record(store, now, conv_id, str(key), count)
    _record(store, now, None, PRUNE_TOTAL_LABEL, sum(removed.values()))
    report = PruneReport(ran_at=now, removed=removed)
    _log.info("pruned history: %d turns from %d conversations", report.total, len(removed))
    return report


def _conversations_over_limits(
    store: ConversationStore, limits: PruneLimits, now: datetime
) -> list[tuple[int, ConversationKey]]:
    """Conversations with a turn older than the age limit, or more turns than the count limit."""
    return conversations_over_limits(store, older_than=now - limits.max_age, max_messages=limits.max_messages)


def _prune_conversation(store: ConversationStore, conv_id: int, limits: PruneLimits, now: datetime) -> int:
    return prune_conversation(
        store, conv_id, lambda newest_first: turns_outside_limits(newest_first, limits, now)
    )


def _record(store: ConversationStore, now: datetime, conv_id: int | None, label: str, removed: int) -> None:
    record_prune(store, now, conv_id, label, removed)
