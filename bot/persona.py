"""``/persona`` (admins): show, set or clear the channel's own system prompt.

The prompt is stored on the conversation (``conversations.system_prompt``); the chat service sends it as the system
turn of every prompt there (a Slack thread without its own takes its channel's), in place of ``model.system_prompt``.
It is part of every prompt, so it counts against the token budget: the command says what it costs, and refuses one
that would leave the conversation less than half of the budget.
"""

from __future__ import annotations

import asyncio

from bot.commands import CommandContext, CommandOption, CommandSpec
from bot.domain import ChatTurn, CommandReply, Role
from bot.ports import Engine
from bot.prompt import turn_cost
from bot.settings import Settings
from bot.store.async_store import AsyncStore
from bot.store.conversations import ConversationStore
from bot.texts import say

ACTIONS = ("show", "set", "clear")
PERSONA_OPTIONS = (
    CommandOption("action", "show, set or clear this channel's system prompt", choices=ACTIONS),
    CommandOption("text", "the new system prompt (with action:set)"),
)
MAX_SHARE_OF_BUDGET = 0.5  # a persona may take at most this share of the prompt budget


def persona_command(settings: Settings, store: ConversationStore, engine: Engine) -> CommandSpec:
    budget = _Budget(settings, engine)
    db = AsyncStore(store)

    async def persona(ctx: CommandContext) -> CommandReply:
        action = (ctx.args.get("action") or "show").strip().lower()
        if action == "set":
            return await _set(ctx, db, budget)
        if action == "clear":
            await db.set_system_prompt(ctx.conversation, None)
            tokens = await asyncio.to_thread(budget.cost, settings.model.system_prompt)
            return CommandReply(say("cmd.persona.cleared", ctx.lang, tokens=tokens))
        if action == "show":
            return await _show(ctx, db, settings, budget)
        return CommandReply(say("cmd.persona.usage", ctx.lang))

    return CommandSpec(
        name="persona",
        description="Show, set or clear this channel's system prompt (admins) / 채널 시스템 프롬프트",
        handler=persona,
        options=PERSONA_OPTIONS,
        admin_only=True,
        usage="/persona [show | set <prompt> | clear]: this channel's system prompt and what it costs in tokens.",
    )


class _Budget:
    """What a system prompt costs, against the prompt budget (context length minus the longest reply)."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self._settings = settings
        self._engine = (
            engine  # its tokenizer is asked when a command runs (the model may load after the commands)
        )

    @property
    def total(self) -> int:
        return self._engine.tokenizer.context_length - self._settings.generation.max_new_tokens

    @property
    def most(self) -> int:
        return int(self.total * MAX_SHARE_OF_BUDGET)

    def cost(self, prompt: str) -> int:
        return turn_cost(ChatTurn(Role.SYSTEM, prompt), self._engine.tokenizer)


async def _set(ctx: CommandContext, store: AsyncStore, budget: _Budget) -> CommandReply:
    text = (ctx.args.get("text") or "").strip()
    if not text:
        return CommandReply(say("cmd.persona.empty", ctx.lang))
    tokens = await asyncio.to_thread(budget.cost, text)
    if tokens > budget.most:
        return CommandReply(say("cmd.persona.too_long", ctx.lang, tokens=tokens, most=budget.most))
    await store.set_system_prompt(ctx.conversation, text)
    return CommandReply(say("cmd.persona.set", ctx.lang, tokens=tokens, budget=budget.total))


async def _show(ctx: CommandContext, store: AsyncStore, settings: Settings, budget: _Budget) -> CommandReply:
    own = await store.system_prompt(ctx.conversation)
    prompt = own or settings.model.system_prompt
    tokens = await asyncio.to_thread(budget.cost, prompt)
    key = "cmd.persona.show" if own else "cmd.persona.show_default"
    return CommandReply(say(key, ctx.lang, tokens=tokens, budget=budget.total, prompt=prompt))
