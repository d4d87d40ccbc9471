"""The conversation store's async API: each method is one whole operation, run in one hop to a worker thread.

``ConversationStore`` is synchronous (one short transaction per call, safe from any thread); the event loop must not
wait on the database, so async code awaits this facade instead of wrapping each call in ``asyncio.to_thread``.
An operation made of several store calls (building a prompt from the history) runs through ``run`` as one hop.
It is also what the platform adapters get, through the narrow ports they use (``bot.ports.DeliveryLog``,
``bot.ports.ConversationPresence``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TypeVar

from bot.domain import Author, ConversationKey, MessageStatus, Role
from bot.store.conversations import ConversationStore, StoredMessage

T = TypeVar("T")


class AsyncStore:
    def __init__(self, store: ConversationStore) -> None:
        self.sync = store  # for code that already runs in a worker thread

    async def run(self, operation: Callable[[ConversationStore], T]) -> T:
        """One operation of several store calls, in one thread hop."""
        return await asyncio.to_thread(operation, self.sync)

    async def ping(self) -> None:
        """Return when the database answers (the readiness check); raise StoreError otherwise."""
        await asyncio.to_thread(self.sync.ping)

    # conversations

    async def history(self, key: ConversationKey, *, limit: int = 500) -> list[StoredMessage]:
        return await asyncio.to_thread(self.sync.history, key, limit=limit)

    async def has_turns(self, key: ConversationKey) -> bool:
        """Whether the conversation has stored turns (the bot takes part in it)."""
        return await asyncio.to_thread(self.sync.count_messages, key) > 0

    async def system_prompt(self, key: ConversationKey) -> str | None:
        return await asyncio.to_thread(self.sync.system_prompt, key)

    async def set_system_prompt(self, key: ConversationKey, prompt: str | None) -> None:
        await asyncio.to_thread(self.sync.set_system_prompt, key, prompt)

    async def reset(self, key: ConversationKey, *, actor: str) -> int:
        return await asyncio.to_thread(self.sync.reset, key, actor=actor)

    # messages

    async def add_message(
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
        def add() -> StoredMessage | None:
            return self.sync.add_message(
                key,
                role,
                content,
                author=author,
                token_count=token_count,
                status=status,
                platform_message_id=platform_message_id,
                reply_to=reply_to,
                quoted=quoted,
            )

        return await asyncio.to_thread(add)

    async def update_message(
        self,
        message_id: int,
        *,
        content: str | None = None,
        status: MessageStatus | None = None,
        token_count: int | None = None,
        platform_message_id: str | None = None,
    ) -> None:
        def update() -> None:
            self.sync.update_message(
                message_id,
                content=content,
                status=status,
                token_count=token_count,
                platform_message_id=platform_message_id,
            )

        await asyncio.to_thread(update)

    async def link_posts(self, message_id: int, platform: str, post_ids: Sequence[str]) -> None:
        await asyncio.to_thread(self.sync.link_posts, message_id, platform, post_ids)

    async def settle_interrupted(self) -> int:
        return await asyncio.to_thread(self.sync.settle_interrupted)

    async def unanswered_since(self, since: datetime) -> list[tuple[ConversationKey, StoredMessage]]:
        return await asyncio.to_thread(self.sync.unanswered_since, since)

    # deliveries (bot.ports.DeliveryLog)

    async def first_delivery(self, platform: str, delivery_id: str) -> bool:
        """Record a platform delivery id: True the first time, False for a repeat (across processes too)."""
        return await asyncio.to_thread(self.sync.record_event, platform, delivery_id)
