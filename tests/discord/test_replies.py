"""Mentions, DMs, threads and replies answered through the real discord.py client, ChatService and SQLite store."""

from __future__ import annotations

import asyncio

from bot.domain import ConversationKey, IncomingMessage, Role
from bot.ports import ReplySink
from tests.discord.conftest import StartBot
from tests.discord.fake_discord import FakeDiscord
from tests.discord.sink_helpers import reply_done
from tests.fakes import ScriptedEngine

REPLY = "안녕하세요, 민지 님! 무엇을 도와드릴까요? Happy to help."


async def test_mention_gets_one_message_edited_to_the_full_reply(
    start_bot: StartBot, fake_discord: FakeDiscord
) -> None:
    bot = await start_bot(engine=ScriptedEngine(reply=REPLY, chunk_size=4, delay_s=0.03))
    minji = fake_discord.new_user("Minji", nick="민지")
    asked = fake_discord.post_message(fake_discord.general, minji, "안녕? 자기소개 해 줘", mention_bot=True)

    await fake_discord.wait_for(reply_done(fake_discord, fake_discord.general, REPLY))

    messages = fake_discord.bot_messages(fake_discord.general)
    assert [m["content"] for m in messages] == [REPLY]
    assert messages[0]["message_reference"]["message_id"] == asked  # a reply to the question
    assert fake_discord.edits_of(messages[0]["id"]), "the reply was streamed by edits"
    typing = fake_discord.log("POST", rf"/channels/{fake_discord.general}/typing$")
    posts = fake_discord.log("POST", rf"/channels/{fake_discord.general}/messages$")
    assert typing and typing[0].t < posts[0].t, "typing was shown until the first text"

    turns = await bot.stored(fake_discord.general, 2)
    assert [(t.role, t.content) for t in turns] == [
        (Role.USER, "안녕? 자기소개 해 줘"),
        (Role.ASSISTANT, REPLY),
    ]
    assert turns[0].author_name == "민지"
    assert turns[0].platform_message_id == asked
    assert "<@" not in bot.engine.requests[0].turns[-1].content  # the mention was stripped


async def test_bots_and_unmentioned_messages_get_no_reply(
    start_bot: StartBot, fake_discord: FakeDiscord
) -> None:
    bot = await start_bot()
    other_bot = fake_discord.new_user("OtherBot", bot=True)
    person = fake_discord.new_user("Jun")
    fake_discord.post_message(fake_discord.general, fake_discord.bot, "talking to myself", mention_bot=True)
    fake_discord.post_message(fake_discord.general, other_bot, "hello bot", mention_bot=True)
    fake_discord.post_message(fake_discord.general, person, "no mention here, just chatting")
    await asyncio.sleep(0.5)
    fake_discord.post_message(fake_discord.random, person, "now with a mention", mention_bot=True)
    await fake_discord.wait_for(reply_done(fake_discord, fake_discord.random, "안녕하세요! Hello!"))

    assert not fake_discord.log(pattern=rf"/channels/{fake_discord.general}/"), (
        "no typing, post or edit there"
    )
    assert bot.history(fake_discord.general) == []
    assert len(bot.engine.requests) == 1


async def test_two_channels_at_once_each_get_their_own_reply_and_history(
    start_bot: StartBot, fake_discord: FakeDiscord
) -> None:
    def echo(request) -> str:  # the reply names the question it answers
        return f"답변: {request.turns[-1].content.split(':', 1)[-1].strip()}. " + "자세한 설명입니다. " * 5

    bot = await start_bot(engine=ScriptedEngine(reply=echo, chunk_size=5, delay_s=0.03))
    a, b = fake_discord.new_user("Ara"), fake_discord.new_user("Bo")
    fake_discord.post_message(fake_discord.general, a, "question one", mention_bot=True)
    fake_discord.post_message(fake_discord.random, b, "question two", mention_bot=True)

    for channel, question in ((fake_discord.general, "question one"), (fake_discord.random, "question two")):
        answer = f"답변: {question}. " + "자세한 설명입니다. " * 5
        await fake_discord.wait_for(reply_done(fake_discord, channel, answer.strip()))
        assert [m["content"] for m in fake_discord.bot_messages(channel)] == [answer.strip()]
        assert [t.content for t in await bot.stored(channel, 2)] == [question, answer]
    # the two streams overlapped in time: each channel has its own edit budget
    general = fake_discord.log(pattern=rf"/channels/{fake_discord.general}/messages")
    random = fake_discord.log(pattern=rf"/channels/{fake_discord.random}/messages")
    assert general[0].t < random[-1].t and random[0].t < general[-1].t


async def test_dm_thread_and_reply_to_the_bot_are_answered(
    start_bot: StartBot, fake_discord: FakeDiscord
) -> None:
    bot = await start_bot(engine=ScriptedEngine(reply="네, 알겠어요."))
    jun = fake_discord.new_user("Jun")

    dm = fake_discord.open_dm(jun)
    fake_discord.post_message(dm, jun, "DM에서는 멘션이 필요 없어요", dm=True)
    await fake_discord.wait_for(reply_done(fake_discord, dm, "네, 알겠어요."))
    assert [t.content for t in await bot.stored(dm, 2, dm=True)] == [
        "DM에서는 멘션이 필요 없어요",
        "네, 알겠어요.",
    ]

    thread = fake_discord.add_channel("help-thread", thread_of=fake_discord.general)
    fake_discord.post_message(thread, jun, "스레드 질문", mention_bot=True)
    await fake_discord.wait_for(reply_done(fake_discord, thread, "네, 알겠어요."))
    assert [t.content for t in await bot.stored(thread, 2)] == ["스레드 질문", "네, 알겠어요."]
    assert bot.history(fake_discord.general) == []  # a thread is a conversation of its own

    answer = fake_discord.bot_messages(thread)[0]["id"]
    fake_discord.post_message(
        thread, jun, "그럼 하나 더요", reply_to=answer
    )  # no mention: a reply to the bot
    assert (await bot.stored(thread, 4))[2].content == "그럼 하나 더요"


