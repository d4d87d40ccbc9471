"""👍 / 👎 reactions on the bot's replies, kept as ``feedback`` rows that the learning loop's dataset reads.

Adapters turn a platform's reaction event into a ``Reaction``; ``FeedbackBook.take`` records it when it is a thumb on
one of the bot's own replies (a platform message in ``reply_posts``) in a place the bot serves. One vote per person
and reply: a 👎 after a 👍 replaces it; removing a reaction removes the vote it cast (and nothing else).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from bot.permissions import AdminPolicy
from bot.settings import Settings
from bot.store.conversations import ConversationStore
from bot.store.feedback import FeedbackVotes

_log = logging.getLogger(__name__)

THUMBS_UP = 1
THUMBS_DOWN = -1


@dataclass(frozen=True)
class Reaction:
    """Someone added (or removed) a 👍 (+1) or 👎 (-1) on the platform message ``post_id``."""

    platform: str
    workspace: str  # guild / team id ("" in a DM)
    post_id: str  # the platform's id of the reacted-to message
    user_id: str
    value: int  # THUMBS_UP or THUMBS_DOWN
    added: bool = True  # False: the reaction was removed


class FeedbackBook:
    def __init__(self, settings: Settings, store: ConversationStore) -> None:
        self._store = store
        self._votes = FeedbackVotes(store)
        self._policy = AdminPolicy(settings)

    async def take(self, reaction: Reaction) -> bool:
        """Record (or withdraw) the vote. Returns whether a feedback row changed."""
        return await asyncio.to_thread(self._take, reaction)

    def _take(self, reaction: Reaction) -> bool:
        if not self._policy.serves(reaction.platform, reaction.workspace):
            _log.info(
                "reaction ignored: a place the bot does not serve platform=%s workspace=%s user=%s",
                reaction.platform,
                reaction.workspace,
                reaction.user_id,
            )
            return False
        found = self._store.reply_shown_in(reaction.platform, reaction.post_id)
        if found is None:
            return False  # not one of the bot's replies
        _, reply = found
        changed = self._vote(reply.id, reaction) if reaction.added else self._withdraw(reply.id, reaction)
        if changed:
            _log.info(
                "feedback %s platform=%s reply=%d user=%s value=%+d",
                "recorded" if reaction.added else "withdrawn",
                reaction.platform,
                reply.id,
                reaction.user_id,
                reaction.value,
            )
        return changed

    def _vote(self, reply_id: int, reaction: Reaction) -> bool:
        return self._votes.cast(reply_id, reaction.user_id, reaction.value)

    def _withdraw(self, reply_id: int, reaction: Reaction) -> bool:
        return self._votes.withdraw(reply_id, reaction.user_id, reaction.value)
