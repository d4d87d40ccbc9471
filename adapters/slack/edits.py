"""Streaming by editing: a placeholder ("thinking…", then the queue position) edited as the reply grows.

One Slack message per piece of ≤ 4,000 characters: when the text outgrows a message, the next piece is posted after
it (in the same thread, or at the top level of a DM). Each flush edits only the messages whose text changed.
"""

from __future__ import annotations

import asyncio
import logging

from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.events import ReplyTarget
from adapters.slack.mrkdwn import escape
from adapters.slack.pieces import render_pieces
from bot.texts import Lang, say

_log = logging.getLogger(__name__)


class EditedMessages:
    def __init__(self, client: AsyncWebClient, target: ReplyTarget, *, lang: Lang) -> None:
        self._client = client
        self._target = target
        self._lang = lang
        self._status = say("chat.thinking", lang)
        self._text = ""
        self._ts: list[str] = []
        self._shown: list[str] = []
        self._lock = asyncio.Lock()

    @property
    def posted(self) -> tuple[str, ...]:
        """The ts of each message that shows the reply."""
        return tuple(self._ts)

    @property
    def holds_no_reply(self) -> bool:
        """Only a placeholder is shown (no reply text): a later notice may take its place."""
        return not self._text.strip()

    async def open(self) -> None:
        """Post the placeholder that says the bot is thinking."""
        await self.flush()

    def show_queue(self, position: int) -> None:
        self._status = say("chat.queued", self._lang, position=position)

    def show_text(self, text: str) -> None:
        self._text = text

    async def flush(self) -> None:
        async with self._lock:
            wanted = render_pieces(self._text) if self._text.strip() else [f"_{escape(self._status)}_"]
            for index, piece in enumerate(wanted):
                if index < len(self._ts):
                    if self._shown[index] != piece:
                        await self._client.chat_update(
                            channel=self._target.channel, ts=self._ts[index], text=piece
                        )
                        self._shown[index] = piece
                else:
                    self._ts.append(await self._post(piece))
                    self._shown.append(piece)
            while len(self._ts) > len(wanted):  # the text was cut differently: a message is left over
                ts = self._ts.pop()
                self._shown.pop()
                await self._client.chat_delete(channel=self._target.channel, ts=ts)

    async def finish(self, text: str) -> None:
        self._text = text
        await self.flush()

    async def abandon(self) -> None:
        """No reply will come: the placeholder says so until a notice takes its place."""
        self._status = say("chat.incomplete", self._lang)
        await self.flush()

    async def replace(self, text: str) -> None:
        """Show ``text`` (Markdown) instead of the placeholder, e.g. the sentence that explains a failure."""
        self._text = text
        await self.flush()

    async def _post(self, text: str) -> str:
        response = await self._client.chat_postMessage(
            channel=self._target.channel, thread_ts=self._target.thread_ts, text=text
        )
        ts = str(response["ts"])
        _log.debug("posted piece channel=%s ts=%s chars=%d", self._target.channel, ts, len(text))
        return ts
