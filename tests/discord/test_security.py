"""Issue 14 on Discord: admin rights per guild (fault 1), through discord.py against the loopback fake."""

from __future__ import annotations

from bot.texts import say
from tests.discord.conftest import StartBot
from tests.discord.fake_discord import FakeDiscord
from tests.discord.sink_helpers import reply_done
from tests.discord.test_commands import run
from tests.fakes import ScriptedEngine

NOT_SET_UP = "Fine-tuning is not set up on this bot."  # the placeholder /finetune's answer: the handler ran


async def test_fault_01_foreign_guild_cannot_finetune(start_bot: StartBot, fake_discord: FakeDiscord) -> None:
    """No allowlist: a Manage Server member of whichever guild added the bot may not act on the shared model."""
    await start_bot()
    owner_of_some_guild = fake_discord.new_user("Mallory", roles=[fake_discord.admin_role])

    for action in ("run", "rollback"):
        _, _, texts = await run(fake_discord, "finetune", owner_of_some_guild, options={"action": action})
        assert texts == [
            say(
                "error.shared_model_admin",
                "en",
                allowlist="HANBOT_DISCORD__ALLOWED_GUILD_IDS",
                admin_ids="HANBOT_DISCORD__ADMIN_USER_IDS",
            )
        ]


async def test_fault_01_guild_outside_the_allowlist_is_refused_commands_and_messages(
    start_bot: StartBot, fake_discord: FakeDiscord
) -> None:
    bot = await start_bot(engine=ScriptedEngine(reply="hello"), allowed_guild_ids=["111111111111111111"])
    admin = fake_discord.new_user("Mallory", roles=[fake_discord.admin_role])

    _, _, finetune = await run(fake_discord, "finetune", admin, options={"action": "run"})
    _, _, reset = await run(fake_discord, "reset", admin)
    fake_discord.post_message(fake_discord.general, admin, "hi", mention_bot=True)
    await fake_discord.wait_for(reply_done(fake_discord, fake_discord.general, say("error.not_allowed_here")))

    assert finetune == reset == [say("error.not_allowed_here")]
    assert bot.history(fake_discord.general) == [], "nothing from a foreign guild is stored"
    assert bot.engine.requests == []


async def test_fault_01_allowlisted_guild_admins_and_listed_admins_may_finetune(
    start_bot: StartBot, fake_discord: FakeDiscord
) -> None:
    listed = fake_discord.new_user("Listed")  # no Manage Server
    await start_bot(allowed_guild_ids=[fake_discord.guild_id], admin_user_ids=[listed.id])
    admin = fake_discord.new_user("Admin", roles=[fake_discord.admin_role])
    member = fake_discord.new_user("Member")

    assert (await run(fake_discord, "finetune", admin, options={"action": "run"}))[2] == [NOT_SET_UP]
    assert (await run(fake_discord, "finetune", listed, options={"action": "run"}))[2] == [NOT_SET_UP]
    assert (await run(fake_discord, "finetune", member, options={"action": "run"}))[2] == [
        say("error.not_admin")
    ]


async def test_listed_admin_may_finetune_without_an_allowlist(
    start_bot: StartBot, fake_discord: FakeDiscord
) -> None:
    listed = fake_discord.new_user("Listed")
    await start_bot(admin_user_ids=[listed.id])
    assert (await run(fake_discord, "finetune", listed, options={"action": "status"}))[2] == [NOT_SET_UP]


async def test_fault_02_message_left_unanswered_by_a_restart_is_answered_in_its_channel(
    start_bot: StartBot, fake_discord: FakeDiscord
) -> None:
    from bot.app import Core, recover
    from bot.chat import ChatService
    from bot.domain import Author, Role

    bot = await start_bot(engine=ScriptedEngine(reply="Sorry for the wait: hello!"))
    asker = fake_discord.new_user("Asker")
    # what a process killed before answering leaves behind: the user's turn, stored, and no reply
    asked = fake_discord.post_message(fake_discord.random, asker, "anyone?", mention_bot=False)
    bot.store.add_message(
        bot.key(fake_discord.random),
        Role.USER,
        "anyone?",
        author=Author(asker.id, "Asker"),
        platform_message_id=asked,
    )
    bot.settings.chat.recovery = "answer"
    chat = ChatService(settings=bot.settings, store=bot.store, engine=bot.engine)
    core = Core(bot.settings, bot.store, bot.engine, chat, None, None)  # type: ignore[arg-type]

    assert await recover(core, [bot.adapter]) == 1
    await fake_discord.wait_for(reply_done(fake_discord, fake_discord.random, "Sorry for the wait: hello!"))
    first = fake_discord.bot_messages(fake_discord.random)[0]
    assert first["message_reference"]["message_id"] == asked, "a reply to the message it answers"
    assert [m.role for m in bot.history(fake_discord.random)] == [Role.USER, Role.ASSISTANT]
