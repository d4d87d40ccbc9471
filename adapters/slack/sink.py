"""SlackReplySink: where one reply goes (a DM, or the thread of a mention).

``stream`` shows "thinking…" at once, the queue position while the engine makes the request wait, then the text as
it grows: natively streamed where Slack allows it (threads of AI-enabled apps), otherwise by editing a placeholder,
at most once per interval per message and slower when many replies stream in the same workspace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Protocol

from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.edits import EditedMessages
from adapters.slack.events import ReplyTarget, post_id
from adapters.slack.native import NativeRefused, NativeStream, NativeSupport
from adapters.slack.pacing import UpdatePacer
from adapters.slack.pieces import render_pieces
from bot.domain import QueuePosition, StreamEvent
from bot.texts import Lang, say

_log = logging.getLogger(__name__)


class _Writer(Protocol):
    @property
    def holds_no_reply(self) -> bool: ...

    @property
    def posted(self) -> tuple[str, ...]: ...

    async def open(self) -> None: ...

    def show_queue(self, position: int) -> None: ...

    def show_text(self, text: str) -> None: ...

    async def flush(self) -> None: ...

    async def finish(self, text: str) -> None: ...

    async def replace(self, text: str) -> None: ...

    async def abandon(self) -> None: ...


class SlackReplySink:
    def __init__(
        self,
        client: AsyncWebClient,
        target: ReplyTarget,
        *,
        pacer: UpdatePacer,
        native: NativeSupport,
        lang: Lang,
    ) -> None:
        self._client = client
        self._target = target
        self._pacer = pacer
        self._native = native
        self._lang = lang
        self._writer: _Writer | None = None
        self._replaced: list[_Writer] = []  # writers given up for edited messages (native streaming refused)
        self._text = ""
        self._budget = contextlib.ExitStack()  # edited replies share the workspace's chat.update budget

    @property
    def posted(self) -> tuple[str, ...]:
        """The ts of the messages that show the streamed reply."""
        writers = [*self._replaced, *([self._writer] if self._writer is not None else [])]
        return tuple(post_id(self._target.channel, ts) for writer in writers for ts in writer.posted)

    async def send(self, text: str) -> None:
        """Post a complete message (a notice, an error sentence), taking the place of an unused placeholder."""
        if self._writer is not None and self._writer.holds_no_reply:
            await self._writer.replace(text)
            return
        for piece in render_pieces(text):
            await self._client.chat_postMessage(
                channel=self._target.channel, thread_ts=self._target.thread_ts, text=piece
            )

    async def stream(self, events: AsyncIterator[StreamEvent]) -> None:
        with self._budget:
            await self._open()
            done = asyncio.Event()
            ticker = asyncio.create_task(self._tick(done))
            try:
                async for event in events:
                    if isinstance(event, QueuePosition):
                        self._current().show_queue(event.position)
                    else:
                        self._text += event
                        self._current().show_text(self._text)
            except BaseException:
                await self._stop(ticker, done)
                await self._finish_incomplete()
                raise
            await self._stop(ticker, done)
            await self._finish(self._text)
            _log.debug("streamed reply channel=%s chars=%d", self._target.channel, len(self._text))

    # steps

    async def _open(self) -> None:
        if self._native.applies(self._target):
            writer = NativeStream(self._client, self._target, lang=self._lang)
            try:
                await writer.open()
                self._writer = writer
                return
            except NativeRefused as exc:
                self._native.refuse(self._target.workspace, str(exc))
        await self._open_edits()

    async def _open_edits(self) -> None:
        if self._writer is not None:
            self._replaced.append(self._writer)
        writer = EditedMessages(self._client, self._target, lang=self._lang)
        writer.show_text(self._text)
        self._writer = writer
        self._budget.enter_context(self._pacer.streaming(self._target.workspace))
        await writer.open()

    def _current(self) -> _Writer:
        assert self._writer is not None, "stream() opens a writer first"
        return self._writer

    async def _tick(self, done: asyncio.Event) -> None:
        """Flush what changed, once per interval, until the stream ends."""
        while not done.is_set():
            try:
                await asyncio.wait_for(done.wait(), self._interval())
            except TimeoutError:
                await self._flush_or_fall_back()

    def _interval(self) -> float:
        if isinstance(self._writer, EditedMessages):
            return self._pacer.interval(self._target.workspace)
        return self._pacer.min_interval_s  # appendStream has a budget of its own, far larger

    async def _flush_or_fall_back(self) -> None:
        try:
            await self._current().flush()
        except NativeRefused as exc:
            self._native.refuse(self._target.workspace, str(exc))
            await self._open_edits()
        except Exception as exc:  # a failed edit: the next flush (or the final one) tries again
            _log.warning("update failed channel=%s: %s", self._target.channel, type(exc).__name__)

    async def _stop(self, ticker: asyncio.Task[None], done: asyncio.Event) -> None:
        done.set()
        with contextlib.suppress(Exception):
            await ticker

    async def _finish(self, text: str) -> None:
        try:
            await self._current().finish(text)
        except NativeRefused as exc:
            self._native.refuse(self._target.workspace, str(exc))
            await self._open_edits()
            await self._current().finish(text)

    async def _finish_incomplete(self) -> None:
        """End the shown reply with the "incomplete" marker; with no text yet, say so where "thinking…" was."""
        try:
            if self._text.strip():
                await self._finish(f"{self._text}\n\n_{say('chat.incomplete', self._lang)}_")
            else:
                await self._current().abandon()
        except Exception as exc:
            _log.warning(
                "could not mark reply incomplete channel=%s: %s", self._target.channel, type(exc).__name__
            )
