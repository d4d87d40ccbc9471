"""What the operations endpoint looks at: readiness checks and the refreshers of state gauges.

Each takes the part it checks (the store, the engine, an adapter, the fine-tune service) and nothing else. Engines and
adapters are looked at through optional methods (``counts()``, ``decoder.capacity``, ``connected()``), so a part that
lacks one is simply not measured that way.
"""

from __future__ import annotations

from typing import Any

from bot.learning.service import FinetuneService
from bot.metrics import EngineLoad
from bot.ops.prometheus import PrometheusMetrics
from bot.ops.server import Check
from bot.ports import Engine
from bot.store.async_store import AsyncStore
from bot.store.conversations import ConversationStore


def database_check(store: ConversationStore) -> Check:
    db = AsyncStore(store)

    async def run() -> bool:
        await db.ping()
        return True

    return Check("database", run)


def engine_check(engine: Engine) -> Check:
    async def run() -> bool:
        await engine.health()  # raises EngineUnhealthy; a stuck one runs into the check's timeout
        return True

    return Check("engine", run)


def platform_check(adapter: Any) -> Check:
    """The adapter's ``connected()`` (an adapter without one counts as connected while it runs)."""

    async def run() -> bool:
        connected = getattr(adapter, "connected", None)
        return bool(await connected()) if connected is not None else True

    return Check(f"platform:{adapter.name}", run)


def engine_load(engine: Engine) -> EngineLoad:
    """The local engine's queue and slots; an engine without them (remote) reports nothing."""
    counts = getattr(engine, "counts", None)
    if counts is None:
        return EngineLoad()
    waiting, running = counts()
    decoder = getattr(engine, "decoder", None)
    slots = getattr(decoder, "capacity", None)
    kv_usage = getattr(decoder, "kv_used_ratio", None)  # a decoder that knows its KV memory says so
    kv: float | None = float(kv_usage()) if callable(kv_usage) else (running / slots if slots else None)
    return EngineLoad(waiting=waiting, running=running, slots=slots, kv_used_ratio=kv)


def register_refreshers(metrics: PrometheusMetrics, engine: Engine, finetune: FinetuneService) -> None:
    async def refresh_engine() -> None:
        metrics.set_engine_load(engine_load(engine))

    async def refresh_finetune() -> None:
        status = await finetune.status()
        metrics.set_finetune(
            running=status.running is not None,
            last_status=status.last.status.value if status.last else None,
            serving=status.serving,
        )

    metrics.add_refresher(refresh_engine)
    metrics.add_refresher(refresh_finetune)
