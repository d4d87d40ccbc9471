"""The commands every bot has: /reset, /help, and /finetune until the learning loop replaces it."""

from __future__ import annotations

from bot.chat import ChatService
from bot.commands import CommandContext, CommandOption, CommandRegistry, CommandSpec
from bot.domain import CommandReply
from bot.texts import say


def reset_command(chat: ChatService) -> CommandSpec:
    async def reset(ctx: CommandContext) -> CommandReply:
        removed = await chat.forget(ctx.conversation, actor=f"{ctx.platform}:{ctx.invoker.id}")
        return CommandReply(say("cmd.reset.done", ctx.lang, count=removed))

    return CommandSpec(
        name="reset",
        description="Forget this channel's conversation / 이 채널의 대화 기록 지우기",
        handler=reset,
        admin_only=True,
        usage="/reset: the bot forgets everything said in this channel (or thread) so far.",
    )


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
        options=(CommandOption("action", "run, status or rollback", choices=("run", "status", "rollback")),),
        admin_only=True,
    )