async def test_only_messages_for_the_bot_reach_the_core_cleaned_and_attributed(
    start_bot: StartBot, fake_discord: FakeDiscord
) -> None:
    received: list[IncomingMessage] = []

    async def record(msg: IncomingMessage, sink: ReplySink) -> None:
        received.append(msg)
        await sink.send("ok")

    await start_bot(handler=record)
    admin = fake_discord.new_user(
        "Admin", nick="관리자", roles=[fake_discord.admin_role, fake_discord.helper_role]
    )
    jun = fake_discord.new_user("Jun")
    other_bot = fake_discord.new_user("OtherBot", bot=True)
    fake_discord.post_message(fake_discord.general, fake_discord.bot, "my own words", mention_bot=True)
    fake_discord.post_message(fake_discord.general, other_bot, "a bot asking", mention_bot=True)
    fake_discord.post_message(fake_discord.general, jun, "just chatting, no mention")
    asked = fake_discord.post_message(
        fake_discord.general,
        admin,
        f"<@{fake_discord.bot.id}>  이거  좀 봐 줘\n```\n  x = 1\n```",
        mention_bot=False,
    )
    await fake_discord.wait_for(lambda: len(fake_discord.log("POST", r"/messages$")) == 1)
    await asyncio.sleep(0.2)

    (msg,) = received
    assert msg.message_id == asked and msg.platform == "discord" and not msg.is_direct
    assert msg.text == "이거  좀 봐 줘\n```\n  x = 1\n```", (
        "mention stripped, the rest (code indentation) kept"
    )
    assert msg.conversation == ConversationKey("discord", fake_discord.guild_id, fake_discord.general)
    assert msg.author.display_name == "관리자" and msg.author.platform_admin and not msg.author.is_bot
    assert set(msg.author.role_ids) == {fake_discord.admin_role, fake_discord.helper_role}


async def test_a_reply_to_other_peoples_messages_shows_the_model_that_chain_and_keeps_it(
    start_bot: StartBot, fake_discord: FakeDiscord, caplog
) -> None:
    jun, ara = fake_discord.new_user("Jun"), fake_discord.new_user("Ara")
    minji = fake_discord.new_user("Minji", nick="민지")
    # not for the bot, and written before it started: it is fetched, not taken from discord.py's cache
    asked = fake_discord.post_message(fake_discord.general, jun, "내일 회의 몇 시죠?")
    bot = await start_bot(engine=ScriptedEngine(reply="회의는 내일 3시, 2층이에요."))
    answered = fake_discord.post_message(fake_discord.general, ara, "3시요,\n2층 회의실", reply_to=asked)
    caplog.set_level("INFO")

    fake_discord.post_message(
        fake_discord.general, minji, "이거 요약해 줘", mention_bot=True, reply_to=answered
    )
    await fake_discord.wait_for(reply_done(fake_discord, fake_discord.general, "회의는 내일 3시, 2층이에요."))

    quote = "> Jun: 내일 회의 몇 시죠?\n> Ara: 3시요,\n> 2층 회의실"
    assert bot.engine.requests[0].turns[-1].content == f"{quote}\n민지: 이거 요약해 줘"
    assert fake_discord.log("GET", rf"/messages/{asked}$"), (
        "the message above the event's reference was fetched"
    )
    turns = await bot.stored(fake_discord.general, 2)
    assert (turns[0].content, turns[0].quoted) == ("이거 요약해 줘", quote)
    assert "회의" not in caplog.text and "요약" not in caplog.text, "no message text in the logs at INFO"

    # the quote is part of the stored turn: later prompts (after a restart too) show it in the history
    fake_discord.post_message(fake_discord.general, jun, "고마워요", mention_bot=True)
    await bot.stored(fake_discord.general, 4)
    history_turns = [t.content for t in bot.engine.requests[1].turns[1:-1]]
    assert history_turns == [f"{quote}\n민지: 이거 요약해 줘", "회의는 내일 3시, 2층이에요."]


async def test_a_reply_to_what_the_conversation_already_holds_quotes_nothing_again(
    start_bot: StartBot, fake_discord: FakeDiscord
) -> None:
    bot = await start_bot(engine=ScriptedEngine(reply="네, 알겠어요."))
    jun = fake_discord.new_user("Jun")
    asked = fake_discord.post_message(fake_discord.general, jun, "첫 질문", mention_bot=True)
    await fake_discord.wait_for(reply_done(fake_discord, fake_discord.general, "네, 알겠어요."))
    await bot.stored(fake_discord.general, 2)
    answer = fake_discord.bot_messages(fake_discord.general)[0]["id"]

    fake_discord.post_message(
        fake_discord.general, jun, "그럼 하나 더요", reply_to=answer
    )  # the bot's answer
    await bot.stored(fake_discord.general, 4)
    fake_discord.post_message(fake_discord.general, jun, "다시 그 질문", mention_bot=True, reply_to=asked)
    await bot.stored(fake_discord.general, 6)

    assert [r.turns[-1].content for r in bot.engine.requests[1:]] == [
        "Jun: 그럼 하나 더요",
        "Jun: 다시 그 질문",
    ]
    assert [t.quoted for t in bot.history(fake_discord.general)] == [None] * 6
