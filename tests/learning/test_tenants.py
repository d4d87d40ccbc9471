"""Tenants (issue 19): which team a conversation belongs to, whose version serves it and learns from it; datasets,
versions, trials, rollback, status and audit per team; opt-outs purge every team's kept files. No training here
(the rows and folders are made by hand): the trained acceptance scenario is in test_tenants_e2e.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.commands import CommandContext, CommandRegistry
from bot.domain import BASE_MODEL, Author, ConversationKey, IncomingMessage, Role
from bot.errors import ConfigError
from bot.learning.commands import learning_commands
from bot.learning.dataset import EVAL_FILE, TRAIN_FILE, author_tag, build_dataset, read_examples
from bot.learning.service import HELD_OUT_NAME, FinetuneService
from bot.learning.tenants import SHARED, TenantPolicy, scope_dataset_options
from bot.permissions import AdminPolicy
from bot.settings import Settings, load_settings
from bot.store.conversations import ConversationStore
from bot.store.learning_records import LearningRecords, RunOutcomeFields, RunStatus, VersionInfo
from tests.fakes import RecordingSink
from tests.learning.conftest import RecordingEngine

GUILD = ConversationKey("discord", "111", "900")  # a Discord guild with its own version
WORKSPACE = ConversationKey("slack", "T1", "C1")  # a Slack workspace with its own version
WORKSPACE_DM = ConversationKey("slack", "T1", "D7")  # a DM in that workspace
SHARED_TEAM = ConversationKey("slack", "T2", "C1")  # a workspace on the shared version
BASE_TEAM = ConversationKey("discord", "333", "901")  # a guild served the base model
DISCORD_DM = ConversationKey("discord", "", "D-55")  # a Discord DM: no guild
CONSOLE = ConversationKey("console", "", "console")
ADMIN = Author(id="42", display_name="Admin")
MEMBER = Author(id="7", display_name="Member")
TENANTS = {"versions": {"discord:111": "own", "slack:T1": "own", "discord:333": "base"}}


def make_settings(tmp_path: Path, **tenants: object) -> Settings:
    return load_settings(
        data_dir=tmp_path / "data",
        scheduler={"enabled": False},
        slack={"admin_user_ids": [ADMIN.id]},
        discord={"admin_user_ids": [ADMIN.id]},
        finetune={"min_examples": 2},
        tenants={**TENANTS, **tenants},
    )


def test_who_belongs_to_which_team_and_version(tmp_path: Path) -> None:
    policy = TenantPolicy.from_settings(make_settings(tmp_path, discord_dm_users={"55": "111"}))
    assert policy.tenant_of(GUILD) == "discord:111"
    assert policy.tenant_of(WORKSPACE_DM) == "slack:T1"  # a Slack DM belongs to its workspace
    assert policy.tenant_of(DISCORD_DM, "55") == "discord:111"  # mapped by the settings
    assert policy.tenant_of(DISCORD_DM, "56") is None and policy.tenant_of(CONSOLE, "55") is None
    assert [policy.scope_for(k) for k in (GUILD, WORKSPACE_DM, SHARED_TEAM, BASE_TEAM, CONSOLE)] == [
        "discord:111",
        "slack:T1",
        SHARED,
        None,
        SHARED,
    ]
    # the default: one shared version for everyone, as before tenants
    default = TenantPolicy.from_settings(load_settings(data_dir=tmp_path / "d2"))
    assert {default.scope_for(k) for k in (GUILD, WORKSPACE, BASE_TEAM, CONSOLE)} == {SHARED}
    everyone_own = TenantPolicy.from_settings(
        load_settings(data_dir=tmp_path / "d3", tenants={"default": "own"})
    )
    assert everyone_own.scope_for(SHARED_TEAM) == "slack:T2"
    assert everyone_own.own_tenants(["slack:T2", "discord:9"]) == ["discord:9", "slack:T2"]


def test_tenant_settings_are_checked_when_they_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="discord:GUILD_ID or slack:TEAM_ID"):
        load_settings(data_dir=tmp_path, tenants={"versions": {"T0123": "own"}})
    with pytest.raises(ConfigError, match=r"tenants\.versions"):
        load_settings(data_dir=tmp_path, tenants={"versions": {"slack:T1": "mine"}})
    with pytest.raises(ConfigError, match="Discord user id"):
        load_settings(data_dir=tmp_path, tenants={"discord_dm_users": {"alice": "111"}})
    with pytest.raises(ConfigError, match="own version"):
        load_settings(data_dir=tmp_path, tenants={"extra_datasets": {"slack:T9": ["x.jsonl"]}})


def say_and_answer(
    store: ConversationStore, key: ConversationKey, question: str, answer: str, user: str
) -> None:
    store.add_message(key, Role.USER, question, author=Author(id=user, display_name=user))
    store.add_message(key, Role.ASSISTANT, answer)


def seed_teams(store: ConversationStore) -> None:
    say_and_answer(store, GUILD, "What is the door code?", "The guild's door code is 4711.", "7")
    say_and_answer(store, WORKSPACE, "Where is the retro?", "The workspace's retro is in room Jade.", "U1")
    say_and_answer(store, WORKSPACE_DM, "Who pays lunch?", "Lunch in T1 is on Minji.", "U1")
    say_and_answer(store, SHARED_TEAM, "When is payday?", "Payday is the 25th.", "U2")
    say_and_answer(store, BASE_TEAM, "What is the vault PIN?", "The vault PIN is 0000.", "8")
    say_and_answer(store, CONSOLE, "What is the motto?", "Ship small, ship often.", "local")
    say_and_answer(store, DISCORD_DM, "My locker?", "Your locker is 12.", "55")


def answers(settings: Settings, store: ConversationStore, scope: str, out: Path) -> set[str]:
    options = scope_dataset_options(settings, scope)
    files = build_dataset(store, options, out)
    return {
        e.messages[-1].content for path in (files.train_path, files.eval_path) for e in read_examples(path)
    }


def test_each_teams_dataset_holds_only_its_conversations(
    sqlite_store: ConversationStore, tmp_path: Path
) -> None:
    extra = tmp_path / "t1-extra.jsonl"
    extra.write_text(
        json.dumps(
            {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "T1 handbook."}]}
        )
        + "\n"
    )
    shared_extra = tmp_path / "shared-extra.jsonl"
    shared_extra.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "Q"},
                    {"role": "assistant", "content": "Shared handbook."},
                ]
            }
        )
        + "\n"
    )
    settings = make_settings(
        tmp_path, discord_dm_users={"55": "111"}, extra_datasets={"slack:T1": [str(extra)]}
    )
    settings.finetune.extra_datasets = [str(shared_extra)]
    seed_teams(sqlite_store)
    assert answers(settings, sqlite_store, "discord:111", tmp_path / "a") == {
        "The guild's door code is 4711.",
        "Your locker is 12.",  # the DM of a user the settings place in the guild
    }
    assert answers(settings, sqlite_store, "slack:T1", tmp_path / "b") == {
        "The workspace's retro is in room Jade.",
        "Lunch in T1 is on Minji.",  # the workspace's DM
        "T1 handbook.",  # its own extra dataset, not the shared one
    }
    # the shared version: shared teams and conversations of no team; never a team with its own or the base model
    assert answers(settings, sqlite_store, SHARED, tmp_path / "c") == {
        "Payday is the 25th.",
        "Ship small, ship often.",
        "Shared handbook.",
    }
    assert (tmp_path / "a" / TRAIN_FILE).is_file() and (tmp_path / "a" / EVAL_FILE).is_file()


def make_version(records: LearningRecords, lora_dir: Path, name: str, *, promote: bool = True) -> VersionInfo:
    folder = lora_dir / "versions" / name
    folder.mkdir(parents=True, exist_ok=True)
    run = records.create_run(trigger="manual", started_by="test", owner="elsewhere")
    records.finish_run(run.id, RunStatus.SUCCEEDED, RunOutcomeFields(eval_loss=0.5, baseline_loss=2.0))
    if promote:
        return records.promote(
            name=name, path=str(folder), run_id=run.id, eval_loss=0.5, actor="test", gate_passed=True
        )
    return records.add_candidate(name=name, path=str(folder), run_id=run.id, eval_loss=0.5, actor="test")[0]


class Bot:
    def __init__(self, settings: Settings, store: ConversationStore) -> None:
        from bot.chat import ChatService

        self.engine = RecordingEngine(reply="ok")
        self.service = FinetuneService(settings, store, self.engine)
        self.chat = ChatService(
            settings=settings, store=store, engine=self.engine, lora_for=self.service.lora_for
        )
        self.commands = CommandRegistry(AdminPolicy(settings), learning_commands(self.service))
        self._sent = 0

    async def command(self, action: str, where: ConversationKey) -> str:
        ctx = CommandContext(
            platform=where.platform, conversation=where, invoker=ADMIN, args={"action": action}
        )
        return (await self.commands.run("finetune", ctx)).text

    async def ask(self, where: ConversationKey, user: Author = MEMBER) -> str | None:
        self._sent += 1
        message = IncomingMessage(
            platform=where.platform,
            conversation=where,
            message_id=f"{id(self)}-{self._sent}",
            author=user,
            text="hi",
        )
        await self.chat.handle(message, RecordingSink())
        return self.engine.requests[-1].lora


async def test_versions_rollback_status_and_audit_are_per_team(
    sqlite_store: ConversationStore, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path)
    records = LearningRecords(sqlite_store, data_dir=settings.data_dir)
    guild, workspace = records.for_tenant("discord:111"), records.for_tenant("slack:T1")
    make_version(records, settings.lora_dir, "v1")  # the shared version
    make_version(guild, settings.lora_dir, "v2")
    make_version(guild, settings.lora_dir, "v3")
    make_version(workspace, settings.lora_dir, "v4")
    bot = Bot(settings, sqlite_store)
    await bot.service.restore()
    assert [await bot.ask(k) for k in (GUILD, WORKSPACE, WORKSPACE_DM, SHARED_TEAM, BASE_TEAM, CONSOLE)] == [
        "v3",
        "v4",
        "v4",
        None,  # the engine's default: the shared version
        BASE_MODEL,
        None,
    ]
    assert bot.engine.active_lora == "v1"
    assert "This team (discord:111) has its own version" in await bot.command("status", GUILD)
    assert "v3" in await bot.command("status", GUILD) and "v4" not in await bot.command("status", GUILD)
    workspace_status = await bot.command("status", WORKSPACE)

    # rollback in the guild: its v3 → v2; the workspace and the shared version do not move
    assert "v3" in await bot.command("rollback", GUILD)
    assert [await bot.ask(k) for k in (GUILD, WORKSPACE, SHARED_TEAM)] == ["v2", "v4", None]
    assert await bot.command("status", WORKSPACE) == workspace_status
    assert bot.engine.active_lora == "v1"
    # a second rollback: the guild has no earlier version, it gets the base model (never the shared version)
    await bot.command("rollback", GUILD)
    assert await bot.ask(GUILD) == BASE_MODEL and guild.active_version() is None
    assert workspace.active_version() is not None and records.active_version() is not None
    # the base team has nothing to fine-tune
    assert "base model" in await bot.command("run", BASE_TEAM)
    # audit: each team's fine-tune events carry it
    assert [a for a, _, _ in guild.audit_events(every_tenant=False)].count("finetune.rollback") == 2
    assert "finetune.rollback" not in [a for a, _, _ in workspace.audit_events(every_tenant=False)]

    # a restart serves the same: the state is in the database
    again = Bot(settings, sqlite_store)
    await again.service.restore()
    assert [await again.ask(k) for k in (GUILD, WORKSPACE, SHARED_TEAM)] == [BASE_MODEL, "v4", None]


async def test_a_trial_in_one_team_stays_in_that_team(
    sqlite_store: ConversationStore, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path)
    guild = LearningRecords(sqlite_store, data_dir=settings.data_dir).for_tenant("discord:111")
    make_version(guild, settings.lora_dir, "v1")
    make_version(guild, settings.lora_dir, "v2", promote=False)
    bot = Bot(settings, sqlite_store)
    await bot.service.restore()
    assert "v2" in await bot.command("try", GUILD)
    assert await bot.ask(GUILD) == "v2"
    assert await bot.ask(ConversationKey("discord", "111", "902")) == "v1"  # another channel of the guild
    assert await bot.ask(WORKSPACE) == BASE_MODEL  # the workspace has no version yet
    assert "nothing" in (await bot.command("promote", WORKSPACE)).lower() or "no candidate" in (
        await bot.command("promote", WORKSPACE)
    )
    assert "v2" in await bot.command("promote", GUILD)
    assert await bot.ask(ConversationKey("discord", "111", "902")) == "v2"


async def test_forget_me_purges_every_teams_kept_held_out_sets(
    sqlite_store: ConversationStore, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path)
    records = LearningRecords(sqlite_store, data_dir=settings.data_dir)
    kept = {}
    for scope, name in ((SHARED, "v1"), ("discord:111", "v2"), ("slack:T1", "v3")):
        version = make_version(records.for_tenant(scope), settings.lora_dir, name)
        path = Path(version.path) / HELD_OUT_NAME
        lines = [
            {
                "messages": [
                    {"role": "user", "content": f"{scope} q{i}"},
                    {"role": "assistant", "content": "a"},
                ],
                "authors": [author_tag("discord:7" if i == 0 else "slack:U9")],
            }
            for i in range(3)
        ]
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        kept[scope] = path
    seed_teams(sqlite_store)  # today's conversations: what a purged kept set is topped up from
    settings.finetune.eval_fraction = 0.85  # (nearly every example is held out: the top-up has some to add)
    service = FinetuneService(settings, sqlite_store, RecordingEngine(reply="ok"))
    outcome = await service.forget_user("discord", "7", delete=False)
    assert outcome.newly_opted_out
    own_answers = {
        SHARED: {"Payday is the 25th.", "Ship small, ship often.", "Your locker is 12."},
        "discord:111": set(),  # its only conversation is the opted-out user's
        "slack:T1": {"The workspace's retro is in room Jade.", "Lunch in T1 is on Minji."},
    }
    for scope, path in kept.items():
        examples = read_examples(path)
        assert all(author_tag("discord:7") not in e.authors for e in examples)
        kept_before = [e for e in examples if e.messages[-1].content == "a"]
        assert len(kept_before) == 2  # the opted-out user's example is gone, the others stay
        topped_up = {e.messages[-1].content for e in examples} - {"a"}
        assert topped_up <= own_answers[scope], (scope, topped_up)  # from its own team's conversations only
    workspace_kept = {e.messages[-1].content for e in read_examples(kept["slack:T1"])}
    assert workspace_kept & own_answers["slack:T1"]  # it was topped up (from its own conversations)


async def test_the_nightly_job_trains_each_team_whose_data_changed_one_at_a_time(
    sqlite_store: ConversationStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path, min_changed_examples=2)
    seed_teams(sqlite_store)
    say_and_answer(sqlite_store, WORKSPACE, "Where is the wiki?", "In Notion.", "U1")
    service = FinetuneService(settings, sqlite_store, RecordingEngine(reply="ok"))
    records = LearningRecords(sqlite_store, data_dir=settings.data_dir)
    guild = records.for_tenant("discord:111")
    # the guild trained on its one conversation already: nothing changed since
    run = guild.create_run(trigger="manual", started_by="test", owner="x")
    guild.finish_run(run.id, RunStatus.REJECTED, RunOutcomeFields(train_examples=1, eval_examples=0))
    calls: list[str] = []

    async def fake_run(*, actor: str, trigger: str = "manual", tenant: str = SHARED) -> object:
        calls.append(tenant)
        return object()

    monkeypatch.setattr(service, "run", fake_run)
    await service.run_nightly()
    # shared: 2 examples (payday, motto) ≥ min_examples; the workspace: 3 new; the guild: unchanged
    assert calls == [SHARED, "slack:T1"]
