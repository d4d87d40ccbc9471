"""Faults on Discord, each named after what breaks, through real discord.py against the loopback Discord. Each test
states what the user sees."""

from __future__ import annotations

from tests.discord.conftest import StartBot
from tests.discord.fake_discord import FakeDiscord
from tests.fakes import ScriptedEngine

REPLY = "Streaming on, whatever the platform does meanwhile. " * 3


def replies_to(fake: FakeDiscord, channel: str, message_id: str) -> list[str]:
    return [
        m["content"]
        for m in fake.bot_messages(channel)
        if (m.get("message_reference") or {}).get("message_id") == message_id
    ]


async def test_platform_5xx_and_429_bursts__the_reply_completes_once_after_the_retries(
    start_bot: StartBot, fake_discord: FakeDiscord
):
    bot = await start_bot(engine=ScriptedEngine(reply=REPLY, chunk_size=15, delay_s=0.1))
    fake_discord.fail("POST", r"/channels/\d+/messages$", status=503, times=1)  # the sink tries once more
    fake_discord.fail("PATCH", r"/messages/\d+$", status=500, times=2)  # discord.py retries 500, 502, 504
    fake_discord.fail("PATCH", r"/messages/\d+$", status=429, retry_after=0.2, times=3)
    person = fake_discord.new_user("Hana")

    message = fake_discord.post_message(fake_discord.general, person, "tell me", mention_bot=True)
    turns = await bot.stored(fake_discord.general, 2)

    failed = [r for r in fake_discord.requests if r.status >= 429]
    assert len(failed) == 6  # every failure was served, and retried
    assert replies_to(fake_discord, fake_discord.general, message) == [REPLY.strip()]  # complete, once
    assert len(fake_discord.bot_messages(fake_discord.general)) == 1
    assert turns[1].content == REPLY


async def test_platform_outage_during_the_whole_stream__the_reply_arrives_once_at_the_end(
    start_bot: StartBot, fake_discord: FakeDiscord
):
    bot = await start_bot(engine=ScriptedEngine(reply=REPLY, chunk_size=15, delay_s=0.1))
    fake_discord.fail("POST", r"/channels/\d+/messages$", status=503, times=2)  # both tries of the first post
    person = fake_discord.new_user("Hana")

    message = fake_discord.post_message(fake_discord.general, person, "tell me", mention_bot=True)
    await bot.stored(fake_discord.general, 2)
    await fake_discord.wait_for(lambda: bool(replies_to(fake_discord, fake_discord.general, message)))

    assert replies_to(fake_discord, fake_discord.general, message) == [REPLY.strip()]
    assert len(fake_discord.bot_messages(fake_discord.general)) == 1


async def test_gateway_dropped_mid_reply__the_reply_completes_once_and_the_bot_answers_after_the_reconnect(
    start_bot: StartBot, fake_discord: FakeDiscord
):
    engine = ScriptedEngine(reply=REPLY, chunk_size=10, delay_s=0.1)
    bot = await start_bot(engine=engine)
    person = fake_discord.new_user("Hana")

    first = fake_discord.post_message(fake_discord.general, person, "tell me", mention_bot=True)
    await fake_discord.wait_for(lambda: len(engine.requests) == 1)
    await fake_discord.drop_gateway()  # mid-reply: edits go over REST and carry on
    await bot.stored(fake_discord.general, 2)
    await fake_discord.wait_for(lambda: _connected(fake_discord))

    second = fake_discord.post_message(fake_discord.general, person, "still there?", mention_bot=True)
    await bot.stored(fake_discord.general, 4)

    assert replies_to(fake_discord, fake_discord.general, first) == [REPLY.strip()]
    assert replies_to(fake_discord, fake_discord.general, second) == [REPLY.strip()]
    assert len(engine.requests) == 2  # nothing answered twice


def _connected(fake: FakeDiscord) -> bool:
    return bool(fake._sockets)  # the bot identified (or resumed) on a new gateway connection
