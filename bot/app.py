"""The composition root: builds the store, the engine, the chat service, the commands, the adapters (the console's
too) and the trainer's launch.

The only module in bot/ that imports adapters/ and inference/ (lazily, so `hanbot --help` stays fast, a Slack-only
deployment never imports discord.py, and a bot on a remote engine never imports torch). ``bot.cli`` parses the
command line and calls it; ``tests/core/test_layering.py`` checks that no other module imports upward.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.builtin_commands import finetune_unavailable_command, help_command, reset_command
from bot.chat import ChatService
from bot.commands import CommandRegistry, CommandSpec
from bot.domain import ConversationKey
from bot.errors import ConfigError
from bot.feedback import FeedbackBook
from bot.learning.announce import RunAnnouncer
from bot.learning.commands import learning_commands
from bot.learning.launch import TrainerLaunch
from bot.learning.progress import back_estimate
from bot.learning.service import FinetuneService
from bot.masking import mask_text, mask_url
from bot.metrics import Metrics
from bot.ops.probes import database_check, engine_check, platform_check, register_refreshers
from bot.ops.prometheus import PrometheusMetrics
from bot.ops.server import Check, OpsServer
from bot.permissions import AdminPolicy
from bot.persona import persona_command
from bot.platform import Adapter
from bot.ports import ChannelPoster, Engine, ReplySink
from bot.recovery import recover_unanswered
from bot.scheduler import BotScheduler
from bot.settings import Settings
from bot.store.async_store import AsyncStore
from bot.store.conversations import ConversationStore, StoredMessage
from bot.store.db import create_db_engine, migrate
from bot.store.errors import StoreError
from bot.summarize import summarize_command
from bot.texts import language_of

if TYPE_CHECKING:
    from adapters.console import ConsoleAdapter
    from adapters.discord.adapter import DiscordAdapter
    from adapters.slack.adapter import SlackAdapter

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
    metrics: PrometheusMetrics = field(default_factory=PrometheusMetrics)


def build_store(settings: Settings) -> ConversationStore:
    """The store, migrated; a database that cannot be used (a read-only or full data directory, a server that
    refuses) is one ConfigError that says where and what to check, never a traceback."""
    try:
        db = create_db_engine(settings.database_url, echo=settings.store.echo_sql)
    except (OSError, StoreError) as exc:
        raise _unusable_database(settings, exc) from None
    try:
        migrate(db, data_dir=settings.data_dir)
    except (OSError, StoreError) as exc:
        db.dispose()
        raise _unusable_database(settings, exc) from None
    return ConversationStore(db)


def _unusable_database(settings: Settings, exc: BaseException) -> ConfigError:
    reason = getattr(exc, "orig", None) or exc  # the driver's own words, without the SQL
    where = (
        f"check that the data directory {settings.data_dir} exists, is writable and has free space "
        "(HANBOT_DATA_DIR)"
        if settings.store.database_url is None
        else "check HANBOT_STORE__DATABASE_URL and the database server"
    )
    return ConfigError(
        f"the database {mask_url(settings.database_url)} cannot be used ({type(exc).__name__}: "
        f"{mask_text(str(reason))}): {where}"
    )


def stop_on_sigterm(stop: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """SIGTERM (a service manager, ``kill``) runs ``stop`` instead of ending the process on the spot, so the reply in
    progress is stored as incomplete and the engine and the store are closed."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGTERM, lambda: loop.create_task(stop()))
    except (NotImplementedError, RuntimeError):  # not the main thread, or not supported here
        pass


def build_engine(settings: Settings) -> Engine:
    """The local transformers engine, or a remote OpenAI-compatible server (vLLM, or this project's own engine
    server, ``python -m inference serve``), as the settings say. torch is imported only here, only for the local
    engine: a bot installed without it (``pip install hanbot[discord,slack]``) talks to a remote engine."""
    if settings.engine.kind == "remote":
        from inference.remote_engine import RemoteEngine

        return RemoteEngine.from_settings(settings)
    require_local_engine()
    from inference.local_engine import LocalEngine

    return LocalEngine.from_settings(settings)


LOCAL_ENGINE_PACKAGES = ("torch", "transformers", "accelerate", "peft", "safetensors")  # the `local` extra


