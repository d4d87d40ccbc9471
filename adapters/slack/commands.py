"""Slash commands (/reset, /finetune run|status|rollback, /help): acknowledged at once (Slack allows 3 s), run after
the ack, answered through the command's ``response_url`` (ephemeral unless the core says otherwise).

Who may run an admin command is decided in the core (``CommandRegistry.run``): the adapter only says who the invoker
is, with ``platform_admin`` set for workspace admins and owners (``users.info``, asked fresh each time).

Which conversation: in a DM, the DM. Slack sends no thread with a slash command, so in a channel a thread is named by
its link (``/reset https://….slack.com/archives/C…/p1712345678123456``); without one the context says the thread is
unknown, and the core takes the invoker's latest thread with the bot in that channel.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from slack_bolt.app.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.respond.async_respond import AsyncRespond

from adapters.slack.events import PLATFORM
from adapters.slack.mrkdwn import to_mrkdwn
from adapters.slack.users import UserDirectory
from bot.commands import CommandContext, CommandRegistry, CommandSpec, parse_arguments
from bot.domain import ConversationKey
from bot.ports import ConversationHistory
from bot.texts import language_of, say, say_both

_log = logging.getLogger(__name__)

Spawn = Callable[[Coroutine[Any, Any, None], str], None]

_PERMALINK = re.compile(r"<?https?://[^\s/]+/archives/([A-Z0-9]+)/p(\d{10})(\d{6})[^\s>]*>?")


class SlashCommands:
    def __init__(
        self,
        registry: CommandRegistry,
        users: UserDirectory,
        spawn: Spawn,
        *,
        history: ConversationHistory | None = None,
    ) -> None:
        self._registry = registry
        self._history = history
        self._users = users
        self._spawn = spawn

    def register(self, app: AsyncApp) -> None:
        for spec in self._registry.specs():
            app.command(f"/{spec.name}")(self.on_command)

    async def on_command(self, ack: AsyncAck, command: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()  # first, always: the work may take longer than Slack waits
        name = str(command.get("command", "")).lstrip("/")
        self._spawn(self.run(command, respond), f"slack-command-{name}")

    async def run(self, command: Mapping[str, Any], respond: AsyncRespond) -> None:
        name = str(command.get("command", "")).lstrip("/")
        try:
            ctx = await self._context(name, command)
            elsewhere = linked_channel_elsewhere(str(command.get("text") or ""), ctx.conversation.channel)
            if elsewhere:  # a thread of another channel: this channel's command cannot reach it
                _log.info(
                    "/%s names a thread of channel=%s from channel=%s",
                    name,
                    elsewhere,
                    ctx.conversation.channel,
                )
                await respond(
                    text=to_mrkdwn(say("cmd.link_other_channel", ctx.lang)),
                    response_type="ephemeral",
                )
                return
            reply = await self._registry.run(name, ctx)
            response_type = "ephemeral" if reply.ephemeral else "in_channel"
            await respond(text=to_mrkdwn(reply.text), response_type=response_type)
        except Exception:
            _log.exception(
                "/%s failed user=%s channel=%s", name, command.get("user_id"), command.get("channel_id")
            )
            await respond(text=say_both("error.generic"), response_type="ephemeral")

    async def _context(self, name: str, command: Mapping[str, Any]) -> CommandContext:
        text = str(command.get("text") or "")
        user = await self._users.get(str(command["user_id"]), fresh=True)
        thread, rest = thread_from_link(text, str(command.get("channel_id", "")))
        spec = self._registry.get(name)
        conversation = conversation_for_command(command, thread)
        return CommandContext(
            platform=PLATFORM,
            conversation=conversation,
            invoker=user.author(),
            args=arguments(spec, rest) if spec else {},
            lang=user.lang or language_of(text),
            thread_unknown=not is_dm(conversation) and _PERMALINK.search(text) is None,
            history=self._history,
        )


def conversation_for_command(command: Mapping[str, Any], thread: str) -> ConversationKey:
    workspace = str(command.get("team_id") or "")
    channel = str(command.get("channel_id") or "")
    if channel.startswith("D"):  # a DM is one conversation
        return ConversationKey(PLATFORM, workspace, channel)
    return ConversationKey(PLATFORM, workspace, channel, thread)


def is_dm(conversation: ConversationKey) -> bool:
    return conversation.channel.startswith("D")


def thread_from_link(text: str, channel: str) -> tuple[str, str]:
    """The thread ts named by a message link to this channel, and the text without the link."""
    match = _PERMALINK.search(text)
    if match is None or match.group(1) != channel:
        return "", text
    rest = (text[: match.start()] + text[match.end() :]).strip()
    return f"{match.group(2)}.{match.group(3)}", rest


def linked_channel_elsewhere(text: str, channel: str) -> str:
    """The channel a message link in ``text`` names, when it is not ``channel`` ("" otherwise)."""
    match = _PERMALINK.search(text)
    return match.group(1) if match is not None and match.group(1) != channel else ""


def arguments(spec: CommandSpec, text: str) -> dict[str, str]:
    """The command's words as its options: ``name:value`` as Discord shows them, or bare in order (the core's
    ``parse_arguments``, the same as the console)."""
    return parse_arguments(spec, text)
