"""Long replies, the edit rate, queue positions, rate limits and failures, measured from the fake's request log."""

from __future__ import annotations

import itertools
import logging
import re

import pytest

from adapters.discord.sink import STREAMING_MARKER
from bot.domain import MessageStatus, Role
from tests.discord.conftest import StartBot
from tests.discord.fake_discord import MAX_CONTENT, FakeDiscord
from tests.discord.sink_helpers import reply_done
from tests.fakes import ScriptedEngine

CODE = "```python\n" + "\n".join(f"print('줄 {i}: {'x' * 20}')" for i in range(60)) + "\n```\n"


def long_reply() -> str:
    """About 5,000 characters: Korean and English paragraphs, with a code block across the first split."""
    korean = "이 문단은 긴 답변을 시험하기 위한 문장입니다. 메시지는 2000자를 넘을 수 없어요. " * 12
    english = "This paragraph is here to make the reply long enough to need several messages. " * 8
    text = korean + "\n\n" + CODE + "\n" + english + "\n\n" + korean + "\n\n" + english + "\n\n" + korean
    return text[:4999] + "."


def strip_markers(messages: list[str]) -> str:
    """The messages put back together, the fence closed before a split and reopened after it taken out, without
    whitespace (Discord trims each message)."""
    out: list[str] = []
    for i, content in enumerate(messages):
        if i > 0 and content.startswith("```python\n") and out[-1].endswith("```"):
            out[-1] = out[-1][: -len("```")]
            content = content[len("```python\n") :]
        out.append(content)
    return re.sub(r"\s+", "", "".join(out))


async def test_long_reply_rolls_over_keeps_code_fences_and_edits_at_most_once_a_second(
    start_bot: StartBot, fake_discord: FakeDiscord
) -> None:
    reply = long_reply()
    assert len(reply) == 5000
    # the real rule: one edit per second (measured below); the reply streams for about four seconds
    bot = await start_bot(
        engine=ScriptedEngine(reply=reply, chunk_size=25, delay_s=0.02), edit_interval_s=1.0
    )
    person = fake_discord.new_user("Hana")
    fake_discord.post_message(
        fake_discord.general, person, "Write me something long, please.", mention_bot=True
    )
    await fake_discord.wait_for(lambda: len(bot.history(fake_discord.general)) == 2, within_s=40)

    messages = [m["content"] for m in fake_discord.bot_messages(fake_discord.general)]
    assert len(messages) >= 3
    assert all(len(m) <= MAX_CONTENT for m in messages)
    assert not any(STREAMING_MARKER in m for m in messages), "the streaming marker is removed at the end"
    assert strip_markers(messages) == re.sub(r"\s+", "", reply), (
        "nothing lost, nothing added but fence markers"
    )
    assert bot.history(fake_discord.general)[1].content == reply

    # the code block is split across messages, each part a closed block, the next reopened with its language
    code_parts = [m for m in messages if "print('줄" in m]
    assert len(code_parts) >= 2, "the split fell inside the code block"
    assert code_parts[0].rstrip().endswith("```") and code_parts[1].startswith("```python\n")
    for i in range(60):
        assert sum(f"print('줄 {i}: " in m for m in messages) == 1, f"line {i} intact in exactly one message"
    assert all(m.count("```") % 2 == 0 for m in messages)

    # edits: at most one per second per message, and the channel's writes never closer than a second either
    edited = 0
    for message in fake_discord.bot_messages(fake_discord.general):
        times = [r.t for r in fake_discord.edits_of(message["id"])]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(g >= 1.0 for g in gaps), f"edits {gaps} apart"
        edited += len(times) >= 2
    assert edited >= 1, "the reply was streamed with several edits"
    writes = [
        r.t for r in fake_discord.log(pattern=rf"/channels/{fake_discord.general}/messages") if r.status
    ]
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(writes))


async def test_queue_position_shows_in_the_placeholder_that_becomes_the_reply(
    start_bot: StartBot, fake_discord: FakeDiscord
) -> None:
    await start_bot(engine=ScriptedEngine(reply="Your turn now.", queue_positions=(3, 2, 1), delay_s=0.3))
    person = fake_discord.new_user("Yuna")
    fake_discord.post_message(fake_discord.general, person, "are you busy?", mention_bot=True)
    await fake_discord.wait_for(reply_done(fake_discord, fake_discord.general, "Your turn now."))

    writes = fake_discord.log(pattern=rf"/channels/{fake_discord.general}/messages")
    shown = [r.body["content"] for r in writes]
    assert writes[0].method == "POST" and "#3" in shown[0]
    assert any("#2" in s for s in shown) or any("#1" in s for s in shown), "the position was updated"
    assert len(fake_discord.bot_messages(fake_discord.general)) == 1, "the placeholder became the reply"


