"""The commands every bot has: /reset, /help, and /finetune until the learning loop replaces it."""

from __future__ import annotations

import re

from bot.chat import ChatService
from bot.commands import CommandContext, CommandRegistry, CommandSpec
from bot.domain import CommandReply, ConversationKey
from bot.learning.commands import FINETUNE_OPTIONS
from bot.store.conversations import ConversationStore
from bot.texts import say

OPENING_CHARS = 40  # how much of a thread's first message names it in /reset's answer


def reset_command(chat: ChatService) -> CommandSpec:
    async def reset(ctx: CommandContext) -> CommandReply:
        actor = f"{ctx.platform}:{ctx.invoker.id}"
        if not ctx.thread_unknown:
            removed = await chat.forget(ctx.conversation, actor=actor)
            return CommandReply(say("cmd.reset.done", ctx.lang, count=removed))
        thread = await chat.db.run(lambda store: _latest_thread(store, ctx))
        if thread is None:
            return CommandReply(say("cmd.reset.no_thread", ctx.lang))
        key, opening = thread
        removed = await chat.forget(key, actor=actor)
        return CommandReply(say("cmd.reset.done_thread", ctx.lang, count=removed, opening=opening))

    return CommandSpec(
        name="reset",
        description="Forget this channel's conversation / 이 채널의 대화 기록 지우기",
        handler=reset,
        admin_only=True,
        usage="/reset: the bot forgets everything said in this channel (or thread) so far. In a Slack channel: "
        "your latest thread with the bot there, or the thread whose link you add (/reset <link>).",
    )


def _latest_thread(store: ConversationStore, ctx: CommandContext) -> tuple[ConversationKey, str] | None:
    """The invoker's latest thread in the channel, and the first words it starts with."""
    key = store.latest_thread_with(ctx.conversation, ctx.invoker.id)
    if key is None:
        return None
    first = store.first_message(key)
    return key, opening_words(first.content if first else "")


def opening_words(text: str, limit: int = OPENING_CHARS) -> str:
    """The start of a message on one line, cut at a word where it is long."""
    line = re.sub(r"\s+", " ", text).strip()
    if len(line) <= limit:
        return line
    cut = line[:limit]
    if " " in cut[limit // 2 :]:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip() + "…"


def help_command(registry: CommandRegistry) -> CommandSpec:
    async def show_help(ctx: CommandContext) -> CommandReply:
        return CommandReply(registry.help_text(ctx.lang))

    return CommandSpec(
        name="help",
        description="Show what the bot can do / 도움말",
        handler=show_help,
        usage="/help: this list. Mention the bot (or DM it) to ask a question.",
    )


def finetune_unavailable_command() -> CommandSpec:
    async def unavailable(ctx: CommandContext) -> CommandReply:
        return CommandReply(say("cmd.finetune.unavailable", ctx.lang))

    return CommandSpec(
        name="finetune",
        description="Train the bot on this team's conversations / 대화로 모델 학습",
        handler=unavailable,
        options=FINETUNE_OPTIONS,  # registered on the platforms as the learning loop's, which replaces it
        admin_only=True,
        shared_model=True,
    )
