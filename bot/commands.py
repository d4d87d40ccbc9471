"""Slash commands, platform-neutral: each is a CommandSpec whose handler returns the reply text.

Adapters register ``CommandRegistry.specs()`` with their platform (with help text and choices) and call
``CommandRegistry.run``; the admin check happens here, so a command registered without UI permissions still refuses.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bot.domain import Author, CommandReply, ConversationKey
from bot.errors import BotError
from bot.permissions import ADMIN_IDS_SETTING, ALLOWLIST_SETTING, AdminPolicy, Refusal
from bot.texts import TEXTS, Lang, say

if TYPE_CHECKING:
    from bot.ports import ConversationHistory

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
    # the platform's history of the conversation and a way to post in it (None where there is none: the console)
    history: ConversationHistory | None = None


Handler = Callable[[CommandContext], Awaitable[CommandReply]]


@dataclass(frozen=True)
class CommandSpec:
    name: str
    description: str  # help text shown by the platform (≤ 100 characters for Discord)
    handler: Handler
    options: tuple[CommandOption, ...] = ()
    admin_only: bool = False
    usage: str = ""  # longer help for /help
    # acts on the model every team shares (/finetune): a platform admin may run it only inside an allowlisted guild
    # or workspace; with no allowlist, only the admin ids in the settings may (bot.permissions)
    shared_model: bool = False


YES_WORDS = frozenset({"yes", "y", "true", "네", "예"})


def is_yes(value: str | None) -> bool:
    return (value or "").strip().lower() in YES_WORDS


def parse_arguments(spec: CommandSpec, text: str) -> dict[str, str]:
    """A typed command's words as its options, in the syntax Discord shows and the docs use, and the bare one.

    ``name:value`` (or ``name: value``) sets an option, in any order; other words fill the options not named, in
    order, the last one taking what is left; the bare name of a yes/no option means yes (``/forget-me undo``).
    """
    options = {option.name.lower(): option for option in spec.options}
    args: dict[str, str] = {}
    bare: list[str] = []
    words = text.split()
    index = 0
    while index < len(words):
        word = words[index]
        name, colon, value = word.partition(":")
        option = options.get(name.lower())
        if option is not None and colon:
            if not value and index + 1 < len(words):
                index += 1
                value = words[index]
            args[option.name] = value
        elif option is not None and "yes" in option.choices:
            args[option.name] = "yes"
        else:
            bare.append(word)
        index += 1
    unnamed = [option for option in spec.options if option.name not in args]
    for position, option in enumerate(unnamed[: len(bare)]):
        last = position == len(unnamed) - 1
        args[option.name] = " ".join(bare[position:]) if last else bare[position]
    return args


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
        refusal = self._policy.refusal(
            ctx.platform,
            ctx.invoker,
            ctx.conversation.workspace,
            admin_only=spec.admin_only or spec.shared_model,
            shared_model=spec.shared_model,
        )
        if refusal is not None:
            _log.warning(
                "refused /%s (%s) platform=%s workspace=%s user=%s conversation=%s",
                spec.name,
                refusal.name.lower(),
                ctx.platform,
                ctx.conversation.workspace or "-",
                ctx.invoker.id,
                ctx.conversation,
            )
            return CommandReply(self._refusal_text(refusal, ctx))
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

    @staticmethod
    def _refusal_text(refusal: Refusal, ctx: CommandContext) -> str:
        return say(
            refusal.value,
            ctx.lang,
            allowlist=ALLOWLIST_SETTING.get(ctx.platform, "-"),
            admin_ids=ADMIN_IDS_SETTING.get(ctx.platform, "-"),
        )

    def help_text(self, lang: Lang) -> str:
        """The commands with their usage, in ``lang`` where texts.py has it (``help.usage.<name>``)."""
        lines = ["명령어 / Commands:" if lang == "ko" else "Commands:"]
        for spec in self._specs.values():
            admin = (
                (" (관리자)" if lang == "ko" else " (admin)") if spec.admin_only or spec.shared_model else ""
            )
            lines.append(f"/{spec.name}{admin}: {spec.description}")
            key = f"help.usage.{spec.name}"
            usage = say(key, lang) if key in TEXTS else spec.usage
            if usage:
                lines.append(f"    {usage}")
        return "\n".join(lines)
