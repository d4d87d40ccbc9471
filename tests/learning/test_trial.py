"""/finetune try and promote, candidates, and which version each conversation's request names.

The real FinetuneService, LearningRecords, ChatService and CommandRegistry on SQLite, with a recording engine: what
matters here is what the engine is asked for (``GenerationRequest.lora``), and what survives a restart.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import pytest

from adapters.console import ConsoleAdapter
from bot.app import build_core
from bot.chat import ChatService
from bot.commands import CommandContext, CommandRegistry
from bot.domain import BASE_MODEL, Author, ConversationKey, IncomingMessage
from bot.errors import ConfigError, EngineError
from bot.learning.commands import learning_commands
from bot.learning.routing import BadChannelList, parse_channels
from bot.learning.service import FinetuneService
from bot.permissions import AdminPolicy
from bot.settings import EngineSettings, Settings, load_settings
from bot.store.conversations import ConversationStore
from bot.store.learning_records import LearningRecords
from tests.fakes import RecordingSink
from tests.learning.conftest import RecordingEngine
from tests.learning.helpers import TRAINER, seed_versions

ADMIN = Author(id="U-admin", display_name="Admin")
MEMBER = Author(id="U-member", display_name="Member")
TRIAL_CHANNEL = ConversationKey("slack", "T1", "C1")
OTHER_CHANNEL = ConversationKey("slack", "T1", "C2")


def _settings(tmp_path: Path, **finetune: object) -> Settings:
    return load_settings(
        data_dir=tmp_path / "data",
        scheduler={"enabled": False},
        slack={"admin_user_ids": [ADMIN.id]},
        finetune=finetune,
    )


class Bot:
    """One bot process: engine, learning service, chat service and commands on a shared database."""

    def __init__(self, settings: Settings, store: ConversationStore) -> None:
        self.engine = RecordingEngine(reply="ok")
        self.service = FinetuneService(settings, store, self.engine, trainer=TRAINER)
        self.chat = ChatService(
            settings=settings, store=store, engine=self.engine, lora_for=self.service.lora_for
        )
        self.commands = CommandRegistry(AdminPolicy(settings), learning_commands(self.service))
        self._sent = 0

    async def command(
        self, action: str, *, by: Author = ADMIN, where: ConversationKey = TRIAL_CHANNEL, **args: str
    ) -> str:
        ctx = CommandContext(
            platform=where.platform, conversation=where, invoker=by, args={"action": action, **args}
        )
        return (await self.commands.run("finetune", ctx)).text

    async def ask(self, where: ConversationKey) -> str | None:
        """Say something in a conversation; returns the LoRA the engine was asked for."""
        self._sent += 1
        message = IncomingMessage(
            platform=where.platform,
            conversation=where,
            message_id=f"{id(self)}-{self._sent}",
            author=MEMBER,
            text="hello",
        )
        await self.chat.handle(message, RecordingSink())
        return self.engine.requests[-1].lora


async def test_a_trial_serves_the_candidate_in_its_channel_only_until_it_is_promoted(
    store: ConversationStore, tmp_path: Path
) -> None:
    settings = _settings(tmp_path)
    seed_versions(store, settings.lora_dir)
    bot = Bot(settings, store)
    await bot.service.restore()
    assert bot.engine.calls == ["load_lora:v1", "use_lora:v1"]
    assert await bot.ask(TRIAL_CHANNEL) is None, "no trial: the engine's default (v1)"

    reply = await bot.command("try")

    assert reply == (
        "Trying candidate LoRA v2 in slack:T1:C1; every other channel keeps v1. "
        "/finetune promote makes it everyone's default; /finetune rollback ends the trial."
    )
    assert bot.engine.calls[-1] == "load_lora:v2", "loaded, not made the default"
    assert bot.engine.lora == "v1"
    thread_in_trial_channel = ConversationKey("slack", "T1", "C1", "1700000000.000100")
    assert await bot.ask(thread_in_trial_channel) == "v2"
    assert await bot.ask(OTHER_CHANNEL) is None
    status = await bot.command("status")
    assert "In service: LoRA v1" in status
    assert "On trial: LoRA v2 in slack:T1:C1 (since " in status and "by slack:U-admin)" in status

    # a restart (a new process on the same database) serves the trial again
    again = Bot(settings, store)
    await again.service.restore()
    assert again.engine.calls == ["load_lora:v1", "use_lora:v1", "load_lora:v2"]
    assert await again.ask(TRIAL_CHANNEL) == "v2"
    assert await again.ask(OTHER_CHANNEL) is None

    promoted = await again.command("promote")

    assert promoted == "LoRA v2 is now everyone's default (was v1)."
    assert again.engine.lora == "v2"
    assert await again.ask(TRIAL_CHANNEL) is None and await again.ask(OTHER_CHANNEL) is None
    records = LearningRecords(store)
    active = records.active_version()
    assert active is not None and active.name == "v2" and active.promoted_at is not None
    assert records.open_trial() is None
    # the first process follows at its next lora-sync: the default is v2, the trial is over
    await bot.service.sync_active()
    assert bot.engine.lora == "v2" and await bot.ask(TRIAL_CHANNEL) is None
    actions = [(a, actor) for a, actor, _ in records.audit_events(["finetune.try", "finetune.promote"])]
    assert actions[-2:] == [("finetune.try", "slack:U-admin"), ("finetune.promote", "slack:U-admin")]


async def test_try_in_listed_channels_and_korean_replies(
    sqlite_store: ConversationStore, tmp_path: Path
) -> None:
    settings = _settings(tmp_path)
    seed_versions(sqlite_store, settings.lora_dir)
    bot = Bot(settings, sqlite_store)

    reply = await bot.command("try", channels="<#C2|random> <#C3>")

    assert "slack:T1:C2, slack:T1:C3" in reply
    assert await bot.ask(OTHER_CHANNEL) == "v2"
    assert await bot.ask(ConversationKey("slack", "T1", "C3")) == "v2"
    assert await bot.ask(TRIAL_CHANNEL) is None, "the admin's own channel is not in the list"
    assert await bot.ask(ConversationKey("slack", "T2", "C2")) is None, "another workspace's C2"
    ko = CommandContext(
        platform="slack",
        conversation=TRIAL_CHANNEL,
        invoker=ADMIN,
        args={"action": "try", "channels": "<@U123>"},
        lang="ko",
    )
    assert "채널로 읽지 못했어요" in (await bot.commands.run("finetune", ko)).text
    assert await bot.ask(OTHER_CHANNEL) == "v2", "a bad list changes nothing"


async def test_try_and_promote_are_for_admins_only(sqlite_store: ConversationStore, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    seed_versions(sqlite_store, settings.lora_dir)
    bot = Bot(settings, sqlite_store)
    await bot.service.restore()

    for action in ("try", "promote"):
        assert (
            await bot.command(action, by=MEMBER)
            == "Only admins can use this command. Please ask a server admin."
        )

    records = LearningRecords(sqlite_store)
    assert records.open_trial() is None
    active = records.active_version()
    assert active is not None and active.name == "v1"
    assert bot.engine.calls == ["load_lora:v1", "use_lora:v1"]
    assert await bot.ask(TRIAL_CHANNEL) is None


async def test_rollback_ends_the_trial_first_then_goes_back_a_version(
    sqlite_store: ConversationStore, tmp_path: Path
) -> None:
    settings = _settings(tmp_path)
    seed_versions(sqlite_store, settings.lora_dir)
    bot = Bot(settings, sqlite_store)
    await bot.service.restore()
    await bot.command("try")
    assert await bot.ask(TRIAL_CHANNEL) == "v2"

    ended = await bot.command("rollback")

    assert ended == "Ended the trial of LoRA v2: every channel gets v1 again."
    assert await bot.ask(TRIAL_CHANNEL) is None
    assert bot.engine.lora == "v1", "the default did not move"
    assert "Candidate: LoRA v2" in await bot.command("status"), "still there to try again"

    rolled = await bot.command("rollback")
    assert rolled == "Rolled back from v1 to the base model."
    assert bot.engine.lora is None
    assert await bot.command("rollback") == (
        "There is nothing to roll back: the base model is already answering."
    ), "the candidate v2 was never promoted: no rollback goes to it"


async def test_nothing_to_try_or_promote(sqlite_store: ConversationStore, tmp_path: Path) -> None:
    bot = Bot(_settings(tmp_path), sqlite_store)
    assert (await bot.command("try")).startswith("There is no candidate to try")
    assert (await bot.command("promote")).startswith("There is no candidate to promote")
    assert await bot.ask(TRIAL_CHANNEL) is None


async def test_a_new_candidate_replaces_an_untried_one_but_not_the_one_on_trial(
    store: ConversationStore, tmp_path: Path
) -> None:
    settings = _settings(tmp_path)
    _, v2 = seed_versions(store, settings.lora_dir)
    records = LearningRecords(store)
    run = records.create_run(trigger="schedule", started_by="scheduler", owner="x")

    v3_dir = settings.lora_dir / "versions" / "v3"
    v3, dropped = records.add_candidate(name="v3", path=str(v3_dir), run_id=run.id, eval_loss=0.7, actor="s")
    assert [v.name for v in dropped] == ["v2"]
    newest = records.newest_candidate()
    assert newest is not None and newest.name == "v3"

    records.start_trial(v3.id, ["slack:T1:C1"], actor="slack:U-admin")
    _, dropped = records.add_candidate(
        name="v4", path=str(settings.lora_dir / "v4"), run_id=run.id, eval_loss=0.7, actor="s"
    )
    assert dropped == [], "v3 is on trial: kept"
    trial = records.open_trial()
    assert trial is not None and trial.version.name == "v3"
    newest = records.newest_candidate()
    assert newest is not None and newest.name == "v4"
    assert v2.name not in {v.name for v in records.versions() if v.retired_at is None}


async def test_version_routes_send_workspaces_and_channels_to_their_version(
    sqlite_store: ConversationStore, tmp_path: Path
) -> None:
    routes = {"slack:T1": "v2", "slack:T1:C9": "base", "discord:G1:CH1": "v1", "slack:T1:C8": "v1"}
    settings = _settings(tmp_path, version_routes=routes)
    seed_versions(sqlite_store, settings.lora_dir)
    bot = Bot(settings, sqlite_store)
    await bot.service.restore()
    assert sorted(c for c in bot.engine.calls if c.startswith("load_lora")) == [
        "load_lora:v1",
        "load_lora:v2",
    ]

    assert await bot.ask(ConversationKey("slack", "T1", "C1")) == "v2", "the workspace's route"
    assert await bot.ask(ConversationKey("slack", "T1", "C9", "17.1")) == BASE_MODEL, "a channel's, over it"
    assert await bot.ask(ConversationKey("slack", "T1", "C8")) == "v1"
    assert await bot.ask(ConversationKey("slack", "T2", "C1")) is None, "no route: the default"
    assert await bot.ask(ConversationKey("discord", "G1", "CH1")) == "v1"
    assert await bot.ask(ConversationKey("discord", "G1", "CH2")) is None

    await bot.command("try", where=ConversationKey("slack", "T1", "C9"))
    assert await bot.ask(ConversationKey("slack", "T1", "C9")) == "v2", "a trial wins over the settings"


async def test_a_route_to_an_unknown_version_stops_the_start_and_a_missing_folder_falls_back(
    sqlite_store: ConversationStore, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, version_routes={"slack:T1": "v7"})
    seed_versions(sqlite_store, settings.lora_dir)
    with pytest.raises(ConfigError, match="v7"):
        await Bot(settings, sqlite_store).service.restore()

    settings = _settings(tmp_path, version_routes={"slack:T1": "v2"})
    (settings.lora_dir / "versions" / "v2").rmdir()
    bot = Bot(settings, sqlite_store)
    await bot.service.restore()
    assert await bot.ask(TRIAL_CHANNEL) is None, "its channels get the default rather than a failure"


def test_version_routes_are_checked_when_the_settings_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a conversation key"):
        _settings(tmp_path, version_routes={"#general": "v1"})
    with pytest.raises(ConfigError, match='name a version \\("v3"\\) or "base"'):
        _settings(tmp_path, version_routes={"slack:T1": "latest"})
    assert _settings(tmp_path, version_routes={"console:-:demo": "base"}).finetune.version_routes


def test_channel_lists_as_the_platforms_send_them() -> None:
    discord = ConversationKey("discord", "G1", "CH1")
    assert parse_channels("<#111> <#222>", discord) == ("discord:G1:111", "discord:G1:222")
    slack = ConversationKey("slack", "T1", "C1", "1700.1")
    assert parse_channels("<#C2|random>, <#C3|> #C4 C2", slack) == (
        "slack:T1:C2",
        "slack:T1:C3",
        "slack:T1:C4",
    )
    console = ConversationKey("console", "", "console")
    assert parse_channels("demo,other", console) == ("console:-:demo", "console:-:other")
    assert parse_channels("  ", discord) == ()
    with pytest.raises(BadChannelList):
        parse_channels("<@U123>", slack)


def test_gpu_sharing_shared_needs_a_local_engine_and_reserved_memory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="reserve_training_gib"):
        load_settings(data_dir=tmp_path, finetune={"gpu_sharing": "shared"})
    with pytest.raises(ConfigError, match="remote"):
        load_settings(
            data_dir=tmp_path,
            finetune={"gpu_sharing": "shared"},
            engine={"kind": "remote", "remote_base_url": "http://127.0.0.1:9/v1"},
        )


@pytest.mark.skipif(
    "reserve_training_gib" not in EngineSettings.model_fields,
    reason="engine.reserve_training_gib comes with the engine's training reservation (the lora branch)",
)
def test_gpu_sharing_shared_with_memory_reserved_is_accepted(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path, finetune={"gpu_sharing": "shared"}, engine={"reserve_training_gib": 46}
    )
    assert settings.finetune.gpu_sharing == "shared"


async def test_console_try_and_promote(sqlite_store: ConversationStore, tmp_path: Path) -> None:
    """The console adapter on the core as bot.app builds it: its session is the trial's channel."""
    settings = _settings(tmp_path)
    seed_versions(sqlite_store, settings.lora_dir)
    engine = RecordingEngine(reply="ok")
    core = build_core(settings, engine=engine, store=sqlite_store)
    await core.finetune.restore()

    async def console(session: str, lines: str) -> str:
        out = io.StringIO()
        adapter = ConsoleAdapter(session=session, stdin=io.StringIO(lines), stdout=out)
        await adapter.start(core.chat.handle, core.commands)
        await adapter.wait_closed()
        return out.getvalue()

    tried = await console("demo", "/finetune try\nhello\n")
    assert "Trying candidate LoRA v2 in console:-:demo; every other channel keeps v1." in tried
    assert engine.requests[-1].lora == "v2"
    await console("other", "hello\n")
    assert engine.requests[-1].lora is None
    listed = await console("other", "/finetune try demo,other\nhello\n/finetune status\n")
    assert "LoRA v2 in console:-:demo, console:-:other" in listed
    assert engine.requests[-1].lora == "v2"

    promoted = await console("demo", "/finetune promote\nhello\n")

    assert "LoRA v2 is now everyone's default (was v1)." in promoted
    assert engine.lora == "v2" and engine.requests[-1].lora is None


