"""/summarize's core parts: the count option, the conversation's language, the prompt that fits the budget, and the
console (which has no platform history) answering with one sentence."""

from __future__ import annotations

from bot.commands import CommandContext, CommandRegistry
from bot.domain import Author, ConversationKey, QuotedMessage
from bot.permissions import AdminPolicy
from bot.settings import load_settings
from bot.summarize import conversation_language, fit_prompt, parse_count, summarize_command
from bot.texts import say
from tests.fakes import CharTokenizer, ScriptedEngine


def said(*texts: str) -> list[QuotedMessage]:
    return [QuotedMessage(str(n), f"person{n}", text) for n, text in enumerate(texts)]


def test_count_defaults_and_refuses_what_is_not_a_number_in_range() -> None:
    assert parse_count(None) == parse_count(" ") == 50
    assert parse_count("30") == 30
    assert parse_count("0") is None and parse_count("201") is None and parse_count("lots") is None


def test_the_language_is_the_one_most_messages_are_written_in() -> None:
    assert conversation_language(said("안녕하세요", "배포 언제?", "ok")) == "ko"
    assert conversation_language(said("hello", "ship it Friday?", "네")) == "en"


def test_the_oldest_messages_are_left_out_until_the_prompt_fits(tmp_path) -> None:
    settings = load_settings(data_dir=tmp_path, generation={"max_new_tokens": 100})
    engine = ScriptedEngine(tokenizer=CharTokenizer(context_length=600))
    messages = said(*(f"message {n:02d} " + "x" * 60 for n in range(40)))

    turns = fit_prompt(messages, "en", engine, settings)

    assert engine.tokenizer.count_tokens(turns) <= 600 - 100
    content = turns[1].content
    assert "message 39" in content and "message 00" not in content  # the newest kept, the oldest dropped


async def test_without_platform_history_the_command_says_so(tmp_path) -> None:
    settings = load_settings(data_dir=tmp_path)
    engine = ScriptedEngine()
    registry = CommandRegistry(AdminPolicy(settings), [summarize_command(settings, engine)])
    ctx = CommandContext("console", ConversationKey("console", "", "main"), Author("me", "me"), lang="ko")

    reply = await registry.run("summarize", ctx)

    assert reply.text == say("cmd.summarize.unavailable", "ko")
    assert engine.requests == []
