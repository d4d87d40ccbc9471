"""The composition root: builds the store, the engine, the chat service, the commands and the adapters.

The only module in bot/ that imports adapters/ and inference/ (lazily, so `hanbot --help` stays fast and a Slack-only
deployment never imports discord.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass

from bot.builtin_commands import finetune_unavailable_command, help_command, reset_command
from bot.chat import ChatService
from bot.commands import CommandRegistry, CommandSpec
from bot.learning.commands import learning_commands
from bot.learning.service import FinetuneService
from bot.permissions import AdminPolicy
from bot.ports import Adapter, Engine
from bot.scheduler import BotScheduler
from bot.settings import Settings
from bot.store.conversations import ConversationStore
from bot.store.db import create_db_engine, migrate

_log = logging.getLogger(__name__)


@dataclass
class Core:
    """Everything the adapters share."""

    settings: Settings
    store: ConversationStore
    engine: Engine
    chat: ChatService
    commands: CommandRegistry
    finetune: FinetuneService
    scheduler: BotScheduler | None = None


def build_store(settings: Settings) -> ConversationStore:
    db = create_db_engine(settings.database_url, echo=settings.store.echo_sql)
    migrate(db, data_dir=settings.data_dir)
    return ConversationStore(db)


def follow_rank_0(settings: Settings) -> bool:
    """Under torchrun with engine.tensor_parallel > 1, a rank other than 0 talks to no platform and no database: it
    serves its slice of the model, replaying rank 0's decoder calls, until rank 0 stops. True when it did."""
    if settings.engine.tensor_parallel == 1 or os.environ.get("RANK", "0") == "0":
        return False
    from inference.tensor_parallel import follower_main

    follower_main(settings)
    return True


def build_engine(settings: Settings) -> Engine:
    """The local transformers engine, or a remote OpenAI-compatible server, as the settings say."""
    if settings.engine.kind == "remote":
        from inference.remote_engine import RemoteEngine

        return RemoteEngine.from_settings(settings)
    from inference.local_engine import LocalEngine

    return LocalEngine.from_settings(settings)


def build_commands(
    settings: Settings,
    store: ConversationStore,
    engine: Engine,
    *,
    chat: ChatService | None = None,
    extra: Sequence[CommandSpec] = (),
) -> CommandRegistry:
    chat = chat or ChatService(settings=settings, store=store, engine=engine)
    registry = CommandRegistry(AdminPolicy(settings))
    registry.add(help_command(registry))
    registry.add(reset_command(chat))
    registry.add(finetune_unavailable_command())
    for spec in extra:
        registry.add(spec)  # the learning loop's /finetune replaces the placeholder
    return registry


def build_core(
    settings: Settings, *, engine: Engine | None = None, store: ConversationStore | None = None
) -> Core:
    store = store or build_store(settings)
    engine = engine or build_engine(settings)
    finetune = FinetuneService(settings, store, engine)
    chat = ChatService(settings=settings, store=store, engine=engine, lora_for=finetune.lora_for)
    commands = build_commands(
        settings,
        store,
        engine,
        chat=chat,
        extra=learning_commands(finetune, timezone=settings.scheduler.timezone),
    )
    scheduler = BotScheduler(settings, store, finetune) if settings.scheduler.enabled else None
    return Core(settings, store, engine, chat, commands, finetune, scheduler)


async def start_background(core: Core) -> None:
    """Serve the active LoRA and the open trial again, load the versions channels are routed to, fail runs a dead
    process left behind, and start the scheduled jobs."""
    await core.finetune.restore()
    if core.scheduler is not None:
        await core.scheduler.start()


def build_adapters(settings: Settings, store: ConversationStore, platforms: Sequence[str]) -> list[Adapter]:
    """The platform adapters. Built before the model loads, so a missing token fails in seconds, not minutes."""
    adapters: list[Adapter] = []
    for platform in platforms:
        if platform == "discord":
            from adapters.discord.adapter import DiscordAdapter

            adapters.append(DiscordAdapter(settings, store))
        elif platform == "slack":
            from adapters.slack.adapter import SlackAdapter

            adapters.append(SlackAdapter(settings, store))
        else:
            raise ValueError(f"unknown platform {platform!r}")
    return adapters


async def serve(core: Core, adapters: Sequence[Adapter]) -> None:
    """Run the adapters until SIGINT/SIGTERM, then stop them and the engine cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread, or not supported here
            pass
    try:
        await start_background(core)
        for adapter in adapters:
            await adapter.start(core.chat.handle, core.commands)
            _log.info("adapter %s started", adapter.name)
        await stop.wait()
    finally:
        await shutdown(core, adapters)


async def shutdown(core: Core, adapters: Sequence[Adapter]) -> None:
    """Stop taking messages first, then the jobs, then the model."""
    for adapter in adapters:
        try:
            await adapter.stop()
        except Exception:
            _log.exception("adapter %s did not stop cleanly", adapter.name)
    if core.scheduler is not None:
        await core.scheduler.shutdown()
    await core.finetune.aclose()
    await core.engine.aclose()
    core.store.engine.dispose()
