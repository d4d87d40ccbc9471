"""Issue 19's acceptance on CPU: two teams, a Discord guild and a Slack workspace, each with its own version.

The demo model on the fast decoder (float32) with one adapter slot for the two teams' versions, the real bot (chat
service, commands, learning loop, the Discord and Slack adapters) against the loopback fakes, real training
subprocesses. Each team is trained on its own facts (the other team's facts are its "secret") and gets a promoted
version; asked through its platform, each answers its own facts and not the other's; neither team's training files,
kept held-out set nor replies hold the other's answers; `/finetune status` and `rollback` in the workspace leave the
guild unchanged.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot.app import build_core, discord_adapter, slack_adapter
from bot.domain import Author, ConversationKey, MessageStatus, Role
from bot.learning import service as service_module
from bot.learning.dataset import EVAL_FILE, TRAIN_FILE, build_dataset, read_examples
from bot.learning.service import HELD_OUT_NAME
from bot.learning.tenants import scope_dataset_options
from bot.settings import Settings, load_settings
from bot.store.conversations import ConversationStore
from bot.store.db import create_db_engine, migrate
from bot.store.learning_records import RunStatus
from tests.discord.conftest import fake_discord  # noqa: F401  (the loopback Discord, a fixture)
from tests.discord.fake_discord import FakeDiscord, FakeUser, iter_bot_texts
from tests.discord.test_commands import run as discord_command
from tests.learning.conftest import QUICK_FINETUNE
from tests.learning.synthetic import FACTS
from tests.slack.conftest import fake_slack  # noqa: F401  (the loopback Slack, a fixture)
from tests.slack.fake_slack import TEAM, FakeSlack
from tests.slack.harness import ENV, SlackBot, command_form, dm_event, envelope

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

GUILD_FACTS = FACTS[:4]  # the guild's facts: the workspace must never learn them
WORKSPACE_FACTS = FACTS[4:]  # the workspace's facts: the guild must never learn them
WORKSPACE = f"slack:{TEAM}"


def seed(
    store: ConversationStore,
    facts: list[tuple[tuple[str, ...], str]],
    key: Callable[[int, int], ConversationKey],
) -> None:
    """Each fact asked three ways by three people, each in its own conversation of the team, and answered."""
    for f, (questions, answer) in enumerate(facts):
        for q, question in enumerate(questions):
            author = Author(id=f"{700 + 10 * f + q}", display_name=f"member {q}")
            store.add_message(key(f, q), Role.USER, question, author=author)
            store.add_message(key(f, q), Role.ASSISTANT, answer)


def trained_pairs(
    store: ConversationStore, settings: Settings, scope: str, out: Path
) -> list[tuple[str, str]]:
    files = build_dataset(store, scope_dataset_options(settings, scope), out)
    return [(e.messages[-2].content, e.messages[-1].content) for e in read_examples(files.train_path)]


class Bot:
    """One bot process serving both platforms: one engine, one store, one core."""

    def __init__(
        self, settings: Settings, store: ConversationStore, discord: FakeDiscord, slack: FakeSlack
    ) -> None:
        from inference.local_engine import LocalEngine

        self.settings, self.store, self.discord, self.slack = settings, store, discord, slack
        self.engine = LocalEngine.from_settings(settings)
        self.core = build_core(settings, engine=self.engine, store=store)
        self.discord_adapter = discord_adapter(settings, store, guild_ready_timeout=0.05)
        self.slack_adapter = slack_adapter(settings, store)
        self.slack_poster = SlackBot(settings, slack, store=store, adapter=self.slack_adapter)
        self._asked = 0

    async def start(self) -> None:
        await self.core.finetune.restore()
        await self.discord_adapter.start(self.core.chat.handle, self.core.commands)
        await self.slack_adapter.start(self.core.chat.handle, self.core.commands)

    async def stop(self) -> None:
        await self.discord_adapter.stop()
        await self.slack_adapter.stop()
        await self.core.finetune.aclose()
        await self.engine.aclose()

    async def _reply(self, key: ConversationKey, shown: Callable[[], str]) -> str:
        def answered() -> bool:
            turns = self.store.history(key)
            return len(turns) >= 2 and turns[-1].status is MessageStatus.COMPLETE

        await self.discord.wait_for(answered, within_s=120)
        reply = self.store.history(key)[-1].content
        await self.discord.wait_for(lambda: shown() == reply, within_s=30)  # what people see, edits done
        return reply

    async def ask_discord(self, user: FakeUser, question: str) -> str:
        """A DM to the bot from a user the settings place in the guild (a fresh DM: no earlier turns)."""
        dm = self.discord.open_dm(user)
        self.discord.post_message(dm, user, question, dm=True)
        return await self._reply(
            ConversationKey("discord", "", dm), lambda: "".join(iter_bot_texts(self.discord, dm))
        )

    async def ask_slack(self, question: str) -> str:
        """A DM in the workspace (a fresh DM channel: no earlier turns)."""
        self._asked += 1
        channel, ts = f"D{self._asked:03d}", f"1700000{self._asked:03d}.000100"
        await self.slack_poster.post_event(
            envelope(dm_event(question, ts, user="UASK", channel=channel), f"Ev{ts}")
        )
        return await self._reply(
            ConversationKey("slack", TEAM, channel),
            lambda: "".join(m.text for m in self.slack.replies(channel)),
        )

    async def finetune_discord(self, admin: FakeUser, action: str) -> str:
        _, _, texts = await discord_command(self.discord, "finetune", admin, options={"action": action})
        return "\n".join(texts)

    async def finetune_slack(self, action: str) -> str:
        before = len(self.slack.responses)
        form = command_form(self.slack, "/finetune", user="UADMIN", channel="C1", text=action)
        status, _ = await self.slack_poster.post_command(form)
        assert status == 200
        await self.slack.wait_until(lambda: len(self.slack.responses) > before, within_s=30)
        return str(self.slack.responses[-1]["text"])


@pytest.fixture
def kept_datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The training files of every run, copied before the service removes them (they live only for the run)."""
    kept = tmp_path / "kept-datasets"
    remove = service_module._remove_datasets

    def keep_then_remove(run_dir: Path) -> None:
        target = kept / run_dir.name
        target.mkdir(parents=True, exist_ok=True)
        for name in (TRAIN_FILE, EVAL_FILE):
            if (run_dir / name).is_file():
                shutil.copyfile(run_dir / name, target / name)
        remove(run_dir)

    monkeypatch.setattr(service_module, "_remove_datasets", keep_then_remove)
    return kept


