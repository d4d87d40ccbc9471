"""At start: replies a stop cut off are marked incomplete, and messages a restart left unanswered get an answer, or
one sentence saying the bot restarted.

A user turn stored in the last ``chat.recovery_window_min`` minutes that no reply answers (and that did not fail with
a sentence already) is taken once per conversation: its newest such turn is answered (``chat.recovery = "answer"``,
the older ones are in its prompt) or told that the bot restarted (``"notice"``). Each turn is claimed in the store
first (``record_event``), so two processes starting together never both answer it, and a second restart does not
repeat it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from itertools import groupby

from bot.chat import ChatService
from bot.domain import Author, ConversationKey, IncomingMessage
from bot.ports import ReplySink
from bot.settings import Settings
from bot.store.conversations import StoredMessage
from bot.store.models import utcnow
from bot.texts import language_of, say

_log = logging.getLogger(__name__)

SinkFor = Callable[[ConversationKey, StoredMessage], Awaitable[ReplySink | None]]


async def recover_unanswered(
    chat: ChatService, settings: Settings, sink_for: SinkFor, *, platforms: Sequence[str]
) -> int:
    """Answer or notify each conversation on ``platforms`` left with unanswered turns; returns how many.

    First, replies a stopped process left streaming are marked incomplete (they are shown as such from now on)."""
    await chat.db.settle_interrupted()
    window = settings.chat.recovery_window_min
    if window <= 0:
        return 0
    since = utcnow() - timedelta(minutes=window)
    found = await chat.db.unanswered_since(since)
    handled = 0
    for key, group in groupby(found, key=lambda pair: pair[0]):
        if key.platform not in platforms:
            continue
        turns = [turn for _, turn in group]
        if not await _claim(chat, key, turns):
            continue
        newest = turns[-1]
        sink = await sink_for(key, newest)
        if sink is None:
            _log.warning("no way to reach conversation=%s to recover message=%s", key, newest.id)
            continue
        try:
            await _recover(chat, settings, key, newest, sink)
        except Exception:  # a boundary: one conversation's failure does not stop the others
            _log.exception("recovery failed conversation=%s message=%s", key, newest.id)
            continue
        handled += 1
    if handled:
        _log.info(
            "recovered %d conversations left unanswered by a restart (%s)", handled, settings.chat.recovery
        )
    return handled


async def _claim(chat: ChatService, key: ConversationKey, turns: list[StoredMessage]) -> bool:
    claimed = [await chat.db.first_delivery(key.platform, f"recovered:{turn.id}") for turn in turns]
    return claimed[-1]


async def _recover(
    chat: ChatService, settings: Settings, key: ConversationKey, turn: StoredMessage, sink: ReplySink
) -> None:
    _log.info("recovering conversation=%s message=%s mode=%s", key, turn.id, settings.chat.recovery)
    if settings.chat.recovery == "notice":
        await sink.send(say("chat.restarted", language_of(turn.content)))
        return
    await chat.answer_stored(incoming_of(key, turn), turn, sink)


def incoming_of(key: ConversationKey, turn: StoredMessage) -> IncomingMessage:
    """The stored turn as the message it came as (enough to build its prompt and name it in logs)."""
    return IncomingMessage(
        platform=key.platform,
        conversation=key,
        message_id=turn.platform_message_id or f"stored:{turn.id}",
        author=Author(id=turn.author_id or "", display_name=turn.author_name or ""),
        text=turn.content,
        is_direct=is_direct(key),
    )


def is_direct(key: ConversationKey) -> bool:
    """A conversation with one person: the console, a Discord DM (no guild), a Slack DM (a "D…" channel)."""
    if key.platform == "console" or not key.workspace:
        return True
    return key.platform == "slack" and key.channel.startswith("D") and not key.thread
