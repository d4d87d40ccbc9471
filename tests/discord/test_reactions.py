"""👍/👎 on the bot's replies become feedback rows (bot.feedback): MESSAGE_REACTION_ADD / _REMOVE through the fake
gateway, which sends them only when the bot asked for the reaction intents."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import select

from bot.domain import Role
from bot.store.conversations import ConversationStore
from bot.store.models import Feedback
from tests.discord.conftest import DiscordBot, StartBot
from tests.discord.fake_discord import FakeDiscord
from tests.discord.sink_helpers import reply_done
from tests.fakes import ScriptedEngine


def votes(store: ConversationStore) -> list[tuple[int, str, int]]:
    with store.session() as session:
        rows = session.scalars(select(Feedback).order_by(Feedback.id)).all()
        return [(row.message_id, row.user_id, row.value) for row in rows]


async def a_reply(bot: DiscordBot, fake: FakeDiscord) -> tuple[int, list[str], str]:
    """Someone asks, the bot answers: (the stored reply's id, the ids of its Discord messages, the question's id)."""
    asker = fake.new_user("Asker")
    question = fake.post_message(fake.general, asker, "질문 있어요", mention_bot=True)
    await fake.wait_for(reply_done(fake, fake.general, "답이에요."))
    _, reply = await bot.stored(fake.general, 2)
    assert reply.role is Role.ASSISTANT
    posts = [m["id"] for m in fake.bot_messages(fake.general)]
    # the posts are linked to the reply just after it is stored
    await fake.wait_for(lambda: all(bot.store.reply_shown_in("discord", post) for post in posts))
    return reply.id, posts, question


async def test_a_thumb_on_a_bot_reply_is_recorded_and_removing_it_removes_it(
    start_bot: StartBot, fake_discord: FakeDiscord
) -> None:
    bot = await start_bot(engine=ScriptedEngine(reply="답이에요."))
    reply_id, posts, _ = await a_reply(bot, fake_discord)
    fan = fake_discord.new_user("Fan")

    fake_discord.react(fake_discord.general, posts[0], fan, "👍")
    await fake_discord.wait_for(lambda: votes(bot.store) == [(reply_id, fan.id, 1)])

    fake_discord.react(fake_discord.general, posts[0], fan, "👎🏽")  # a change of mind, in any skin tone
    await fake_discord.wait_for(lambda: votes(bot.store) == [(reply_id, fan.id, -1)])

    fake_discord.react(fake_discord.general, posts[0], fan, "👎🏽", removed=True)
    await fake_discord.wait_for(lambda: votes(bot.store) == [])


async def test_only_thumbs_on_the_bots_own_replies_count(
    start_bot: StartBot, fake_discord: FakeDiscord
) -> None:
    bot = await start_bot(engine=ScriptedEngine(reply="답이에요."))
    reply_id, posts, question = await a_reply(bot, fake_discord)
    fan = fake_discord.new_user("Fan")

    fake_discord.react(
        fake_discord.general, question, fan, "👍"
    )  # on a person's message: the author is not the bot
    fake_discord.react(fake_discord.general, posts[0], fan, "🎉")  # not a thumb
    fake_discord.react(fake_discord.general, posts[0], fan, "👎")
    await fake_discord.wait_for(lambda: votes(bot.store) == [(reply_id, fan.id, -1)])
    fake_discord.react(
        fake_discord.general, posts[0], fan, "👍", removed=True
    )  # never cast: nothing to remove
    fake_discord.react(fake_discord.general, posts[0], fake_discord.bot, "👍")  # the bot itself
    other = fake_discord.new_user("Other")
    fake_discord.react(fake_discord.general, posts[-1], other, "👍")
    await fake_discord.wait_for(lambda: votes(bot.store) == [(reply_id, fan.id, -1), (reply_id, other.id, 1)])


async def test_reactions_outside_the_allowed_guilds_are_ignored(
    start_bot: StartBot, fake_discord: FakeDiscord, caplog: pytest.LogCaptureFixture
) -> None:
    bot = await start_bot(allowed_guild_ids=["111111111111111111"])
    # a reply shown in this guild before the allowlist left it out
    key = bot.key(fake_discord.general)
    question = bot.store.add_message(key, Role.USER, "질문", platform_message_id="1")
    reply = bot.store.add_message(key, Role.ASSISTANT, "답", reply_to=question.id if question else None)
    assert reply is not None
    bot.store.link_posts(reply.id, "discord", ["2"])
    fan = fake_discord.new_user("Fan")

    with caplog.at_level(logging.INFO, logger="bot.feedback"):
        fake_discord.react(fake_discord.general, "2", fan, "👍")
        await fake_discord.wait_for(lambda: "does not serve" in caplog.text)

    assert votes(bot.store) == []