def require_local_engine() -> None:
    """A ConfigError that says what to install when the local engine's libraries are missing."""
    missing = [name for name in LOCAL_ENGINE_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"the local engine needs {', '.join(missing)} (not installed here): install the local-engine extra "
            "(pip install 'hanbot[local]'), or use an engine server with HANBOT_ENGINE__KIND=remote and "
            "HANBOT_ENGINE__REMOTE_BASE_URL (python -m inference serve, or vLLM)"
        )


# ----- the trainer: a subprocess through its declared entry point

TRAINER_MODULE = "inference.finetune.train"
"""The fine-tune trainer, declared in pyproject.toml as the console script ``hanbot-train``."""


def trainer_launch(python: str | None = None) -> TrainerLaunch:
    """How the learning loop starts the trainer: ``python`` (``finetune.python``; default this interpreter) runs the
    declared entry point, from the folder that holds the project's packages (a source checkout or site-packages).
    """
    import inference  # the package only (no torch): the folder above it holds the project's packages

    packages_root = Path(inference.__file__).resolve().parents[1]
    return TrainerLaunch(argv=(python or sys.executable, "-m", TRAINER_MODULE), cwd=packages_root)


# ----- the console and the demo model


def build_console(session: str) -> ConsoleAdapter:
    from adapters.console import ConsoleAdapter

    return ConsoleAdapter(session=session)


def demo_overrides(data_dir: Path) -> dict[str, Any]:
    """Settings that put the bot on the demo model: CPU, float32, greedy (the FAQ answers come out exactly)."""
    require_local_engine()
    from inference.demo_model import demo_overrides as overrides

    return overrides(data_dir)


def build_demo_model(out: Path) -> Path:
    require_local_engine()
    from inference.demo_model import build_demo_model as build

    return build(out)


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
    registry.add(persona_command(settings, store, engine))
    registry.add(summarize_command(settings, engine))
    for spec in extra:
        registry.add(spec)  # the learning loop's /finetune replaces the placeholder
    return registry


def build_core(
    settings: Settings,
    *,
    engine: Engine | None = None,
    store: ConversationStore | None = None,
    metrics: PrometheusMetrics | None = None,
) -> Core:
    store = store or build_store(settings)
    engine = engine or build_engine(settings)
    metrics = metrics or PrometheusMetrics()
    finetune = FinetuneService(settings, store, engine, trainer=trainer_launch(settings.finetune.python))
    chat = ChatService(
        settings=settings,
        store=store,
        engine=engine,
        lora_for=finetune.lora_for,
        metrics=metrics,
        back_at=back_estimate(finetune.records),
    )
    commands = build_commands(
        settings,
        store,
        engine,
        chat=chat,
        extra=learning_commands(finetune, timezone=settings.scheduler.timezone),
    )
    scheduler = (
        BotScheduler(settings, store, finetune, metrics=metrics) if settings.scheduler.enabled else None
    )
    register_refreshers(metrics, engine, finetune)
    return Core(settings, store, engine, chat, commands, finetune, scheduler, metrics)


def announce_runs(core: Core, adapters: Sequence[Adapter]) -> None:
    """The end of each fine-tune run is posted through these adapters (bot.learning.announce)."""
    posters = [adapter for adapter in adapters if isinstance(adapter, ChannelPoster)]
    core.finetune.on_run_end(RunAnnouncer(posters, admin_channel=core.settings.finetune.announce_channel))


async def start_background(core: Core) -> None:
    """Serve the active LoRA and the open trial again, load the versions channels are routed to, fail runs a dead
    process left behind, and start the scheduled jobs."""
    await core.finetune.restore()
    if core.scheduler is not None:
        await core.scheduler.start()


def build_adapters(
    settings: Settings,
    store: ConversationStore,
    platforms: Sequence[str],
    metrics: PrometheusMetrics | None = None,
) -> list[Adapter]:
    """The platform adapters. Built before the model loads, so a missing token fails in seconds, not minutes."""
    adapters: list[Adapter] = []
    for platform in platforms:
        if platform == "discord":
            adapters.append(discord_adapter(settings, store, metrics=metrics))
        elif platform == "slack":
            adapters.append(slack_adapter(settings, store, metrics=metrics))
        else:
            raise ValueError(f"unknown platform {platform!r}")
    return adapters


