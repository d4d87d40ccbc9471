"""Slash commands: acknowledged at once, answered ephemerally through the response URL, admins checked in the core."""

from __future__ import annotations

from adapters.slack.mrkdwn import to_mrkdwn
from bot.domain import ConversationKey
from bot.texts import say
from tests.fakes import ScriptedEngine
from tests.learning.helpers import seed_versions
from tests.slack.fake_slack import TEAM
from tests.slack.harness import channel_message, command_form, dm_event, envelope, mention_event

DM = ConversationKey("slack", TEAM, "D1")


async def _conversation_with_two_turns(bot, fake_slack) -> None:
    await bot.post_event(envelope(dm_event("remember this", "1700000020.000100"), "Ev200"))
    await fake_slack.wait_until(lambda: len(bot.history(DM)) == 2)


async def test_reset_by_a_listed_admin_clears_the_conversation(start_bot, fake_slack):
    bot = await start_bot(native_streaming=False)
    await _conversation_with_two_turns(bot, fake_slack)

    status, body = await bot.post_command(command_form(fake_slack, "/reset", user="UADMIN"))

    assert (status, body) == (200, "")  # the ack: nothing shown yet
    await fake_slack.wait_until(lambda: len(fake_slack.responses) == 1)
    answer = fake_slack.responses[0]
    assert answer["response_type"] == "ephemeral"
    assert answer["text"] == say("cmd.reset.done", "en", count=2)
    assert bot.history(DM) == []


async def test_reset_by_anyone_else_is_refused_ephemerally_and_clears_nothing(start_bot, fake_slack):
    bot = await start_bot(native_streaming=False)
    await _conversation_with_two_turns(bot, fake_slack)

    status, _ = await bot.post_command(command_form(fake_slack, "/reset", user="UALICE"))

    assert status == 200
    await fake_slack.wait_until(lambda: len(fake_slack.responses) == 1)
    assert fake_slack.responses[0]["response_type"] == "ephemeral"
    assert fake_slack.responses[0]["text"] == say("error.not_admin", "en")
    assert len(bot.history(DM)) == 2


async def test_a_workspace_owner_is_an_admin_and_korean_users_are_answered_in_korean(start_bot, fake_slack):
    bot = await start_bot(native_streaming=False)
    await _conversation_with_two_turns(bot, fake_slack)

    await bot.post_command(command_form(fake_slack, "/reset", user="UOWNER"))
    await bot.post_command(command_form(fake_slack, "/reset", user="UMINSU"))

    await fake_slack.wait_until(lambda: len(fake_slack.responses) == 2)
    by_user = {r["_name"]: r["text"] for r in fake_slack.responses}
    assert by_user["reset-UOWNER"] == say("cmd.reset.done", "en", count=2)
    assert by_user["reset-UMINSU"] == say("error.not_admin", "ko")


async def test_reset_in_a_channel_names_the_thread_by_its_link(start_bot, fake_slack):
    bot = await start_bot(engine=ScriptedEngine(reply="noted"))
    thread = "1700000021.000100"
    key = ConversationKey("slack", TEAM, "C1", thread)
    await bot.post_event(
        envelope(
            {"type": "app_mention", "channel": "C1", "user": "UALICE", "text": "<@UBOT> hi", "ts": thread},
            "E1",
        )
    )
    await fake_slack.wait_until(lambda: len(bot.history(key)) == 2)
    link = "https://team.slack.com/archives/C1/p1700000021000100"

    await bot.post_command(command_form(fake_slack, "/reset", user="UADMIN", channel="C1", text=link))

    await fake_slack.wait_until(lambda: len(fake_slack.responses) == 1)
    assert bot.history(key) == []


async def test_finetune_takes_its_action_and_is_for_admins(start_bot, fake_slack):
    bot = await start_bot()

    await bot.post_command(command_form(fake_slack, "/finetune", user="UADMIN", text="status"))
    await bot.post_command(command_form(fake_slack, "/finetune", user="UALICE", text="run"))

    await fake_slack.wait_until(lambda: len(fake_slack.responses) == 2)
    by_user = {r["_name"]: r["text"] for r in fake_slack.responses}
    assert by_user["finetune-UADMIN"] == say("cmd.finetune.unavailable", "en")
    assert by_user["finetune-UALICE"] == say("error.not_admin", "en")


