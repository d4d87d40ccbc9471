"""Streamed replies: pieces under 4,000 characters, native streams and edited placeholders, the queue position,
429 retries, and failures mid-stream.
"""

from __future__ import annotations

import pytest

from bot.domain import ConversationKey, MessageStatus
from bot.texts import say
from tests.fakes import ScriptedEngine
from tests.slack.fake_slack import TEAM
from tests.slack.harness import dm_event, envelope, mention_event

DM = ConversationKey("slack", TEAM, "D1")


def long_reply(chars: int = 6000) -> str:
    paragraphs, n = [], 0
    while sum(len(p) + 2 for p in paragraphs) < chars:
        sentences = []
        for _ in range(6):
            n += 1
            sentences.append(f"이것은 긴 답변의 {n}번째 문장입니다. Sentence {n} keeps the reply going.")
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)[:chars]


@pytest.mark.parametrize("native", [False, True], ids=["edited", "native"])
async def test_a_6000_character_reply_arrives_in_pieces_of_at_most_4000_in_order_in_the_thread(
    start_bot, fake_slack, native
):
    reply = long_reply()
    assert len(reply) == 6000
    fake_slack.status_allowed = native
    bot = await start_bot(engine=ScriptedEngine(reply=reply, chunk_size=150, delay_s=0.01))
    thread = "1700000010.000100"
    key = ConversationKey("slack", TEAM, "C1", thread)

    await bot.post_event(envelope(mention_event("write a long answer", thread), "Ev100"))
    await fake_slack.wait_until(lambda: len(bot.history(key)) == 2)

    pieces = [m.text for m in fake_slack.replies("C1", thread)]
    assert len(pieces) == 2
    assert all(len(p) <= 4000 for p in pieces)
    assert "".join(pieces) == reply  # in order, nothing lost, nothing repeated
    assert bot.history(key)[1] == ("assistant", reply)
    assert not [c for c in fake_slack.calls if c.method.startswith("chat.") and c.status != 200]
    streamed = [m for m in fake_slack.replies("C1", thread) if m.streamed]
    if native:
        assert len(streamed) == 2 and all(m.stopped for m in streamed)
        assert not fake_slack.called("chat.update")
    else:
        assert streamed == []
        assert fake_slack.called("chat.update")  # the placeholder grew by edits


async def test_the_queue_position_is_shown_while_waiting(start_bot, fake_slack):
    engine = ScriptedEngine(reply="ready", queue_positions=(2, 1), delay_s=0.5)
    bot = await start_bot(engine=engine, native_streaming=False)

    await bot.post_event(envelope(dm_event("hello", "1700000011.000100"), "Ev110"))
    await fake_slack.wait_until(lambda: len(bot.history(DM)) == 2)

    shown = [c.args["text"] for c in fake_slack.called("chat.update")]
    assert f"_{say('chat.queued', 'en', position=2)}_" in shown
    assert f"_{say('chat.queued', 'en', position=1)}_" in shown
    assert shown[-1] == "ready"


async def test_the_queue_position_is_shown_as_thread_status_when_streaming_natively(start_bot, fake_slack):
    engine = ScriptedEngine(reply="ready", queue_positions=(3,), delay_s=0.5)
    bot = await start_bot(engine=engine)
    thread = "1700000012.000100"

    await bot.post_event(envelope(mention_event("hello", thread), "Ev120"))
    await fake_slack.wait_until(lambda: len(bot.history(ConversationKey("slack", TEAM, "C1", thread))) == 2)

    statuses = [c.args["status"] for c in fake_slack.called("assistant.threads.setStatus")]
    assert statuses[:2] == [say("chat.thinking", "en"), say("chat.queued", "en", position=3)]
    assert [m.text for m in fake_slack.replies("C1", thread)] == ["ready"]


async def test_a_rate_limited_update_is_retried_and_the_reply_completes(start_bot, fake_slack):
    fake_slack.rate_limited_updates = 1
    bot = await start_bot(engine=ScriptedEngine(reply="complete answer"), native_streaming=False)

    await bot.post_event(envelope(dm_event("hello", "1700000013.000100"), "Ev130"))
    await fake_slack.wait_until(lambda: len(bot.history(DM)) == 2)

    assert [c.status for c in fake_slack.called("chat.update")] == [429, 200]
    assert [m.text for m in fake_slack.replies("D1")] == ["complete answer"]
    assert bot.store.history(DM)[1].status == MessageStatus.COMPLETE


async def test_a_reply_that_fails_midway_is_marked_incomplete_and_explained(start_bot, fake_slack):
    engine = ScriptedEngine(reply="partial words then more", chunk_size=5, fail_after=2)
    bot = await start_bot(engine=engine, native_streaming=False)

    await bot.post_event(envelope(dm_event("hello", "1700000014.000100"), "Ev140"))
    await fake_slack.wait_until(lambda: len(fake_slack.replies("D1")) == 2)

    shown, notice = [m.text for m in fake_slack.replies("D1")]
    assert shown == f"partial wo\n\n_{say('chat.incomplete', 'en')}_"
    assert notice == say("error.engine", "en")
    await fake_slack.wait_until(lambda: len(bot.history(DM)) == 2)
    assert bot.store.history(DM)[1].status == MessageStatus.INCOMPLETE


async def test_a_reply_that_fails_before_any_text_leaves_one_message_with_the_reason(start_bot, fake_slack):
    bot = await start_bot(engine=ScriptedEngine(fail_after=0), native_streaming=False)

    await bot.post_event(envelope(dm_event("hello", "1700000015.000100"), "Ev150"))
    await fake_slack.wait_until(
        lambda: [m.text for m in fake_slack.replies("D1")] == [say("error.engine", "en")]
    )
