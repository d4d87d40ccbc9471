"""Slash commands: registered with help text and choices, deferred at once, admin-only checked in the core.

Each interaction arrives as INTERACTION_CREATE through the fake gateway; the bot answers at
/interactions/{id}/{token}/callback and follows up at /webhooks/{app}/{token}.
"""

from __future__ import annotations

import time

from bot.learning.service import FinetuneService
from tests.discord.conftest import DiscordBot, StartBot
from tests.discord.fake_discord import MANAGE_GUILD, FakeDiscord, FakeUser
from tests.discord.sink_helpers import reply_done
from tests.fakes import ScriptedEngine
from tests.learning.helpers import seed_versions


async def chat_a_little(bot: DiscordBot, fake: FakeDiscord) -> None:
    someone = fake.new_user("Talker")
    fake.post_message(fake.general, someone, "기억해 줘: 내 이름은 토커", mention_bot=True)
    await fake.wait_for(reply_done(fake, fake.general, "알겠어요."))
    await bot.stored(fake.general, 2)


async def run(fake: FakeDiscord, name: str, user: FakeUser, **kwargs: object) -> tuple[float, str, list[str]]:
    """Run a command; returns (seconds until the callback, callback type and flags, followup texts)."""
    sent = time.monotonic()
    token = fake.run_command(name, user, fake.general, **kwargs)  # type: ignore[arg-type]
    await fake.wait_for(lambda: len(fake.interaction_responses[token]) >= 2)
    callback, *followups = fake.interaction_responses[token]
    kind = f"type={callback.body['type']} flags={callback.body.get('data', {}).get('flags', 0)}"
    return callback.t - sent, kind, [f.body["content"] for f in followups]


async def test_commands_are_registered_with_help_text_choices_and_admin_permissions(
    start_bot: StartBot, fake_discord: FakeDiscord
) -> None:
    await start_bot()
    commands = {c["name"]: c for c in fake_discord.commands}
    assert {"reset", "help", "finetune"} <= set(commands)
    assert all(c["description"] for c in commands.values())
    assert int(commands["reset"]["default_member_permissions"]) == MANAGE_GUILD
    assert commands["help"]["default_member_permissions"] is None
    action, _ = commands["finetune"]["options"]  # the placeholder takes the learning loop's options
    assert [c["value"] for c in action["choices"]] == ["run", "status", "try", "promote", "rollback"]


async def test_reset_by_an_admin_clears_the_channel_history(
    start_bot: StartBot, fake_discord: FakeDiscord
) -> None:
    bot = await start_bot(engine=ScriptedEngine(reply="알겠어요."))
    await chat_a_little(bot, fake_discord)
    fake_discord.post_message(
        fake_discord.random, fake_discord.new_user("Other"), "다른 채널", mention_bot=True
    )
    await bot.stored(fake_discord.random, 2)
    admin = fake_discord.new_user("Admin", roles=[fake_discord.admin_role])

    delay, kind, texts = await run(fake_discord, "reset", admin)

    assert kind == "type=5 flags=64", "deferred (thinking, ephemeral) before the work"
    assert delay < 3.0
    assert texts == ["This channel's conversation was cleared (2 messages)."]
    assert bot.history(fake_discord.general) == []
    assert len(bot.history(fake_discord.random)) == 2, "only this channel's conversation"


async def test_reset_by_a_non_admin_is_refused_and_nothing_is_cleared(
    start_bot: StartBot, fake_discord: FakeDiscord
) -> None:
    bot = await start_bot(engine=ScriptedEngine(reply="알겠어요."))
    await chat_a_little(bot, fake_discord)
    member = fake_discord.new_user("Member")

    # the UI hides /reset from members without Manage Server, but a client could still send it: the core refuses
    _, kind, texts = await run(fake_discord, "reset", member, locale="ko")

    assert kind == "type=5 flags=64"
    assert texts == ["이 명령은 관리자만 쓸 수 있어요. 서버 관리자에게 문의해 주세요."]
    assert len(bot.history(fake_discord.general)) == 2


async def test_admin_role_from_the_settings_may_reset(start_bot: StartBot, fake_discord: FakeDiscord) -> None:
    bot = await start_bot(engine=ScriptedEngine(reply="알겠어요."), admin_role_ids=[fake_discord.helper_role])
    await chat_a_little(bot, fake_discord)
    helper = fake_discord.new_user("Helper", roles=[fake_discord.helper_role])  # no Manage Server

    _, _, texts = await run(fake_discord, "reset", helper)

    assert texts == ["This channel's conversation was cleared (2 messages)."]
    assert bot.history(fake_discord.general) == []
    # with admins named in the settings the command is not hidden in the UI (they lack Manage Server)
    reset = next(c for c in fake_discord.commands if c["name"] == "reset")
    assert reset["default_member_permissions"] is None


async def test_finetune_answers_that_it_is_not_available(
    start_bot: StartBot, fake_discord: FakeDiscord
) -> None:
    await start_bot(
        allowed_guild_ids=[fake_discord.guild_id]
    )  # Manage Server counts for /finetune only there
    admin = fake_discord.new_user("Admin", roles=[fake_discord.admin_role])
    _, _, texts = await run(fake_discord, "finetune", admin, options={"action": "status"})
    assert texts == ["Fine-tuning is not set up on this bot."]


