"""The stored copy of a reply while it streams, so a cancel, a shutdown or a kill loses at most a second of it.

The assistant turn is stored with the first text, marked streaming, and its text is saved again as it grows (at most
once per ``interval_s``, the platforms' edit pace: what people saw is stored). At the end it is marked complete, or
incomplete with everything said so far, and its tokens are counted, once (a turn stored without a count, 0, is
counted by the prompt that needs it). A process killed mid-reply leaves the last saved text, marked streaming, and
the next start marks it incomplete (``ConversationStore.settle_interrupted``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from bot.domain import ChatTurn, ConversationKey, MessageStatus, Role
from bot.ports import ChatTokenizer
from bot.prompt import turn_cost
from bot.store.async_store import AsyncStore

_log = logging.getLogger(__name__)


class StreamingReply:
    def __init__(
        self,
        store: AsyncStore,
        key: ConversationKey,
        *,
        answers: int,
        tokenizer: ChatTokenizer,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._key = key
        self._answers = answers  # the user turn's id
        self._tokenizer = tokenizer
        self._interval_s = interval_s
        self._clock = clock
        self._id: int | None = None
        self._saved = ""
        self._saved_at = 0.0
        self.token_count = 0  # the final text's tokens (``finish``)

    @property
    def message_id(self) -> int | None:
        """The stored turn's id, once there is one."""
        return self._id

    async def grow(self, text: str) -> None:
        """The reply so far: stored at once the first time, then at most once per interval."""
        if not text or text == self._saved:
            return
        if self._id is not None and self._clock() - self._saved_at < self._interval_s:
            return
        await self._save(text, MessageStatus.STREAMING)

    async def finish(self, text: str, status: MessageStatus) -> None:
        """The final text and status (an incomplete reply with no text at all is not stored)."""
        if self._id is None and not text:
            return
        self.token_count = turn_cost(ChatTurn(Role.ASSISTANT, text), self._tokenizer)
        await self._save(text, status, self.token_count)

    async def _save(self, text: str, status: MessageStatus, tokens: int | None = None) -> None:
        if self._id is None:
            stored = await self._store.add_message(
                self._key,
                Role.ASSISTANT,
                text,
                token_count=tokens or 0,
                status=status,
                reply_to=self._answers,
            )
            assert stored is not None, "a reply has no platform id, so it is never a duplicate"
            self._id = stored.id
        else:
            await self._store.update_message(self._id, content=text, status=status, token_count=tokens)
        self._saved, self._saved_at = text, self._clock()
