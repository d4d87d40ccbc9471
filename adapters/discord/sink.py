"""One reply in a Discord channel: typing, queue position, streamed edits, rollover at 2000 characters.

The typing indicator runs until the first message is posted. While the engine makes the request wait, a placeholder
shows the queue position; it becomes the reply's first message. The text then grows in that message, edited at most
once per ``edit_interval_s`` (the budget is the channel's, see ``ChannelPacer``), with a marker showing it is still
being written. Before a message would pass 2000 characters it is finished and the text continues in a new one,
split where ``bot.textsplit`` says. At the end the marker goes; if the reply stopped early it says so.

Failures: discord.py sleeps out a 429 and retries by itself. Any other failed write is retried once; an edit that
still fails is replaced by a new message; a post that still fails marks the channel unreachable for this reply (logged
with ids), the rest of the reply is consumed anyway (the core stores it) and posted once more at the end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
import discord

from adapters.discord.pacing import ChannelPacer
from bot.domain import QueuePosition, StreamEvent
from bot.texts import Lang, say
from bot.textsplit import StreamSplitter, split_message, utf16_size

_log = logging.getLogger(__name__)

MESSAGE_LIMIT = 2000
STREAMING_MARKER = "⚪"  # Discord-only: shown after the text while the reply is still being written
QUEUED_PREFIX = "⏳ "
TYPING_EVERY_S = 5.0  # Discord shows "typing" for about 10 s per call
WRITE_ERRORS = (discord.HTTPException, aiohttp.ClientError, OSError, asyncio.TimeoutError)


class DeliveryFailed(Exception):
    """Discord refused a write twice (an outage, or the bot lost its permissions in the channel)."""


class _End:
    pass


_END = _End()


async def _next_event(events: AsyncIterator[StreamEvent]) -> StreamEvent | _End:
    try:
        return await anext(events)
    except StopAsyncIteration:
        return _END


class DiscordReplySink:
    """A ReplySink for one incoming message: ``send`` posts short notices, ``stream`` shows the reply as it grows."""

    def __init__(
        self,
        channel: discord.abc.Messageable,
        *,
        channel_id: int,
        pacer: ChannelPacer,
        lang: Lang,
        reply_to: discord.Message | discord.PartialMessage | None = None,
        limit: int = MESSAGE_LIMIT,
    ) -> None:
        self._channel = channel
        self._channel_id = channel_id
        self._pacer = pacer
        self._lang = lang
        self._reply_to = reply_to
        self._limit = limit
        self._incomplete_note = "\n" + say("chat.incomplete", lang)
        reserve = max(utf16_size("\n" + STREAMING_MARKER), utf16_size(self._incomplete_note))
        self._splitter = StreamSplitter(limit - reserve, size=utf16_size)
        self._finished: list[str] = []  # pieces complete but not yet shown in their final form
        self._current: discord.Message | None = None  # the message being edited
        self._shown = ""  # what ``_current`` shows now
        self._posted = 0
        self._reply_posts: list[str] = []  # ids of the messages that show the streamed reply
        self._streaming = False
        self._edits = 0
        self._queue_position: int | None = None
        self._dirty = False
        self._broken = False  # a post failed twice: stop writing until the end
        self._text: list[str] = []
        self._typing: asyncio.Task[None] | None = None

    @property
    def ids(self) -> str:
        """For logs: the channel and the message answered."""
        return f"channel={self._channel_id} message={self._reply_to.id if self._reply_to else '-'}"

    @property
    def posted(self) -> tuple[str, ...]:
        return tuple(self._reply_posts)

    async def send(self, text: str) -> None:
        for piece in split_message(text, self._limit, size=utf16_size):
            if not piece.strip():
                continue
            try:
                await self._post(piece)
            except DeliveryFailed:
                return

    async def stream(self, events: AsyncIterator[StreamEvent]) -> None:
        self._streaming = True
        self._typing = asyncio.create_task(self._keep_typing())
        pending: asyncio.Future[StreamEvent | _End] | None = None
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(_next_event(events))
                timeout = self._pacer.ready_in(self._channel_id) if self._dirty else None
                if timeout == 0:
                    # the channel may be written to: show what has come while the next event is on its way
                    await self._flush()
                    continue
                done, _ = await asyncio.wait({pending}, timeout=timeout)
                if not done:
                    await self._flush()
                    continue
                event = pending.result()
                pending = None
                if isinstance(event, _End):
                    break
                self._take(event)
        except BaseException:
            if pending is not None and not pending.done():
                pending.cancel()
            await _close(events)
            await self._finish_safely(incomplete=True)
            self._streaming = False
            raise
        await self._finish_safely(incomplete=False)
        self._streaming = False

    # what arrives

    def _take(self, event: StreamEvent) -> None:
        if isinstance(event, QueuePosition):
            if not self._text:
                self._queue_position = event.position
                self._dirty = True
            return
        if not event:
            return
        self._text.append(event)
        self._finished.extend(piece.text for piece in self._splitter.feed(event))
        self._dirty = True

    # what is shown

    async def _flush(self) -> None:
        self._dirty = False
        if self._broken:
            return
        try:
            await self._show_finished()
            current = self._splitter.current()
            if current.body.strip():
                await self._show(_with_marker(current.text))
            elif not self._text and self._queue_position is not None:
                await self._show(
                    QUEUED_PREFIX + say("chat.queued", self._lang, position=self._queue_position)
                )
        except DeliveryFailed:
            self._broken = True

    async def _show_finished(self) -> None:
        while self._finished:
            piece = self._finished[0]
            if piece.strip():
                await self._show(piece, closing=True)
            self._finished.pop(0)

    async def _finish_safely(self, *, incomplete: bool) -> None:
        self._stop_typing()
        try:
            await self._finish(incomplete=incomplete)
        except Exception:
            _log.exception("could not finish the reply %s", self.ids)
        _log.info(
            "reply %s %s posts=%d edits=%d chars=%d",
            "incomplete" if incomplete else "shown",
            self.ids,
            self._posted,
            self._edits,
            sum(len(t) for t in self._text),
        )

    async def _finish(self, *, incomplete: bool) -> None:
        last = self._splitter.finish()
        if last is not None:
            self._finished.append(last.text)
        if incomplete and self._text:
            if self._finished:
                self._finished[-1] += self._incomplete_note
            else:  # everything was already shown in finished messages
                self._finished.append(self._incomplete_note.strip())
        if not self._broken:
            try:
                await self._show_finished()
            except DeliveryFailed:
                self._broken = True
        if self._broken:
            await self.send("".join(self._finished))  # one more try, as new messages
            return
        if self._current is not None:  # a placeholder that never got text
            await self._delete(self._current)
            self._current = None

    async def _show(self, content: str, *, closing: bool = False) -> None:
        if self._current is None:
            self._current = await self._post(content)
        elif content != self._shown:
            try:
                await self._edit(self._current, content)
            except DeliveryFailed:
                _log.warning("finishing the reply in a new message %s", self.ids)
                self._current = await self._post(content)
        self._shown = content
        if closing:
            self._current, self._shown = None, ""

    # Discord writes: paced per channel, retried once

    async def _post(self, content: str) -> discord.Message:
        reference = None
        if self._reply_to is not None and self._posted == 0:
            reference = self._reply_to.to_reference(fail_if_not_exists=False)
        for attempt in (1, 2):
            try:
                async with self._pacer.turn(self._channel_id):
                    if reference is None:
                        message = await self._channel.send(content)
                    else:
                        message = await self._channel.send(content, reference=reference, mention_author=False)
            except WRITE_ERRORS as exc:
                self._write_failed("post", attempt, exc)
                continue
            self._posted += 1
            if self._streaming:
                self._reply_posts.append(str(message.id))
            self._stop_typing()
            return message
        raise DeliveryFailed(self.ids)

    async def _edit(self, message: discord.Message, content: str) -> None:
        for attempt in (1, 2):
            try:
                async with self._pacer.turn(self._channel_id):
                    await message.edit(content=content)
            except WRITE_ERRORS as exc:
                self._write_failed(f"edit of {message.id}", attempt, exc)
                continue
            self._edits += 1
            return
        raise DeliveryFailed(self.ids)

    async def _delete(self, message: discord.Message) -> None:
        if str(message.id) in self._reply_posts:
            self._reply_posts.remove(str(message.id))
        try:
            await message.delete()
        except WRITE_ERRORS as exc:
            _log.warning("could not delete placeholder %s %s: %s", message.id, self.ids, _describe(exc))

    def _write_failed(self, what: str, attempt: int, exc: BaseException) -> None:
        if attempt == 1:
            _log.warning("discord %s failed, retrying once %s: %s", what, self.ids, _describe(exc))
        else:
            _log.error("discord %s failed twice (outage?) %s: %s", what, self.ids, _describe(exc))

    # typing

    async def _keep_typing(self) -> None:
        try:
            while True:
                await self._channel.typing()
                await asyncio.sleep(TYPING_EVERY_S)
        except WRITE_ERRORS as exc:
            _log.debug("typing indicator stopped %s: %s", self.ids, _describe(exc))

    def _stop_typing(self) -> None:
        if self._typing is not None:
            self._typing.cancel()
            self._typing = None


def _with_marker(text: str) -> str:
    # after a closing fence the marker goes on its own line, so the fence line stays a plain fence
    return f"{text}\n{STREAMING_MARKER}" if text.endswith("```") else f"{text} {STREAMING_MARKER}"


async def _close(events: AsyncIterator[StreamEvent]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:  # the stream's own error is what matters here
        _log.debug("closing the event stream raised", exc_info=True)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, discord.HTTPException):
        return f"HTTP {exc.status} code={exc.code}"
    return type(exc).__name__
