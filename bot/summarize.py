"""``/summarize`` (everyone): summarise a conversation's recent messages, read from the platform.

The adapter gives the command the platform's history (``CommandContext.history``): Discord's channel history, a
Slack thread's replies (its link after the command) or the channel's history. The messages become one request to the
engine, in the language most of them are written in, and the summary streams into the conversation like any reply.
Nothing is stored: neither the messages read nor the summary become conversation turns, so the learning loop never
trains on them.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

from bot.commands import CommandContext, CommandOption, CommandSpec
from bot.domain import ChatTurn, CommandReply, GenerationRequest, QuotedMessage, Role
from bot.ports import ConversationHistory, Engine, HistoryError
from bot.settings import Settings
from bot.texts import Lang, language_of, say

_log = logging.getLogger(__name__)

DEFAULT_COUNT = 50
MOST_COUNT = 200
SUMMARIZE_OPTIONS = (CommandOption("count", f"how many recent messages (default {DEFAULT_COUNT})"),)


def summarize_command(settings: Settings, engine: Engine) -> CommandSpec:
    async def summarize(ctx: CommandContext) -> CommandReply:
        count = parse_count(ctx.args.get("count"))
        if count is None:
            return CommandReply(say("cmd.summarize.bad_count", ctx.lang, most=MOST_COUNT))
        if ctx.history is None:
            return CommandReply(say("cmd.summarize.unavailable", ctx.lang))
        messages = await _read(ctx.history, ctx, count)
        if messages is None:
            return CommandReply(say("cmd.summarize.cannot_read", ctx.lang))
        if not messages:
            return CommandReply(say("cmd.summarize.empty", ctx.lang))
        lang = conversation_language(messages)
        sink = await ctx.history.sink_for(
            ctx.conversation, author_id=ctx.invoker.id, message_id=None, lang=lang
        )
        if sink is None:
            return CommandReply(say("cmd.summarize.cannot_read", ctx.lang))
        turns = fit_prompt(messages, lang, engine, settings)
        request = GenerationRequest(
            request_id=f"{ctx.platform}:summarize:{uuid.uuid4().hex}",
            channel=str(ctx.conversation),
            turns=turns,
            params=settings.generation.params(),
            timeout_s=settings.generation.timeout_s,
            user=f"{ctx.platform}:{ctx.invoker.id}",
        )
        _log.info(
            "summarizing conversation=%s messages=%d user=%s", ctx.conversation, len(messages), ctx.invoker.id
        )
        await sink.stream(engine.generate(request))  # shown, never stored
        return CommandReply(say("cmd.summarize.done", ctx.lang, count=len(messages)))

    return CommandSpec(
        name="summarize",
        description="Summarise this channel's (or Slack thread's) recent messages / 최근 대화 요약",
        handler=summarize,
        options=SUMMARIZE_OPTIONS,
        usage=(
            f"/summarize [count:N]: summarise this channel's last N messages (default {DEFAULT_COUNT}, at most "
            f"{MOST_COUNT}); in Slack, add a thread's link (/summarize <link>) to summarise that thread. Summaries "
            "are never used for training."
        ),
    )


def parse_count(value: str | None) -> int | None:
    """The number of messages asked for (the default when none), or None when it is not a number in range."""
    text = (value or "").strip()
    if not text:
        return DEFAULT_COUNT
    if not text.isdigit() or not 1 <= int(text) <= MOST_COUNT:
        return None
    return int(text)


async def _read(history: ConversationHistory, ctx: CommandContext, count: int) -> list[QuotedMessage] | None:
    try:
        found = await history.recent_messages(ctx.conversation, count)
    except HistoryError as exc:
        _log.warning("could not read history conversation=%s: %s", ctx.conversation, exc)
        return None
    return [message for message in found if message.text.strip()]


def conversation_language(messages: Sequence[QuotedMessage]) -> Lang:
    """Korean when most of the people's messages hold Korean, else English."""
    people = [m for m in messages if not m.from_bot] or list(messages)
    korean = sum(1 for m in people if language_of(m.text) == "ko")
    return "ko" if korean * 2 >= len(people) else "en"


def transcript(messages: Sequence[QuotedMessage]) -> str:
    return "\n".join(f"{m.author_name}: {m.text.strip()}" for m in messages)


def fit_prompt(
    messages: Sequence[QuotedMessage], lang: Lang, engine: Engine, settings: Settings
) -> tuple[ChatTurn, ...]:
    """The summary's prompt, leaving out the oldest messages until it fits the budget (context minus the reply)."""
    budget = engine.tokenizer.context_length - settings.generation.max_new_tokens
    kept = list(messages)
    while True:
        turns = (
            ChatTurn(Role.SYSTEM, say("summarize.instruction", lang)),
            ChatTurn(Role.USER, say("summarize.request", lang, count=len(kept), transcript=transcript(kept))),
        )
        if len(kept) <= 1 or engine.tokenizer.count_tokens(turns) <= budget:
            return turns
        kept = kept[max(1, len(kept) // 10) :]