async def _talk_in_thread(bot, fake_slack, event, event_id: str, key: ConversationKey, turns: int) -> None:
    await bot.post_event(envelope(event, event_id))
    await fake_slack.wait_until(lambda: len(bot.history(key)) == turns)


async def test_reset_in_a_channel_without_a_link_clears_my_latest_thread_there_and_names_it(
    start_bot, fake_slack, caplog
):
    bot = await start_bot(engine=ScriptedEngine(reply="noted"))
    older, newer, alices, elsewhere = (
        "1700000030.000100",
        "1700000031.000100",
        "1700000032.000100",
        "1700000033.1",
    )
    keys = {ts: ConversationKey("slack", TEAM, "C1", ts) for ts in (older, newer, alices)}
    keys[elsewhere] = ConversationKey("slack", TEAM, "C2", elsewhere)
    await _talk_in_thread(
        bot, fake_slack, mention_event("배포 일정 정리해 줘", older, user="UADMIN"), "E1", keys[older], 2
    )
    await _talk_in_thread(
        bot,
        fake_slack,
        mention_event("What   changed in the\nnew release notes for version two?", newer, user="UADMIN"),
        "E2",
        keys[newer],
        2,
    )
    await _talk_in_thread(bot, fake_slack, mention_event("alice's thread", alices), "E3", keys[alices], 2)
    await _talk_in_thread(
        bot,
        fake_slack,
        mention_event("another channel", elsewhere, user="UADMIN", channel="C2"),
        "E4",
        keys[elsewhere],
        2,
    )
    # the admin writes again in the older thread: that is now their latest conversation in C1
    await _talk_in_thread(
        bot,
        fake_slack,
        channel_message("<@UBOT> 하나 더", "1700000034.000100", thread_ts=older, user="UADMIN"),
        "E5",
        keys[older],
        4,
    )
    caplog.set_level("INFO")

    await bot.post_command(command_form(fake_slack, "/reset", user="UADMIN", channel="C1"))
    await fake_slack.wait_until(lambda: len(fake_slack.responses) == 1)

    assert bot.history(keys[older]) == []
    assert [len(bot.history(keys[k])) for k in (newer, alices, elsewhere)] == [2, 2, 2]
    answer = fake_slack.responses[0]
    assert answer["response_type"] == "ephemeral"
    assert answer["text"] == to_mrkdwn(
        say("cmd.reset.done_thread", "en", count=4, opening="배포 일정 정리해 줘")
    )
    assert "배포" not in caplog.text, "message text never reaches the logs at INFO"

    # the next /reset takes the newer thread, named by its first words (on one line, cut at a word)
    await bot.post_command(command_form(fake_slack, "/reset", user="UADMIN", channel="C1"))
    await fake_slack.wait_until(lambda: len(fake_slack.responses) == 2)
    assert fake_slack.responses[1]["text"] == to_mrkdwn(
        say("cmd.reset.done_thread", "en", count=2, opening="What changed in the new release notes…")
    )
    assert bot.history(keys[newer]) == [] and len(bot.history(keys[alices])) == 2


async def test_reset_in_a_channel_where_i_never_talked_to_the_bot_asks_for_the_link(start_bot, fake_slack):
    bot = await start_bot(engine=ScriptedEngine(reply="noted"))
    thread = "1700000040.000100"
    key = ConversationKey("slack", TEAM, "C1", thread)
    await _talk_in_thread(bot, fake_slack, mention_event("alice asks", thread), "E1", key, 2)

    await bot.post_command(command_form(fake_slack, "/reset", user="UADMIN", channel="C1"))
    await bot.post_command(command_form(fake_slack, "/reset", user="UALICE", channel="C1"))

    await fake_slack.wait_until(lambda: len(fake_slack.responses) == 2)
    by_user = {r["_name"]: r["text"] for r in fake_slack.responses}
    assert by_user["reset-UADMIN"] == to_mrkdwn(say("cmd.reset.no_thread", "en"))
    assert by_user["reset-UALICE"] == say("error.not_admin", "en"), "the core still checks who may reset"
    assert len(bot.history(key)) == 2


