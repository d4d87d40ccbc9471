"""/persona in Slack: typed words (``/persona set <prompt>``), answered through the response URL; the channel's
system prompt reaches the system turn of the next prompt in every thread of the channel, and in a DM the DM's."""

from __future__ import annotations

from adapters.slack.mrkdwn import to_mrkdwn
from bot.domain import ChatTurn, Role
from bot.texts import say
from tests.fakes import ScriptedEngine
from tests.slack.harness import SlackBot, command_form, dm_event, envelope, mention_event

PIRATE = "You are a pirate. Answer like one."


async def command(bot: SlackBot, name: str, *, user: str, text: str = "", channel: str = "C1") -> str:
    answered = len(bot.fake.responses)
    status, _ = await bot.post_command(command_form(bot.fake, name, user=user, channel=channel, text=text))
    assert status == 200
    await bot.fake.wait_until(lambda: len(bot.fake.responses) > answered)
    answer = bot.fake.responses[-1]
    assert answer["response_type"] == "ephemeral"
    return str(answer["text"])


async def system_turn_of_next_prompt(bot: SlackBot, event: dict, event_id: str) -> str:
    asked = len(bot.engine.requests)
    await bot.post_event(envelope(event, event_id))
    await bot.fake.wait_until(lambda: len(bot.engine.requests) > asked)
    system = bot.engine.requests[-1].turns[0]
    assert system.role is Role.SYSTEM
    return system.content


async def test_an_admin_sets_the_channels_system_prompt_for_its_threads_and_clears_it(start_bot):
    bot = await start_bot(engine=ScriptedEngine(reply="Arr."), native_streaming=False)
    default = bot.settings.model.system_prompt

    answer = await command(bot, "/persona", user="UADMIN", text=f"set {PIRATE}")

    tokens = bot.engine.tokenizer.count_tokens([ChatTurn(Role.SYSTEM, PIRATE)], add_generation_prompt=False)
    budget = bot.engine.tokenizer.context_length - bot.settings.generation.max_new_tokens
    assert answer == to_mrkdwn(say("cmd.persona.set", "en", tokens=tokens, budget=budget))
    thread = mention_event("who are you?", "1700000600.000100")
    assert await system_turn_of_next_prompt(bot, thread, "EvP1") == PIRATE
    assert await system_turn_of_next_prompt(bot, dm_event("hi", "1700000601.000100"), "EvP2") == default

    shown = await command(bot, "/persona", user="UMINSU", text="show")  # a Korean member: refused, in Korean
    assert shown == to_mrkdwn(say("error.not_admin", "ko"))
    cleared = await command(bot, "/persona", user="UADMIN", text="clear")
    assert cleared.startswith("This channel's system prompt is cleared")
    later = mention_event("and now?", "1700000602.000100")
    assert await system_turn_of_next_prompt(bot, later, "EvP3") == default


async def test_a_non_admin_may_not_set_it(start_bot):
    bot = await start_bot(engine=ScriptedEngine(reply="ok"), native_streaming=False)

    answer = await command(bot, "/persona", user="UALICE", text=f"set {PIRATE}")

    assert answer == to_mrkdwn(say("error.not_admin", "en"))
    thread = mention_event("who are you?", "1700000610.000100")
    assert await system_turn_of_next_prompt(bot, thread, "EvP4") == bot.settings.model.system_prompt
