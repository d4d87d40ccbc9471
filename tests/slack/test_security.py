"""Issue 14 on Slack: workspace allowlist, shared-model commands, safe model text, /reset links, command replays;
signed requests to the real Bolt app, answers through the fake Web API."""

from __future__ import annotations

import asyncio

from bot.domain import ConversationKey
from bot.texts import say
from tests.slack.fake_slack import TEAM
from tests.slack.harness import command_form, dm_event, envelope, mention_event

DM = ConversationKey("slack", TEAM, "D1")
QUIET_S = 0.4
SHARED_REFUSAL = say(
    "error.shared_model_admin",
    "en",
    allowlist="HANBOT_SLACK__ALLOWED_TEAM_IDS",
    admin_ids="HANBOT_SLACK__ADMIN_USER_IDS",
)


def texts(fake, channel: str, thread_ts: str | None = None) -> list[str]:
    return [m.text for m in fake.replies(channel, thread_ts)]


async def test_fault_13_event_from_another_workspace_is_refused(start_bot, fake_slack):
    bot = await start_bot(native_streaming=False, allowed_team_ids=["T0THERS"])

    status, _ = await bot.post_event(envelope(dm_event("hello", "1700000090.000100"), "EvForeign"))

    assert status == 200
    await fake_slack.wait_until(lambda: texts(fake_slack, "D1") == [say("error.not_allowed_here")])
    await asyncio.sleep(QUIET_S)
    assert bot.engine.requests == [], "a foreign workspace's message never reaches the model"
    assert bot.history(DM) == []


async def test_fault_13_allowlisted_workspace_is_answered(start_bot, fake_slack):
    bot = await start_bot(native_streaming=False, allowed_team_ids=[TEAM])
    await bot.post_event(envelope(dm_event("hello", "1700000090.000200"), "EvHome"))
    await fake_slack.wait_until(lambda: len(bot.history(DM)) == 2)


async def test_fault_01_workspace_owner_needs_an_allowlist_to_finetune(start_bot, fake_slack):
    bot = await start_bot(native_streaming=False)

    await bot.post_command(command_form(fake_slack, "/finetune", user="UOWNER", text="run"))
    await fake_slack.wait_until(lambda: len(fake_slack.responses) == 1)
    assert fake_slack.responses[0]["text"] == SHARED_REFUSAL

    # the same owner inside an allowlisted workspace may (the placeholder /finetune answers)
    await bot.stop()
    bot.settings.slack.allowed_team_ids.append(TEAM)
    await bot.start()
    await bot.post_command(command_form(fake_slack, "/finetune", user="UOWNER", text="run"))
    await fake_slack.wait_until(lambda: len(fake_slack.responses) == 2)
    assert fake_slack.responses[1]["text"] == say("cmd.finetune.unavailable")


async def test_fault_01_commands_from_another_workspace_are_refused(start_bot, fake_slack):
    bot = await start_bot(native_streaming=False, allowed_team_ids=["T0THERS"])
    await bot.post_command(command_form(fake_slack, "/reset", user="UOWNER"))
    await fake_slack.wait_until(lambda: len(fake_slack.responses) == 1)
    assert fake_slack.responses[0]["text"] == say("error.not_allowed_here")
    assert bot.engine.requests == []


def _mention(text: str, ts: str) -> dict:
    return mention_event(text, ts)
