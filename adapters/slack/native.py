"""Streaming the Slack way, in threads: ``assistant.threads.setStatus`` while thinking or queued, then
``chat.startStream`` / ``appendStream`` / ``stopStream`` (slack_sdk's ``chat_stream``) with the Markdown as written.

Applies where Slack allows it: a workspace that refuses the status call (no ``assistant:write``, not an AI app) is
remembered and gets edited messages instead. Each streamed message holds one piece of ≤ 4,000 characters; appended
text cannot be taken back, so a growing piece is sent live only up to the point where the splitter could still
prefer to cut (half the limit); the rest follows when the cut is known.
"""

from __future__ import annotations

import asyncio
import logging

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_chat_stream import AsyncChatStream
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.events import ReplyTarget
from adapters.slack.mrkdwn import defuse
from adapters.slack.pieces import LIMIT
from bot.texts import Lang, say
from bot.textsplit import split_pieces

_log = logging.getLogger(__name__)

_SURE = (LIMIT - 8) // 2  # a growing piece's text before this point stays in the piece whatever comes next


class NativeRefused(Exception):
    """Slack refused the status or stream call: this workspace gets edited messages."""


class NativeSupport:
    """Which workspaces stream natively. Off by setting; a refusal turns it off for that workspace."""

    def __init__(self, *, enabled: bool) -> None:
        self._enabled = enabled
        self._refused: set[str] = set()

    def applies(self, target: ReplyTarget) -> bool:
        return self._enabled and target.thread_ts is not None and target.workspace not in self._refused

    def refuse(self, workspace: str, reason: str) -> None:
        if workspace not in self._refused:
            _log.info(
                "native streaming unavailable workspace=%s (%s): editing messages instead", workspace, reason
            )
        self._refused.add(workspace)


class NativeStream:
    def __init__(self, client: AsyncWebClient, target: ReplyTarget, *, lang: Lang) -> None:
        if target.thread_ts is None:
            raise ValueError("native streams reply in a thread")
        self._client = client
        self._target = target
        self._thread_ts: str = target.thread_ts
        self._lang = lang
        self._text = ""
        self._status = say("chat.thinking", lang)
        self._status_shown = ""
        self._stream: AsyncChatStream | None = None
        self._started = False  # any text streamed at all
        self._base = 0  # where the growing piece starts in the text
        self._prefix = ""  # a code fence reopened at the start of the growing piece
        self._sent = 0  # characters of (prefix + the piece's text) already appended
        self._lock = asyncio.Lock()
        self._posted: list[str] = []  # the ts of each streamed message

    @property
    def posted(self) -> tuple[str, ...]:
        return tuple(self._posted)

    @property
    def holds_no_reply(self) -> bool:
        return False  # nothing to take over: a notice is posted in the thread

    async def open(self) -> None:
        """Show "thinking…"; raises NativeRefused where Slack does not allow it."""
        try:
            await self._set_status(self._status)
        except SlackApiError as exc:
            raise NativeRefused(str(exc.response.get("error", "error"))) from exc

    def show_queue(self, position: int) -> None:
        self._status = say("chat.queued", self._lang, position=position)

    def show_text(self, text: str) -> None:
        self._text = text

    async def flush(self) -> None:
        async with self._lock:
            if not self._started and self._status != self._status_shown:
                await self._set_status(self._status)
            await self._advance(final=False)

    async def finish(self, text: str) -> None:
        async with self._lock:
            self._text = text
            await self._advance(final=True)
            if self._stream is not None:
                await self._stream.stop()
                self._stream = None
            if not self._started:
                await self._set_status("")  # nothing was said: clear "thinking…"

    async def abandon(self) -> None:
        await self.finish("")

    async def replace(self, text: str) -> None:
        raise NotImplementedError  # holds_no_reply is False: the sink posts instead

    async def _advance(self, *, final: bool) -> None:
        """Append what is certain, and close each piece once the splitter has chosen where it ends."""
        while True:
            growing = self._prefix + self._text[self._base :]
            parts = split_pieces(growing, LIMIT) if growing else []
            if len(parts) <= 1:
                if final:
                    suffix = parts[0].suffix if parts else ""
                    await self._append(growing[self._sent :] + suffix)
                elif len(growing) > self._sent:
                    await self._append(growing[self._sent : min(len(growing), _SURE)])
                return
            cut = len(parts[0].body)
            if cut >= self._sent:
                await self._append(growing[self._sent : cut] + parts[0].suffix)
                next_prefix = parts[1].prefix
            else:  # already sent past the cut (a piece with no break in its second half): end it here
                cut, next_prefix = self._sent, ""
            if self._stream is not None:
                await self._stream.stop()
                self._stream = None
            self._base += max(cut - len(self._prefix), 1)
            self._prefix, self._sent = next_prefix, 0

    async def _append(self, text: str) -> None:
        if not text:
            return
        if self._stream is None:
            recipient = {}
            if not self._target.channel.startswith("D"):  # outside DMs Slack needs to know who asked
                recipient = {
                    "recipient_team_id": self._target.workspace,
                    "recipient_user_id": self._target.user_id,
                }
            self._stream = await self._client.chat_stream(
                channel=self._target.channel, thread_ts=self._thread_ts, buffer_size=1, **recipient
            )
        try:
            await self._stream.append(markdown_text=defuse(text))  # the model's text pings nobody
        except SlackApiError as exc:
            if not self._started:
                raise NativeRefused(str(exc.response.get("error", "error"))) from exc
            raise
        self._started = True
        self._sent += len(text)
        if self._stream.ts and self._stream.ts not in self._posted:
            self._posted.append(self._stream.ts)

    async def _set_status(self, status: str) -> None:
        await self._client.assistant_threads_setStatus(
            channel_id=self._target.channel, thread_ts=self._thread_ts, status=status
        )
        self._status_shown = status