@dataclass
class PoolEngine(RecordingEngine):
    """An engine with a fixed adapter pool, as the fast decoder has: loading into a full pool unloads the oldest
    version that is not the default, and a version that is not loaded cannot be used."""

    slots: int = 2

    async def load_lora(self, name: str, path: str) -> None:
        self.loras.pop(name, None)
        if len(self.loras) >= self.slots:
            victim = next((n for n in self.loras if n != self.lora), None)
            if victim is None:
                raise EngineError("the adapter pool is full")
            del self.loras[victim]
        await super().load_lora(name, path)

    async def use_lora(self, name: str | None) -> None:
        if name is not None and name not in self.loras:
            raise EngineError(f"LoRA {name!r} is not loaded")
        await super().use_lora(name)


async def test_a_version_the_engine_unloaded_to_make_room_is_loaded_again_when_needed(
    sqlite_store: ConversationStore, tmp_path: Path
) -> None:
    settings = _settings(tmp_path)
    seed_versions(sqlite_store, settings.lora_dir)
    bot = Bot(settings, sqlite_store)
    bot.engine = engine = PoolEngine(reply="ok")
    bot.service = service = FinetuneService(settings, sqlite_store, engine, trainer=TRAINER)
    await service.restore()
    assert (await service.try_candidate(actor="t", scopes=("slack:T1:C1",))).started
    assert (await service.promote_candidate(actor="t")).version == "v2"
    assert set(engine.loras) == {"v1", "v2"}
    records = LearningRecords(sqlite_store)
    v3_dir = settings.lora_dir / "versions" / "v3"
    v3_dir.mkdir()
    run = records.create_run(trigger="manual", started_by="t", owner="x")
    records.add_candidate(name="v3", path=str(v3_dir), run_id=run.id, eval_loss=None, actor="t")
    assert (await service.try_candidate(actor="t", scopes=("slack:T1:C1",))).started
    assert set(engine.loras) == {"v2", "v3"}, "v1 made room"

    assert (await service.rollback(actor="t")).ended_trial == "v3"
    outcome = await service.rollback(actor="t")

    assert (outcome.previous, outcome.current) == ("v2", "v1")
    assert engine.calls[-2:] == ["load_lora:v1", "use_lora:v1"], "loaded again, then served"


async def test_help_explains_try_and_promote_in_korean_and_english(
    sqlite_store: ConversationStore, tmp_path: Path
) -> None:
    bot = Bot(_settings(tmp_path), sqlite_store)
    english, korean = bot.commands.help_text("en"), bot.commands.help_text("ko")
    assert "/finetune action:try [channels:#channel]: serve the newest candidate" in english
    assert "/finetune action:promote: make the candidate on trial everyone's default" in english
    assert "/finetune action:try [channels:#채널]: 아직 적용하지 않은 최신 후보 LoRA를" in korean
    assert "/finetune action:promote: 시험 중인 후보를 모두의 기본으로" in korean
