"""Issue 14 on Slack: workspace allowlist, shared-model commands, safe model text, /reset links, command replays;
signed requests to the real Bolt app, answers through the fake Web API."""

from __future__ import annotations

import asyncio

from bot.domain import ConversationKey
from bot.texts import say
from tests.fakes import ScriptedEngine
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


INJECTED = (
    "Sure! [hi](!channel) [x](@U1) [y](#C9) <!here> <@U2> @channel @here "
    "and the docs: [guide](https://api.slack.com/docs)"
)


async def test_fault_04_model_text_never_becomes_a_mention_or_a_special_command(start_bot, fake_slack):
    bot = await start_bot(engine=ScriptedEngine(reply=INJECTED), native_streaming=False)

    await bot.post_event(envelope(dm_event("ping everyone please", "1700000091.000100"), "EvInject"))
    await fake_slack.wait_until(lambda: len(bot.history(DM)) == 2)
    await fake_slack.wait_until(lambda: any("guide" in t for t in texts(fake_slack, "D1")))

    shown = "".join(texts(fake_slack, "D1"))
    for special in ("<!channel", "<!here", "<@U1", "<@U2", "<#C9"):
        assert special not in shown, special
    assert "@channel" not in shown and "@here" not in shown  # a zero-width space after the @
    assert "hi (!channel)" in shown and "x (@U1)" in shown
    assert "<https://api.slack.com/docs|guide>" in shown, "real links stay links"


async def test_fault_04_natively_streamed_text_cannot_open_a_mention(start_bot, fake_slack):
    bot = await start_bot(engine=ScriptedEngine(reply="hello <!channel> and <@U2>"))
    thread = "1700000091.000200"
    await bot.post_event(envelope(_mention("hi", thread), "EvInjectNative"))
    key = ConversationKey("slack", TEAM, "C1", thread)
    await fake_slack.wait_until(lambda: len(bot.history(key)) == 2)
    await fake_slack.wait_until(lambda: any(m.stopped for m in fake_slack.replies("C1", thread)))
    streamed = [m for m in fake_slack.replies("C1", thread) if m.streamed]
    assert streamed, "streamed natively"
    sent = "".join(m.text for m in streamed)
    assert "hello" in sent
    assert "<!channel>" not in sent and "<@U2>" not in sent


async def test_fault_10_reset_with_a_link_to_another_channel_says_so_and_clears_nothing(
    start_bot, fake_slack
):
    bot = await start_bot(engine=ScriptedEngine(reply="noted"))
    thread = "1700000092.000100"
    key = ConversationKey("slack", TEAM, "C1", thread)
    await bot.post_event(envelope(_mention("remember", thread), "EvLink"))
    await fake_slack.wait_until(lambda: len(bot.history(key)) == 2)
    link = "https://team.slack.com/archives/C1/p1700000092000100"

    await bot.post_command(command_form(fake_slack, "/reset", user="UADMIN", channel="C2", text=link))

    await fake_slack.wait_until(lambda: len(fake_slack.responses) == 1)
    assert fake_slack.responses[0]["text"] == say("cmd.link_other_channel", "en")
    assert len(bot.history(key)) == 2


async def test_fault_11_a_replayed_slash_command_runs_once(start_bot, fake_slack):
    bot = await start_bot(native_streaming=False)
    await bot.post_event(envelope(dm_event("remember this", "1700000093.000100"), "EvReplay"))
    await fake_slack.wait_until(lambda: len(bot.history(DM)) == 2)
    form = command_form(fake_slack, "/reset", user="UADMIN")

    first = await bot.post_command(form)
    await fake_slack.wait_until(lambda: len(fake_slack.responses) == 1)
    await bot.post_event(envelope(dm_event("new words", "1700000093.000200"), "EvReplay2"))
    await fake_slack.wait_until(lambda: len(bot.history(DM)) == 2)
    replayed = await bot.post_command(form)  # the same signed request again, within the five minutes

    assert first[0] == replayed[0] == 200
    await asyncio.sleep(QUIET_S)
    assert len(fake_slack.responses) == 1, "the replay did nothing"
    assert len(bot.history(DM)) == 2, "the conversation since the first reset is still there"


async def test_fault_02_message_left_unanswered_by_a_restart_gets_a_sentence_in_its_thread(
    start_bot, fake_slack
):
    from bot.app import Core, recover
    from bot.chat import ChatService
    from bot.domain import Author, Role

    bot = await start_bot(native_streaming=False)
    thread = "1700000094.000100"
    key = ConversationKey("slack", TEAM, "C1", thread)
    bot.store.add_message(
        key, Role.USER, "hello?", author=Author("UALICE", "Alice"), platform_message_id=f"C1:{thread}"
    )
    chat = ChatService(settings=bot.settings, store=bot.store, engine=bot.engine)
    core = Core(bot.settings, bot.store, bot.engine, chat, None, None)  # type: ignore[arg-type]

    assert await recover(core, [bot.adapter]) == 1
    await fake_slack.wait_until(lambda: texts(fake_slack, "C1", thread) == [say("chat.restarted")])
    assert bot.engine.requests == []
