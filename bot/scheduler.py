"""The bot's scheduled jobs: history pruning and the nightly fine-tune, run by exactly one bot process.

APScheduler 3.11's ``AsyncIOScheduler`` runs in the bot's event loop (``start()`` must be awaited inside it). Jobs
have fixed ids (``replace_existing=True``), cron times in the configured time zone (default Asia/Seoul), an explicit
misfire grace (a job due while the bot restarted still runs: an hour for the prune, hours for the nightly fine-tune)
and ``coalesce=True`` (several missed runs become one).

Several bot processes may run a scheduler each; a lease in the database (``job_locks``, name ``scheduler``) decides
which one runs the jobs. The holder renews it every third of its lifetime; each job checks (and renews) it when it
fires and does nothing in a process that does not hold it. When the holder stops, ``shutdown()`` gives the lease back
at once; when it dies, the lease expires after ``lease_ttl_s`` and another process takes over.

Every process also checks each minute which LoRA is active in the database and serves it (``lora-sync``), so a
version promoted by the process that trained it reaches the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Protocol, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from bot.errors import ConfigError
from bot.learning.pruning import PruneLimits, PruneReport, prune_history
from bot.metrics import Metrics, NullMetrics
from bot.settings import Settings
from bot.store.conversations import ConversationStore
from bot.store.leases import Clock, DbLease, process_identity
from bot.store.models import utcnow

_log = logging.getLogger(__name__)

PRUNE_JOB_ID = "history-prune"
FINETUNE_JOB_ID = "finetune-nightly"
LEASE_JOB_ID = "scheduler-lease"
LORA_SYNC_JOB_ID = "lora-sync"
SCHEDULER_LEASE = "scheduler"
T = TypeVar("T")
LORA_SYNC_INTERVAL_S = 60.0


class NightlyFinetune(Protocol):
    """What the scheduler needs from the learning loop (FinetuneService satisfies it)."""

    async def run_nightly(self, *, actor: str, trigger: str) -> object: ...

    async def sync_active(self) -> None: ...


class BotScheduler:
    def __init__(
        self,
        settings: Settings,
        store: ConversationStore,
        finetune: NightlyFinetune | None = None,
        *,
        clock: Clock = utcnow,
        holder: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings.scheduler
        self._history = settings.history
        self._store = store
        self._finetune = finetune
        self._clock = clock
        self._metrics = metrics or NullMetrics()
        self._zone = _zone(self._settings.timezone)
        self._lease = DbLease(
            store,
            SCHEDULER_LEASE,
            holder=holder or process_identity(),
            ttl=timedelta(seconds=self._settings.lease_ttl_s),
            clock=clock,
        )
        self._prune_trigger = _cron(self._settings.prune_cron, self._zone, "scheduler.prune_cron")
        self._finetune_trigger = _cron(self._settings.finetune_cron, self._zone, "scheduler.finetune_cron")
        self._scheduler = AsyncIOScheduler(timezone=self._zone)
        self._leader = False

    @property
    def scheduler(self) -> AsyncIOScheduler:
        return self._scheduler

    @property
    def is_leader(self) -> bool:
        """Whether this process held the lease at its last check."""
        return self._leader

    async def start(self) -> None:
        """Add the jobs and start the scheduler in the running event loop."""
        await self.check_lease()
        self._add_jobs()
        self._scheduler.start()
        _log.info(
            "scheduler started: prune=%s finetune=%s (%s) tz=%s leader=%s",
            self._settings.prune_cron if self._settings.prune_enabled else "off",
            self._settings.finetune_cron if self._finetune and self._settings.finetune_enabled else "off",
            FINETUNE_JOB_ID,
            self._settings.timezone,
            self._leader,
        )

    async def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        if self._leader:
            await self._lease.give_up()
            self._leader = False
        _log.info("scheduler stopped")

    def _add_jobs(self) -> None:
        renew = max(1.0, self._settings.lease_ttl_s / 3)
        self._scheduler.add_job(
            self.check_lease,
            IntervalTrigger(seconds=renew, timezone=self._zone),
            id=LEASE_JOB_ID,
            replace_existing=True,
            coalesce=True,
            misfire_grace_time=int(renew),
        )
        if self._settings.prune_enabled:
            self._scheduler.add_job(
                self.run_prune,
                self._prune_trigger,
                id=PRUNE_JOB_ID,
                replace_existing=True,
                coalesce=True,
                max_instances=1,
                misfire_grace_time=self._settings.prune_misfire_grace_s,
            )
        if self._finetune is not None and self._settings.finetune_enabled:
            self._scheduler.add_job(
                self.run_nightly_finetune,
                self._finetune_trigger,
                id=FINETUNE_JOB_ID,
                replace_existing=True,
                coalesce=True,
                max_instances=1,
                misfire_grace_time=self._settings.finetune_misfire_grace_s,
            )
        if self._finetune is not None:
            self._scheduler.add_job(
                self._sync_lora,
                IntervalTrigger(seconds=LORA_SYNC_INTERVAL_S, timezone=self._zone),
                id=LORA_SYNC_JOB_ID,
                replace_existing=True,
                coalesce=True,
                misfire_grace_time=int(LORA_SYNC_INTERVAL_S),
            )

    # the lease

    async def check_lease(self) -> bool:
        """Take or renew the scheduler lease; remember whether this process runs the jobs."""
        try:
            held = await self._lease.take()
        except Exception:
            _log.exception("scheduler lease check failed")
            held = False
        if held != self._leader:
            _log.info("scheduler lease %s by %s", "taken" if held else "not held", self._lease.holder)
        self._leader = held
        return held

    # the jobs

    async def run_prune(self) -> PruneReport | None:
        """The prune job: only the lease holder prunes."""

        async def prune() -> PruneReport:
            limits = PruneLimits.from_settings(self._history)
            report = await asyncio.to_thread(prune_history, self._store, limits, now=self._clock())
            self._metrics.pruned(report.total)
            return report

        return await self._as_leader(PRUNE_JOB_ID, prune)

    async def run_nightly_finetune(self) -> object | None:
        """The nightly job: only the lease holder starts a fine-tune, and waits for its end."""
        finetune = self._finetune
        if finetune is None:
            return None

        async def train() -> object:
            return await finetune.run_nightly(actor="scheduler", trigger="schedule")

        return await self._as_leader(FINETUNE_JOB_ID, train)

    async def _sync_lora(self) -> None:
        if self._finetune is None:
            return
        try:
            await self._finetune.sync_active()
        except Exception:
            _log.exception("job %s failed", LORA_SYNC_JOB_ID)

    async def _as_leader(self, job_id: str, body: Callable[[], Awaitable[T]]) -> T | None:
        if not await self.check_lease():
            _log.info("job %s skipped: another process holds the scheduler lease", job_id)
            return None
        _log.info("job %s running", job_id)
        try:
            return await body()
        except Exception:
            _log.exception("job %s failed", job_id)
            return None


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"scheduler.timezone {name!r} is not a known time zone (HANBOT_SCHEDULER__TIMEZONE), e.g. Asia/Seoul"
        ) from None


def _cron(expression: str, zone: ZoneInfo, setting: str) -> CronTrigger:
    try:
        return CronTrigger.from_crontab(expression, timezone=zone)
    except ValueError as exc:
        env = "HANBOT_" + "__".join(part.upper() for part in setting.split("."))
        raise ConfigError(f"{setting} {expression!r} is not a cron expression ({env}): {exc}") from None