def discord_adapter(
    settings: Settings, store: ConversationStore, *, metrics: Metrics | None = None, **options: Any
) -> DiscordAdapter:
    """Discord gets where reactions go, nothing else of the store."""
    from adapters.discord.adapter import DiscordAdapter

    return DiscordAdapter(settings, FeedbackBook(settings, store), metrics=metrics, **options)


def slack_adapter(
    settings: Settings, store: ConversationStore, *, metrics: Metrics | None = None, **options: Any
) -> SlackAdapter:
    """Slack gets its delivery log, whether the bot is in a thread, and where reactions go."""
    from adapters.slack.adapter import SlackAdapter

    db = AsyncStore(store)
    feedback = FeedbackBook(settings, store)
    return SlackAdapter(settings, deliveries=db, presence=db, feedback=feedback, metrics=metrics, **options)


async def start_ops(
    settings: Settings, metrics: PrometheusMetrics, *, required: bool = True
) -> OpsServer | None:
    """The /metrics, /health and /ready endpoint, started before the model loads (so /health answers while a 70B
    loads; /ready stays red until ``watch`` hands it the checks). None when ops.enabled is off, or when the port is
    taken and ``required`` is off (the console chat keeps going without it)."""
    if not settings.ops.enabled:
        return None
    server = OpsServer(
        metrics,
        host=settings.ops.host,
        port=settings.ops.port,
        check_timeout_s=settings.ops.check_timeout_s,
    )
    try:
        await server.start()
    except ConfigError as exc:
        if required:
            raise
        _log.warning("no operations endpoint: %s", exc)
        return None
    return server


def readiness_checks(store: ConversationStore, engine: Engine, adapters: Sequence[Adapter]) -> list[Check]:
    """The database reachable, the engine healthy, every platform connected."""
    checks = [database_check(store), engine_check(engine)]
    checks += [platform_check(adapter) for adapter in adapters]
    return checks


async def serve(core: Core, adapters: Sequence[Adapter], ops: OpsServer | None = None) -> None:
    """Run the adapters until SIGINT/SIGTERM, then stop them and the engine cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread, or not supported here
            pass
    try:
        announce_runs(core, adapters)
        await start_background(core)
        for adapter in adapters:
            await adapter.start(core.chat.handle, core.commands)
            _log.info("adapter %s started", adapter.name)
        if ops is not None:
            ops.watch(readiness_checks(core.store, core.engine, adapters))
        await recover(core, adapters)
        await stop.wait()
    finally:
        await shutdown(core, adapters, ops)


async def recover(core: Core, adapters: Sequence[Adapter]) -> int:
    """Messages a restart left unanswered get an answer or a notice (``chat.recovery``), on these adapters."""
    by_name = {adapter.name: adapter for adapter in adapters}

    async def sink_for(key: ConversationKey, turn: StoredMessage) -> ReplySink | None:
        adapter = by_name.get(key.platform)
        if adapter is None:
            return None
        lang = language_of(turn.content)
        return await adapter.sink_for(
            key, author_id=turn.author_id or "", message_id=turn.platform_message_id, lang=lang
        )

    try:
        return await recover_unanswered(core.chat, core.settings, sink_for, platforms=list(by_name))
    except StoreError as exc:
        _log.error("could not look for unanswered messages: %s", type(exc).__name__)
        return 0


async def shutdown(core: Core, adapters: Sequence[Adapter], ops: OpsServer | None = None) -> None:
    """Stop taking messages first, then the jobs, then the model, then the store, then the operations endpoint:
    each step runs even when an earlier one failed (an unusable data directory must not leave the engine or the
    store open)."""
    steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        (f"adapter {adapter.name}", adapter.stop) for adapter in adapters
    ]
    if core.scheduler is not None:
        steps.append(("scheduler", core.scheduler.shutdown))
    steps += [("fine-tuning", core.finetune.aclose), ("engine", core.engine.aclose)]
    for name, step in steps:
        try:
            await step()
        except Exception:
            _log.exception("%s did not stop cleanly", name)
    core.store.dispose()
    if ops is not None:
        await ops.stop()