async def test_forget_me_delete_removes_my_turns_and_exactly_the_replies_to_them(
    start_bot: StartBot, fake_discord: FakeDiscord
) -> None:
    def answer(request) -> str:  # the reply names the question it answers (the last of the joined user turns)
        return f"답: {request.turns[-1].content.split(chr(10) * 2)[-1].split(': ', 1)[-1]}"

    # slow replies: both questions are stored before either reply, so the replies interleave with the turns
    bot = await start_bot(engine=ScriptedEngine(reply=answer, chunk_size=2, delay_s=0.02))
    minji, jun = fake_discord.new_user("Minji"), fake_discord.new_user("Jun")
    fake_discord.post_message(fake_discord.general, minji, "민지 질문", mention_bot=True)
    fake_discord.post_message(fake_discord.general, jun, "Jun's question", mention_bot=True)
    turns = await bot.stored(fake_discord.general, 4)
    assert [t.role.value for t in turns] == ["user", "user", "assistant", "assistant"]

    _, kind, texts = await run(fake_discord, "forget-me", minji, options={"delete": "yes"})

    assert kind == "type=5 flags=64"
    assert texts == [
        "Your messages will no longer be used for training. (/forget-me undo:yes takes you back in.)\n"
        "1 of your stored messages and the bot's 1 replies to them were deleted as well."
    ]
    left = bot.history(fake_discord.general)
    assert [(t.role.value, t.content) for t in left] == [
        ("user", "Jun's question"),
        ("assistant", "답: Jun's question"),
    ]
    assert left[1].reply_to_id == left[0].id
    records = FinetuneService(bot.settings, bot.store, bot.engine).records
    assert (
        "forget_me.delete",
        f"discord:{minji.id}",
        {"platform": "discord", "removed": 1, "replies_removed": 1},
    ) in (records.audit_events(["forget_me.delete"]))


async def ask(bot: DiscordBot, fake: FakeDiscord, channel_id: str, user: FakeUser) -> str | None:
    """Mention the bot in a channel and wait for the stored reply; the LoRA the engine was asked for."""
    before = len(bot.history(channel_id))
    fake.post_message(channel_id, user, "질문 있어요", mention_bot=True)
    await bot.stored(channel_id, before + 2)
    return bot.engine.requests[-1].lora


async def test_finetune_try_serves_the_candidate_in_the_admins_channel_and_promote_makes_it_everyones(
    start_bot: StartBot, fake_discord: FakeDiscord
) -> None:
    # Manage Server counts for /finetune in an allowlisted guild only
    bot = await start_bot(
        engine=ScriptedEngine(reply="네."), learning=True, allowed_guild_ids=[fake_discord.guild_id]
    )
    assert bot.finetune is not None
    seed_versions(bot.store, bot.settings.lora_dir)  # v1 in service, v2 a candidate
    await bot.finetune.sync_active()  # what lora-sync does each minute
    admin = fake_discord.new_user("Admin", roles=[fake_discord.admin_role])
    member = fake_discord.new_user("Member")
    general, random = fake_discord.general, fake_discord.random
    commands = {c["name"]: c for c in fake_discord.commands}
    action, channels = commands["finetune"]["options"]
    assert [c["value"] for c in action["choices"]] == ["run", "status", "try", "promote", "rollback"]
    assert channels["name"] == "channels" and not channels.get("required")

    _, kind, refused = await run(fake_discord, "finetune", member, options={"action": "try"})
    assert kind == "type=5 flags=64"
    assert refused == ["Only admins can use this command. Please ask a server admin."]
    assert await ask(bot, fake_discord, general, member) is None

    _, _, tried = await run(fake_discord, "finetune", admin, options={"action": "try"})

    guild = fake_discord.guild_id
    assert tried == [
        f"Trying candidate LoRA v2 in discord:{guild}:{general}; every other channel keeps v1. "
        "/finetune promote makes it everyone's default; /finetune rollback ends the trial."
    ]
    assert await ask(bot, fake_discord, general, member) == "v2"
    assert await ask(bot, fake_discord, random, member) is None
    assert bot.engine.lora == "v1"

    _, _, refused = await run(fake_discord, "finetune", member, options={"action": "promote"}, locale="ko")
    assert refused == ["이 명령은 관리자만 쓸 수 있어요. 서버 관리자에게 문의해 주세요."]
    assert bot.engine.lora == "v1"

    _, _, promoted = await run(fake_discord, "finetune", admin, options={"action": "promote"}, locale="ko")

    assert promoted == ["LoRA v2을(를) 모두의 기본으로 적용했어요 (이전: v1)."]
    assert bot.engine.lora == "v2"
    assert await ask(bot, fake_discord, general, member) is None
    assert await ask(bot, fake_discord, random, member) is None


async def test_finetune_try_in_listed_channels(start_bot: StartBot, fake_discord: FakeDiscord) -> None:
    # Manage Server counts for /finetune in an allowlisted guild only
    bot = await start_bot(
        engine=ScriptedEngine(reply="네."), learning=True, allowed_guild_ids=[fake_discord.guild_id]
    )
    assert bot.finetune is not None
    seed_versions(bot.store, bot.settings.lora_dir)
    await bot.finetune.sync_active()
    admin = fake_discord.new_user("Admin", roles=[fake_discord.admin_role])
    member = fake_discord.new_user("Member")

    # typed as #random in Discord's client, a string option carries the mention <#id>
    options = {"action": "try", "channels": f"<#{fake_discord.random}>"}
    _, _, tried = await run(fake_discord, "finetune", admin, options=options)

    assert f"v2 in discord:{fake_discord.guild_id}:{fake_discord.random};" in tried[0]
    assert await ask(bot, fake_discord, fake_discord.random, member) == "v2"
    assert await ask(bot, fake_discord, fake_discord.general, member) is None
    _, _, ended = await run(fake_discord, "finetune", admin, options={"action": "rollback"})
    assert ended == ["Ended the trial of LoRA v2: every channel gets v1 again."]
    assert await ask(bot, fake_discord, fake_discord.random, member) is None