async def test_engine_failure_mid_reply_marks_it_incomplete(
    start_bot: StartBot, fake_discord: FakeDiscord
) -> None:
    bot = await start_bot(
        engine=ScriptedEngine(reply="Partial answer that stops " * 4, chunk_size=9, fail_after=3)
    )
    person = fake_discord.new_user("Min")
    fake_discord.post_message(fake_discord.general, person, "tell me a story", mention_bot=True)
    await fake_discord.wait_for(lambda: len(fake_discord.bot_messages(fake_discord.general)) == 2)
    await fake_discord.wait_for(
        lambda: "Sorry" in fake_discord.bot_messages(fake_discord.general)[1]["content"]
    )

    first = fake_discord.bot_messages(fake_discord.general)[0]["content"]
    assert first.startswith("Partial answer that")
    assert first.endswith("(reply incomplete)") and STREAMING_MARKER not in first
    turns = await bot.stored(fake_discord.general, 2)
    assert turns[-1].role == Role.ASSISTANT and turns[-1].status == MessageStatus.INCOMPLETE


async def test_a_429_on_an_edit_is_retried_after_retry_after_and_the_reply_completes(
    start_bot: StartBot, fake_discord: FakeDiscord
) -> None:
    reply = "천천히 답할게요. " * 12
    await start_bot(engine=ScriptedEngine(reply=reply, chunk_size=6, delay_s=0.03))
    fake_discord.fail("PATCH", r"/channels/\d+/messages/\d+$", status=429, retry_after=0.6)
    person = fake_discord.new_user("Seo")
    fake_discord.post_message(fake_discord.general, person, "천천히 답해 줘", mention_bot=True)
    await fake_discord.wait_for(reply_done(fake_discord, fake_discord.general, reply.strip()))

    patches = fake_discord.log("PATCH")
    limited = next(i for i, r in enumerate(patches) if r.status == 429)
    retry = patches[limited + 1]
    assert retry.path == patches[limited].path and retry.status == 200
    assert retry.t - patches[limited].t >= 0.6, "discord.py waited retry_after before retrying"
    assert len(fake_discord.bot_messages(fake_discord.general)) == 1


def last_bot_text(fake: FakeDiscord) -> str | None:
    messages = fake.bot_messages(fake.general)
    return messages[-1]["content"] if messages else None


async def test_an_edit_that_fails_twice_is_finished_as_a_new_message(
    start_bot: StartBot, fake_discord: FakeDiscord
) -> None:
    reply = "A reply long enough to be edited a few times while it streams in. " * 3
    await start_bot(engine=ScriptedEngine(reply=reply, chunk_size=10, delay_s=0.05))
    fake_discord.fail("PATCH", r"/channels/\d+/messages/\d+$", status=400, times=2)
    person = fake_discord.new_user("Ji")
    fake_discord.post_message(fake_discord.general, person, "hello", mention_bot=True)
    await fake_discord.wait_for(lambda: last_bot_text(fake_discord) == reply.strip())

    messages = fake_discord.bot_messages(fake_discord.general)
    assert len(messages) == 2
    assert STREAMING_MARKER in messages[0]["content"], (
        "the message that could not be edited is left as it was"
    )
    failed = [r for r in fake_discord.log("PATCH") if r.status == 400]
    assert len(failed) == 2 and failed[0].path == failed[1].path, "retried once"


async def test_a_platform_outage_is_logged_with_ids_and_the_reply_still_stored(
    start_bot: StartBot, fake_discord: FakeDiscord, caplog: pytest.LogCaptureFixture
) -> None:
    bot = await start_bot(engine=ScriptedEngine(reply="I am still here.", chunk_size=4, delay_s=0.02))
    fake_discord.fail("POST", r"/channels/\d+/messages$", status=503, times=2)
    person = fake_discord.new_user("Woo")
    asked = fake_discord.post_message(fake_discord.general, person, "are you there?", mention_bot=True)
    with caplog.at_level(logging.WARNING, logger="adapters.discord"):
        await fake_discord.wait_for(reply_done(fake_discord, fake_discord.general, "I am still here."))

    stored = await bot.stored(fake_discord.general, 2)
    assert [t.content for t in stored] == ["are you there?", "I am still here."]
    outage = [r for r in caplog.records if "failed twice" in r.getMessage()]
    assert (
        outage
        and f"channel={fake_discord.general}" in outage[0].getMessage()
        and asked in outage[0].getMessage()
    )
    assert "are you there" not in caplog.text, "no message text in the logs"
