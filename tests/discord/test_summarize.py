"""/summarize through the fake gateway: the channel's history is read from the fake Discord's REST API, reaches the
engine in one request, and the summary streams into the channel; nothing of it is stored."""

from __future__ import annotations

from bot.domain import Role
from bot.texts import say
from tests.discord.conftest import StartBot
from tests.discord.fake_discord import FakeDiscord
from tests.discord.sink_helpers import reply_done
from tests.discord.test_commands import run
from tests.fakes import ScriptedEngine

SUMMARY = "배포는 금요일로 정했고, 민수가 릴리스 노트를 써요."


async def test_summarize_reads_the_channel_history_and_streams_the_summary(
    start_bot: StartBot, fake_discord: FakeDiscord
) -> None:
    bot = await start_bot(engine=ScriptedEngine(reply=SUMMARY))
    minsu, jia = fake_discord.new_user("Minsu"), fake_discord.new_user("Jia")
    fake_discord.post_message(fake_discord.random, jia, "other channel: not part of it")
    fake_discord.post_message(fake_discord.general, minsu, "배포는 언제 할까요?")
    fake_discord.post_message(fake_discord.general, jia, "금요일 어때요? 릴리스 노트는 누가 써요?")
    fake_discord.post_message(fake_discord.general, minsu, "제가 쓸게요.")

    _, kind, texts = await run(fake_discord, "summarize", jia, options={"count": "10"})

    assert kind == "type=5 flags=64"
    assert texts == [say("cmd.summarize.done", "en", count=3)]
    await fake_discord.wait_for(reply_done(fake_discord, fake_discord.general, SUMMARY))
    assert any("/channels/" in r.path and r.path.endswith("/messages") for r in fake_discord.log("GET"))
    (request,) = bot.engine.requests
    system, user = request.turns
    assert system.role is Role.SYSTEM and system.content == say(
        "summarize.instruction", "ko"
    )  # their language
    assert user.role is Role.USER
    lines = user.content.splitlines()
    expected = [
        "Minsu: 배포는 언제 할까요?",
        "Jia: 금요일 어때요? 릴리스 노트는 누가 써요?",
        "Minsu: 제가 쓸게요.",
    ]
    assert lines[-3:] == expected  # oldest first
    assert "other channel" not in user.content
    assert bot.history(fake_discord.general) == []  # neither the messages read nor the summary are stored


async def test_summarize_takes_only_the_last_count_messages_and_refuses_a_bad_count(
    start_bot: StartBot, fake_discord: FakeDiscord
) -> None:
    bot = await start_bot(engine=ScriptedEngine(reply="Short summary."))
    member = fake_discord.new_user("Member")
    for number in range(5):
        fake_discord.post_message(fake_discord.general, member, f"message number {number}")

    _, _, refused = await run(fake_discord, "summarize", member, options={"count": "many"})
    assert refused == [say("cmd.summarize.bad_count", "en", most=200)]
    assert bot.engine.requests == []

    _, _, texts = await run(fake_discord, "summarize", member, options={"count": "2"})
    assert texts == [say("cmd.summarize.done", "en", count=2)]
    (request,) = bot.engine.requests
    assert request.turns[0].content == say("summarize.instruction", "en")
    assert request.turns[1].content.splitlines()[-2:] == [
        "Member: message number 3",
        "Member: message number 4",
    ]
    assert "message number 2" not in request.turns[1].content


async def test_summarize_in_a_guild_outside_the_allowlist_is_refused_without_reading_anything(
    start_bot: StartBot, fake_discord: FakeDiscord
) -> None:
    bot = await start_bot(engine=ScriptedEngine(reply="no"), allowed_guild_ids=["111111111111111111"])
    member = fake_discord.new_user("Mallory")
    fake_discord.post_message(fake_discord.general, member, "a secret plan")

    _, _, texts = await run(fake_discord, "summarize", member)

    assert texts == [say("error.not_allowed_here")]
    assert not fake_discord.log("GET", r"/channels/\d+/messages$")
    assert bot.engine.requests == []
