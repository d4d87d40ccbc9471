"""/persona through the fake gateway: an admin sets the channel's system prompt and the next prompt the engine
receives starts with it; clear goes back to the default; a member is refused and nothing changes."""

from __future__ import annotations

from bot.domain import ChatTurn, Role
from bot.texts import say
from tests.discord.conftest import StartBot
from tests.discord.fake_discord import FakeDiscord
from tests.discord.sink_helpers import reply_done
from tests.discord.test_commands import run
from tests.fakes import ScriptedEngine

PIRATE = "You are a pirate. Answer like one.\n해적처럼 답하세요."


async def ask(fake: FakeDiscord, engine: ScriptedEngine, text: str) -> str:
    """Ask in #general; the system turn of the prompt the engine received for it."""
    asked = len(engine.requests)
    fake.post_message(fake.general, fake.new_user("Asker"), text, mention_bot=True)
    await fake.wait_for(lambda: len(engine.requests) > asked)
    system = engine.requests[-1].turns[0]
    assert system.role is Role.SYSTEM
    return system.content


async def test_an_admin_sets_shows_and_clears_the_channels_system_prompt(
    start_bot: StartBot, fake_discord: FakeDiscord
) -> None:
    bot = await start_bot(engine=ScriptedEngine(reply="Arr."))
    admin = fake_discord.new_user("Admin", roles=[fake_discord.admin_role])
    default = bot.settings.model.system_prompt
    assert await ask(fake_discord, bot.engine, "hello") == default
    await fake_discord.wait_for(reply_done(fake_discord, fake_discord.general, "Arr."))

    _, kind, texts = await run(fake_discord, "persona", admin, options={"action": "set", "text": PIRATE})

    tokens = bot.engine.tokenizer.count_tokens([ChatTurn(Role.SYSTEM, PIRATE)], add_generation_prompt=False)
    budget = bot.engine.tokenizer.context_length - bot.settings.generation.max_new_tokens
    assert kind == "type=5 flags=64"
    assert texts == [
        f"This channel's system prompt is set: it applies from the next message and takes {tokens} tokens of "
        f"the {budget}-token budget in every message."
    ]
    assert await ask(fake_discord, bot.engine, "who are you?") == PIRATE

    _, _, shown = await run(fake_discord, "persona", admin, options={"action": "show"}, locale="ko")
    assert shown == [
        f"이 채널의 시스템 프롬프트예요 (메시지마다 {tokens}토큰, 예산 {budget}토큰 중):\n{PIRATE}"
    ]

    _, _, cleared = await run(fake_discord, "persona", admin, options={"action": "clear"})
    assert cleared[0].startswith("This channel's system prompt is cleared")
    assert await ask(fake_discord, bot.engine, "and now?") == default


async def test_a_member_may_not_set_the_system_prompt(start_bot: StartBot, fake_discord: FakeDiscord) -> None:
    bot = await start_bot(engine=ScriptedEngine(reply="ok"))
    member = fake_discord.new_user("Member")

    _, _, texts = await run(fake_discord, "persona", member, options={"action": "set", "text": PIRATE})

    assert texts == [say("error.not_admin", "en")]
    assert bot.store.system_prompt(bot.key(fake_discord.general)) is None
    assert await ask(fake_discord, bot.engine, "hello") == bot.settings.model.system_prompt


async def test_a_system_prompt_that_would_crowd_out_the_conversation_is_refused(
    start_bot: StartBot, fake_discord: FakeDiscord
) -> None:
    bot = await start_bot(engine=ScriptedEngine(reply="ok"))
    admin = fake_discord.new_user("Admin", roles=[fake_discord.admin_role])
    huge = "해적 " * 2000

    _, _, texts = await run(fake_discord, "persona", admin, options={"action": "set", "text": huge})

    assert texts[0].startswith("That system prompt is too long")
    assert bot.store.system_prompt(bot.key(fake_discord.general)) is None