async def _asked_lora(bot, fake_slack, event, event_id: str, key: ConversationKey) -> str | None:
    """Post a message, wait for its reply to be stored; the LoRA the engine was asked for."""
    await _talk_in_thread(bot, fake_slack, event, event_id, key, 2)
    return bot.engine.requests[-1].lora


async def test_finetune_try_serves_the_candidate_in_the_admins_channel_and_promote_makes_it_everyones(
    start_bot, fake_slack
):
    bot = await start_bot(engine=ScriptedEngine(reply="noted"), learning=True)
    seed_versions(bot.store, bot.settings.lora_dir)  # v1 in service, v2 a candidate
    await bot.finetune.sync_active()  # what lora-sync does each minute
    assert bot.engine.lora == "v1"

    await bot.post_command(command_form(fake_slack, "/finetune", user="UALICE", channel="C1", text="try"))
    await fake_slack.wait_until(lambda: len(fake_slack.responses) == 1)
    assert fake_slack.responses[0]["text"] == say("error.not_admin", "en")
    assert (
        await _asked_lora(bot, fake_slack, mention_event("q", "1700000050.1"), "E1", _c1("1700000050.1"))
        is None
    )

    status, _ = await bot.post_command(
        command_form(fake_slack, "/finetune", user="UADMIN", channel="C1", text="try")
    )

    assert status == 200
    await fake_slack.wait_until(lambda: len(fake_slack.responses) == 2)
    answer = fake_slack.responses[1]
    assert answer["response_type"] == "in_channel", "the channel sees that it is trying a new version"
    assert answer["text"] == to_mrkdwn(
        say("cmd.finetune.trying", "en", version="v2", channels=f"slack:{TEAM}:C1", active="v1")
    )
    in_trial = await _asked_lora(
        bot, fake_slack, mention_event("q", "1700000051.1"), "E2", _c1("1700000051.1")
    )
    assert in_trial == "v2", "a new thread in the trial channel asks for the candidate"
    assert await _asked_lora(bot, fake_slack, dm_event("q", "1700000052.1"), "E3", DM) is None, (
        "the DM: default"
    )
    assert bot.engine.lora == "v1"

    await bot.post_command(command_form(fake_slack, "/finetune", user="UALICE", channel="C1", text="promote"))
    await bot.post_command(command_form(fake_slack, "/finetune", user="UADMIN", channel="C1", text="promote"))

    await fake_slack.wait_until(lambda: len(fake_slack.responses) == 4)
    texts = sorted(r["text"] for r in fake_slack.responses[2:])
    assert texts == sorted(
        [
            say("error.not_admin", "en"),
            to_mrkdwn(say("cmd.finetune.promoted", "en", version="v2", previous="v1")),
        ]
    )
    assert bot.engine.lora == "v2"
    after = await _asked_lora(bot, fake_slack, mention_event("q", "1700000053.1"), "E4", _c1("1700000053.1"))
    assert after is None, "v2 is everyone's default now: the engine's default serves it"


async def test_finetune_try_in_listed_channels_and_status_shows_the_trial(start_bot, fake_slack):
    bot = await start_bot(engine=ScriptedEngine(reply="noted"), learning=True)
    seed_versions(bot.store, bot.settings.lora_dir)
    await bot.finetune.sync_active()

    # with escaping on (the manifest's should_escape), Slack sends "#random" as <#C2|random>
    await bot.post_command(
        command_form(fake_slack, "/finetune", user="UADMIN", channel="C1", text="try <#C2|random>")
    )
    await fake_slack.wait_until(lambda: len(fake_slack.responses) == 1)
    c2 = ConversationKey("slack", TEAM, "C2", "1700000060.1")
    assert (
        await _asked_lora(bot, fake_slack, mention_event("q", "1700000060.1", channel="C2"), "E1", c2) == "v2"
    )
    assert (
        await _asked_lora(bot, fake_slack, mention_event("q", "1700000061.1"), "E2", _c1("1700000061.1"))
        is None
    )

    await bot.post_command(command_form(fake_slack, "/finetune", user="UADMIN", channel="C1", text="status"))
    await fake_slack.wait_until(lambda: len(fake_slack.responses) == 2)
    assert f"LoRA v2 in slack:{TEAM}:C2" in fake_slack.responses[1]["text"]


def _c1(thread: str) -> ConversationKey:
    return ConversationKey("slack", TEAM, "C1", thread)
