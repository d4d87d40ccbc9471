"""The port a chat platform fills (Discord, Slack, the console): its own module because it names both the core's
ports (``bot.ports``) and its commands (``bot.commands``), which keeps those two free of each other."""

from __future__ import annotations

from typing import Protocol

from bot.commands import CommandRegistry
from bot.domain import ConversationKey
from bot.ports import MessageHandler, ReplySink
from bot.texts import Lang


class Adapter(Protocol):
    """A platform: turns its events into IncomingMessage and command calls, and replies through ReplySinks."""

    name: str

    async def start(self, on_message: MessageHandler, commands: CommandRegistry) -> None: ...

    async def stop(self) -> None: ...

    async def sink_for(
        self, conversation: ConversationKey, *, author_id: str, message_id: str | None, lang: Lang
    ) -> ReplySink | None:
        """Where a reply to a stored message goes when no event brought it (after a restart); None if unreachable."""
        ...
