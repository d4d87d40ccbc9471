"""Slash commands, platform-neutral: each is a CommandSpec whose handler returns the reply text.

Adapters register ``CommandRegistry.specs()`` with their platform (with help text and choices) and call
``CommandRegistry.run``; the admin check happens here, so a command registered without UI permissions still refuses.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from bot.domain import Author, CommandReply, ConversationKey
from bot.errors import BotError
from bot.permissions import AdminPolicy
from bot.texts import Lang, say

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CommandOption:
    name: str
    description: str
    choices: tuple[str, ...] = ()
    required: bool = False


@dataclass(frozen=True)
class CommandContext:
    platform: str
    conversation: ConversationKey
    invoker: Author
    args: Mapping[str, str] = field(default_factory=dict)
    lang: Lang = "en"
    # The platform could not say which thread the command is about (Slack sends none with slash commands): commands
    # that act on a conversation take the invoker's latest thread in ``conversation``'s channel.
    thread_unknown: bool = False


Handler = Callable[[CommandContext], Awaitable[CommandReply]]


@dataclass(frozen=True)
class CommandSpec:
    name: str
    description: str  # help text shown by the platform (≤ 100 characters for Discord)
    handler: Handler
    options: tuple[CommandOption, ...] = ()
    admin_only: bool = False
    usage: str = ""  # longer help for /help


class CommandRegistry:
    def __init__(self, policy: AdminPolicy, specs: Sequence[CommandSpec] = ()) -> None:
        self._policy = policy
        self._specs: dict[str, CommandSpec] = {}
        for spec in specs:
            self.add(spec)

    def add(self, spec: CommandSpec) -> None:
        self._specs[spec.name] = spec

    def specs(self) -> list[CommandSpec]:
        return list(self._specs.values())

    def get(self, name: str) -> CommandSpec | None:
        return self._specs.get(name.lstrip("/"))

    async def run(self, name: str, ctx: CommandContext) -> CommandReply:
        """Check permissions, run the handler, and turn any failure into one clear sentence."""
        spec = self.get(name)
        if spec is None:
            return CommandReply(say("error.unknown_command", ctx.lang))
        if spec.admin_only and not self._policy.is_admin(ctx.platform, ctx.invoker):
            _log.info(
                "refused /%s for non-admin user=%s conversation=%s",
                spec.name,
                ctx.invoker.id,
                ctx.conversation,
            )
            return CommandReply(say("error.not_admin", ctx.lang))
        try:
            reply = await spec.handler(ctx)
        except BotError as exc:
            _log.warning("/%s failed conversation=%s: %s", spec.name, ctx.conversation, exc)
            return CommandReply(say(exc.user_text_key, ctx.lang))
        except Exception:
            _log.exception("/%s crashed conversation=%s user=%s", spec.name, ctx.conversation, ctx.invoker.id)
            return CommandReply(say("error.generic", ctx.lang))
        _log.info("ran /%s conversation=%s user=%s", spec.name, ctx.conversation, ctx.invoker.id)
        return reply

    def help_text(self, lang: Lang) -> str:
        lines = ["명령어 / Commands:" if lang == "ko" else "Commands:"]
        for spec in self._specs.values():
            admin = " (admin)" if spec.admin_only else ""
            lines.append(f"/{spec.name}{admin}: {spec.description}")
            if spec.usage:
                lines.append(f"    {spec.usage}")
        return "\n".join(lines)
