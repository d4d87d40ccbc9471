"""Events API over HTTP: signed deliveries to the real Bolt app, replies through the fake Web API."""

from __future__ import annotations

import asyncio
import time

from bot.domain import ConversationKey
from tests.fakes import ScriptedEngine
from tests.slack.fake_slack import BOT_USER, TEAM, FakeSlack
from tests.slack.harness import channel_message, dm_event, envelope, mention_event

DM = ConversationKey("slack", TEAM, "D1")
QUIET_S = 0.4  # long enough for a wrongly taken delivery to reach the fake


def final_texts(fake: FakeSlack, channel: str, thread_ts: str | None = None) -> list[str]:
    return [m.text for m in fake.replies(channel, thread_ts)]


async def test_dm_is_answered_and_both_turns_are_stored(start_bot, fake_slack):
    bot = await start_bot(engine=ScriptedEngine(reply="안녕하세요! **반가워요**"), native_streaming=False)

    status, _ = await bot.post_event(envelope(dm_event("안녕?", "1700000001.000100"), "Ev1"))

    assert status == 200
    await fake_slack.wait_until(lambda: len(bot.history(DM)) == 2)
    assert bot.history(DM) == [("user", "안녕?"), ("assistant", "안녕하세요! **반가워요**")]
    assert final_texts(fake_slack, "D1") == ["안녕하세요! *반가워요*"]  # top level of the DM, as mrkdwn
    assert fake_slack.called("chat.postMessage")[0].args["text"] == "_생각 중…_"  # the placeholder first


async def test_a_retried_delivery_and_a_delivery_after_restart_are_not_answered_again(start_bot, fake_slack):
    bot = await start_bot(native_streaming=False)
    delivery = envelope(dm_event("hello", "1700000001.000200"), "Ev2")
    assert (await bot.post_event(delivery))[0] == 200
    await fake_slack.wait_until(lambda: len(bot.history(DM)) == 2)
    posts = len(fake_slack.called("chat.postMessage"))

    status, _ = await bot.post_event(
        delivery, headers={"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "timeout"}
    )
    assert status == 200
    await bot.restart()
    status, _ = await bot.post_event(
        delivery, headers={"X-Slack-Retry-Num": "2", "X-Slack-Retry-Reason": "timeout"}
    )
    assert status == 200

    await asyncio.sleep(QUIET_S)
    assert len(fake_slack.called("chat.postMessage")) == posts
    assert len(bot.history(DM)) == 2
    assert len(bot.engine.requests) == 1


async def test_forged_and_stale_requests_get_401_and_no_reply(start_bot, fake_slack):
    bot = await start_bot(native_streaming=False)
    delivery = envelope(dm_event("hello", "1700000001.000300"), "Ev3")

    forged, _ = await bot.post_event(delivery, signature="v0=" + "0" * 64)
    stale, _ = await bot.post_event(delivery, timestamp=int(time.time()) - 301)

    assert (forged, stale) == (401, 401)
    await asyncio.sleep(QUIET_S)
    assert not fake_slack.called("chat.postMessage")
    assert bot.engine.requests == []
    # the rejected copies did not use up the event id: the genuine delivery is answered
    assert (await bot.post_event(delivery))[0] == 200
    await fake_slack.wait_until(lambda: len(bot.history(DM)) == 2)


async def test_a_mention_is_answered_in_a_thread_that_then_continues_the_conversation(start_bot, fake_slack):
    engine = ScriptedEngine(reply=lambda request: f"answer {len(request.turns)}")
    bot = await start_bot(engine=engine)
    thread = "1700000002.000100"
    key = ConversationKey("slack", TEAM, "C1", thread)

    await bot.post_event(envelope(mention_event("what is Slack?", thread), "Ev10"))
    await fake_slack.wait_until(lambda: len(bot.history(key)) == 2)
    await bot.post_event(
        envelope(channel_message("and Bolt?", "1700000002.000200", thread_ts=thread), "Ev11")
    )
    await fake_slack.wait_until(lambda: len(bot.history(key)) == 4)

    assert [turn for turn, _ in bot.history(key)] == ["user", "assistant", "user", "assistant"]
    assert bot.history(key)[0][1] == "what is Slack?"  # the mention stripped
    second_prompt = [t.content for t in engine.requests[1].turns]
    assert "what is Slack?" in second_prompt[-3] and second_prompt[-2] == "answer 2"
    assert "and Bolt?" in second_prompt[-1]
    assert final_texts(fake_slack, "C1", thread) == ["answer 2", "answer 4"]  # both in the thread
    assert final_texts(fake_slack, "C1") == []  # nothing at the channel's top level


async def test_a_mention_delivered_as_app_mention_and_as_message_is_answered_once(start_bot, fake_slack):
    bot = await start_bot()
    thread = "1700000003.000100"
    key = ConversationKey("slack", TEAM, "C1", thread)
    await bot.post_event(envelope(mention_event("hi", thread), "Ev20"))
    await fake_slack.wait_until(lambda: len(bot.history(key)) == 2)
    # a mention inside the thread: Slack sends both events, with two event ids
    mention = mention_event("again", "1700000003.000200", thread_ts=thread)
    as_message = channel_message(f"<@{BOT_USER}> again", "1700000003.000200", thread_ts=thread)

    await asyncio.gather(
        bot.post_event(envelope(mention, "Ev21")), bot.post_event(envelope(as_message, "Ev22"))
    )

    await fake_slack.wait_until(lambda: len(bot.history(key)) == 4)
    await asyncio.sleep(QUIET_S)
    assert len(bot.history(key)) == 4
    assert len(bot.engine.requests) == 2


async def test_bots_edits_and_unrelated_threads_are_ignored(start_bot, fake_slack):
    bot = await start_bot()
    events = [
        {**dm_event("from a bot", "1700000004.000100"), "bot_id": "BOTHER"},
        dm_event("from myself", "1700000004.000200", user=BOT_USER),
        {**dm_event("edited", "1700000004.000300"), "subtype": "message_changed"},
        {**dm_event("joined", "1700000004.000400"), "subtype": "channel_join"},
        channel_message("a thread the bot is not in", "1700000004.000600", thread_ts="1700000004.000500"),
        {**channel_message("top level chatter", "1700000004.000700", thread_ts=""), "thread_ts": None},
    ]
    for index, event in enumerate(events):
        assert (await bot.post_event(envelope(event, f"Ev3{index}")))[0] == 200

    await asyncio.sleep(QUIET_S)
    assert bot.engine.requests == []
    assert not fake_slack.called("chat.postMessage")
