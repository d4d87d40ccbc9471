"""Fixtures for the Discord tests: a fake Discord on loopback, and the real bot (discord.py client, ChatService,
commands, SQLite store) started against it with a scripted engine."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import discord
import pytest
import yarl

from adapters.discord import DiscordAdapter
from bot.app import announce_runs, build_commands, build_core, discord_adapter
from bot.chat import ChatService
from bot.domain import ConversationKey
from bot.learning.commands import learning_commands
from bot.learning.service import FinetuneService
from bot.metrics import Metrics
from bot.ports import MessageHandler
from bot.settings import Settings, load_settings
from bot.store.conversations import ConversationStore, StoredMessage
from bot.store.db import create_db_engine, migrate
from tests.discord.fake_discord import FakeDiscord
from tests.fakes import ScriptedEngine


@dataclass
class DiscordBot:
    settings: Settings
    store: ConversationStore
    engine: ScriptedEngine
    adapter: DiscordAdapter
    fake: FakeDiscord
    finetune: FinetuneService | None = None  # with ``learning=True``

    def key(self, channel_id: str) -> ConversationKey:
        return ConversationKey(platform="discord", workspace=self.fake.guild_id, channel=channel_id)

    def history(self, channel_id: str, *, dm: bool = False) -> list[StoredMessage]:
        key = (
            ConversationKey(platform="discord", workspace="", channel=channel_id)
            if dm
            else self.key(channel_id)
        )
        return self.store.history(key)

    async def stored(self, channel_id: str, turns: int, *, dm: bool = False) -> list[StoredMessage]:
        """The history once it holds ``turns`` turns (the reply is stored just after it is shown)."""
        await self.fake.wait_for(lambda: len(self.history(channel_id, dm=dm)) >= turns)
        return self.history(channel_id, dm=dm)


StartBot = Callable[..., Awaitable[DiscordBot]]


@pytest.fixture
async def fake_discord(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    fake = FakeDiscord()
    await fake.start()
    monkeypatch.setattr(discord.http.Route, "BASE", fake.base_url)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url))
    yield fake
    await fake.stop()


@pytest.fixture
async def start_bot(tmp_path: Path, fake_discord: FakeDiscord) -> AsyncIterator[StartBot]:
    """``await start_bot(engine=..., **discord_settings)``: the bot, connected and ready; stopped after the test."""
    started: list[tuple[DiscordAdapter, Any]] = []

    async def start(
        engine: ScriptedEngine | None = None,
        handler: MessageHandler | None = None,
        *,
        learning: bool = False,
        metrics: Metrics | None = None,
        overrides: dict[str, Any] | None = None,
        **discord_settings: Any,
    ) -> DiscordBot:
        """``handler`` replaces the chat service's (to see exactly what the adapter hands to the core);
        ``learning``: the whole core as bot.app builds it (the learning loop's /finetune, LoRA routes);
        ``overrides``: other sections of the settings (model, finetune...)."""
        discord_settings.setdefault("edit_interval_s", 0.2)
        settings = load_settings(
            data_dir=tmp_path / "data",
            scheduler={"enabled": False},
            discord=discord_settings,
            DISCORD_TOKEN="fake-token",
            **(overrides or {}),
        )
        db = create_db_engine(settings.database_url)
        migrate(db)
        store = ConversationStore(db)
        engine = engine or ScriptedEngine()
        finetune: FinetuneService | None = None
        core = None
        if learning:
            core = build_core(settings, engine=engine, store=store, metrics=metrics)
            chat, commands, finetune = core.chat, core.commands, core.finetune
            await finetune.restore()
        else:
            chat = ChatService(settings=settings, store=store, engine=engine, metrics=metrics)
            forget_me = [  # the learning loop's /forget-me; /finetune stays the "not set up" placeholder here
                spec
                for spec in learning_commands(FinetuneService(settings, store, engine))
                if spec.name == "forget-me"
            ]
            commands = build_commands(settings, store, engine, chat=chat, extra=forget_me)
        adapter = discord_adapter(settings, store, guild_ready_timeout=0.05, metrics=metrics)
        if core is not None:
            announce_runs(core, [adapter])  # as bot.app.serve does
        await adapter.start(handler or chat.handle, commands)
        started.append((adapter, db))
        return DiscordBot(settings, store, engine, adapter, fake_discord, finetune)

    yield start
    for adapter, db in started:
        await adapter.stop()
        db.dispose()