def answers_in(path: Path) -> set[str]:
    return {e.messages[-1].content for e in read_examples(path)}


async def test_two_teams_each_learn_their_own_facts_and_not_the_others(
    tmp_path: Path,
    demo_model_dir: Path,
    fake_discord: FakeDiscord,  # noqa: F811
    fake_slack: FakeSlack,  # noqa: F811
    kept_datasets: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    guild = fake_discord.guild_id
    admin, asker = fake_discord.new_user("Admin"), fake_discord.new_user("Asker")
    outsider = fake_discord.new_user("Outsider")
    settings = load_settings(
        data_dir=tmp_path / "data",
        model={"name_or_path": str(demo_model_dir), "dtype": "float32", "device_map": None, "is_demo": True},
        engine={
            "decoder": "static",
            "lora_slots": 1,
            "max_batch_size": 4,
        },  # one slot for two teams' versions
        # greedy: the exact trained replies
        generation={"temperature": 0.0, "repetition_penalty": 1.0, "max_new_tokens": 48},
        scheduler={"enabled": False, "lease_ttl_s": 30},
        finetune={**QUICK_FINETUNE, "max_steps": 80, "gpu_sharing": "pause"},
        tenants={
            "versions": {f"discord:{guild}": "own", WORKSPACE: "own"},
            "discord_dm_users": {asker.id: guild},  # the asker's DMs belong to the guild
        },
        discord={"admin_user_ids": [admin.id], "edit_interval_s": 0.2},
        slack={
            "mode": "http",
            "http_host": "127.0.0.1",
            "http_port": 0,
            "api_base_url": fake_slack.base_url,
            "update_interval_s": 0.2,
            "update_budget_per_min": 6000,
            "admin_user_ids": ["UADMIN"],
            "native_streaming": False,
        },
        DISCORD_TOKEN="fake-token",
    )
    db = create_db_engine(settings.database_url)
    migrate(db)
    store = ConversationStore(db)
    seed(store, GUILD_FACTS, lambda f, q: ConversationKey("discord", guild, f"{500 + 10 * f + q}"))
    seed(store, WORKSPACE_FACTS, lambda f, q: ConversationKey("slack", TEAM, f"C-{f}-{q}"))
    guild_pairs = trained_pairs(store, settings, f"discord:{guild}", tmp_path / "preview-guild")[:3]
    workspace_pairs = trained_pairs(store, settings, WORKSPACE, tmp_path / "preview-workspace")[:3]
    guild_answers = {a for _, a in GUILD_FACTS}
    workspace_answers = {a for _, a in WORKSPACE_FACTS}
    bot = Bot(settings, store, fake_discord, fake_slack)
    try:
        await bot.start()
        # asked by someone of no team (their DMs are no team's: not trained on by either)
        base = {q: await bot.ask_discord(outsider, q) for q, _ in guild_pairs + workspace_pairs}
        assert all(base[q] != a for q, a in guild_pairs + workspace_pairs)  # the base model knows none of it

        # each team trains its own version from its own facts, each through the gate, one after the other
        assert "#1" in await bot.finetune_discord(admin, "run")
        guild_run = await bot.core.finetune.wait()
        assert guild_run is not None and guild_run.status is RunStatus.SUCCEEDED, guild_run
        assert "#2" in await bot.finetune_slack("run")
        workspace_run = await bot.core.finetune.wait()
        assert workspace_run is not None and workspace_run.status is RunStatus.SUCCEEDED, workspace_run
        assert (guild_run.tenant, workspace_run.tenant) == (f"discord:{guild}", WORKSPACE)

        # their datasets: the guild's run trained on the guild's answers only, the workspace's on its own only
        guild_files = kept_datasets / "run-0001"
        workspace_files = kept_datasets / "run-0002"
        guild_trained = answers_in(guild_files / TRAIN_FILE) | answers_in(guild_files / EVAL_FILE)
        workspace_trained = answers_in(workspace_files / TRAIN_FILE) | answers_in(workspace_files / EVAL_FILE)
        assert guild_trained == guild_answers and workspace_trained == workspace_answers
        assert not answers_in(Path(workspace_run.lora_path or "") / HELD_OUT_NAME) & guild_answers
        assert not answers_in(Path(guild_run.lora_path or "") / HELD_OUT_NAME) & workspace_answers

        # each answers its own facts, on its own platform, exactly as trained; and not the other's
        for question, answer in guild_pairs:
            assert await bot.ask_discord(asker, question) == answer
            leaked = await bot.ask_slack(question)
            assert not any(secret in leaked for secret in guild_answers), leaked
        for question, answer in workspace_pairs:
            assert await bot.ask_slack(question) == answer
            leaked = await bot.ask_discord(asker, question)
            assert not any(secret in leaked for secret in workspace_answers), leaked
        decoder: Any = bot.engine.decoder
        assert (
            type(decoder).__name__ == "StaticSlotDecoder" and len(decoder.adapters) <= 1
        )  # one slot, swapped

        # status and rollback in the workspace: the guild does not move
        guild_status = await bot.finetune_discord(admin, "status")
        workspace_status = await bot.finetune_slack("status")
        assert "v1" in guild_status and "v2" not in guild_status and f"discord:{guild}" in guild_status
        assert "v2" in workspace_status and "v1" not in workspace_status
        rolled = await bot.finetune_slack("rollback")
        assert "v2" in rolled
        assert await bot.finetune_discord(admin, "status") == guild_status
        for question, answer in guild_pairs:
            assert await bot.ask_discord(asker, question) == answer
        for (
            question,
            answer,
        ) in workspace_pairs:  # the workspace is back on the base model (never on the guild's)
            again = await bot.ask_slack(question)
            assert again != answer and not any(secret in again for secret in guild_answers)
        assert "v2" not in await bot.finetune_slack("status")
    finally:
        await bot.stop()
        db.dispose()
