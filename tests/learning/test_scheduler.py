"""BotScheduler: job configuration, and two scheduler instances on one database (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.triggers.cron import CronTrigger

from bot.domain import ConversationKey, Role
from bot.errors import ConfigError
from bot.scheduler import FINETUNE_JOB_ID, PRUNE_JOB_ID, BotScheduler
from bot.settings import Settings, load_settings
from bot.store.conversations import ConversationStore
from tests.learning.helpers import FixedClock, add_turn

SEOUL = ZoneInfo("Asia/Seoul")


class CountingFinetune:
    """Stands in for FinetuneService: counts nightly runs."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, str]] = []
        self.synced = 0

    async def run_nightly(self, *, actor: str, trigger: str) -> object:
        self.runs.append((actor, trigger))
        await asyncio.sleep(0.2)  # long enough for the other process's job to fire meanwhile
        return None

    async def sync_active(self) -> None:
        self.synced += 1


def _settings(tmp_path: Path, **scheduler: object) -> Settings:
    return load_settings(
        data_dir=tmp_path / "data",
        scheduler={"finetune_enabled": True, "lease_ttl_s": 30, **scheduler},
        history={"max_age_days": 30, "max_messages_per_conversation": 10, "keep_recent_messages": 2},
    )


async def _fire_now(scheduler: BotScheduler, job_id: str) -> asyncio.Future[JobExecutionEvent]:
    """Make ``job_id`` due now and return a future for its execution event."""
    done: asyncio.Future[JobExecutionEvent] = asyncio.get_running_loop().create_future()

    def listener(event: JobExecutionEvent) -> None:
        if event.job_id == job_id and not done.done():
            done.set_result(event)

    scheduler.scheduler.add_listener(listener, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED)
    job = scheduler.scheduler.get_job(job_id)
    assert job is not None
    job.modify(next_run_time=datetime.now(SEOUL))
    return done


async def test_jobs_have_fixed_ids_cron_timezone_grace_and_coalescing(
    sqlite_store: ConversationStore, tmp_path: Path
) -> None:
    scheduler = BotScheduler(_settings(tmp_path), sqlite_store, CountingFinetune(), holder="only")
    await scheduler.start()
    try:
        prune = scheduler.scheduler.get_job(PRUNE_JOB_ID)
        nightly = scheduler.scheduler.get_job(FINETUNE_JOB_ID)
        assert prune is not None and nightly is not None
        for job in (prune, nightly):
            assert isinstance(job.trigger, CronTrigger)
            assert str(job.trigger.timezone) == "Asia/Seoul"
            assert job.coalesce is True
            assert job.max_instances == 1
        assert nightly.misfire_grace_time == 6 * 3600
        assert prune.misfire_grace_time == 3600
        assert nightly.next_run_time.astimezone(SEOUL).strftime("%H:%M") == "02:00"
        assert prune.next_run_time.astimezone(SEOUL).strftime("%H:%M") == "03:30"
        assert scheduler.is_leader
    finally:
        await scheduler.shutdown()


async def test_nightly_finetune_is_off_unless_enabled(
    sqlite_store: ConversationStore, tmp_path: Path
) -> None:
    scheduler = BotScheduler(_settings(tmp_path, finetune_enabled=False), sqlite_store, CountingFinetune())
    await scheduler.start()
    try:
        assert scheduler.scheduler.get_job(FINETUNE_JOB_ID) is None
        assert scheduler.scheduler.get_job(PRUNE_JOB_ID) is not None
    finally:
        await scheduler.shutdown()


def test_bad_cron_or_timezone_is_a_clear_config_error(
    sqlite_store: ConversationStore, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="HANBOT_SCHEDULER__FINETUNE_CRON"):
        BotScheduler(_settings(tmp_path, finetune_cron="every night"), sqlite_store)
    with pytest.raises(ConfigError, match="time zone"):
        BotScheduler(_settings(tmp_path, timezone="Mars/Olympus"), sqlite_store)


async def test_two_schedulers_on_one_database_run_the_nightly_job_once(
    store: ConversationStore, tmp_path: Path
) -> None:
    settings = _settings(tmp_path)
    finetune = CountingFinetune()
    first = BotScheduler(settings, store, finetune, holder="process-a")
    second = BotScheduler(settings, store, finetune, holder="process-b")
    await first.start()
    await second.start()
    try:
        assert first.is_leader and not second.is_leader

        fired = [await _fire_now(first, FINETUNE_JOB_ID), await _fire_now(second, FINETUNE_JOB_ID)]
        await asyncio.wait_for(asyncio.gather(*fired), timeout=15)
        assert finetune.runs == [("scheduler", "schedule")]

        # the leader stops: its lease is given back and the other process takes the jobs over
        await first.shutdown()
        assert await second.check_lease()
        await asyncio.wait_for(await _fire_now(second, FINETUNE_JOB_ID), timeout=15)
        assert len(finetune.runs) == 2
    finally:
        await first.shutdown()
        await second.shutdown()


async def test_a_dead_leader_is_replaced_once_its_lease_expires(
    store: ConversationStore, tmp_path: Path
) -> None:
    clock = FixedClock()
    settings = _settings(tmp_path)
    finetune = CountingFinetune()
    dead = BotScheduler(settings, store, finetune, clock=clock, holder="dead")
    alive = BotScheduler(settings, store, finetune, clock=clock, holder="alive")
    assert await dead.check_lease()  # then it dies without shutdown()
    assert not await alive.check_lease()
    assert await alive.run_nightly_finetune() is None
    clock.advance(seconds=31)
    assert await alive.check_lease()
    await alive.run_nightly_finetune()
    assert finetune.runs == [("scheduler", "schedule")]


async def test_prune_job_runs_in_the_leader_with_its_clock(store: ConversationStore, tmp_path: Path) -> None:
    clock = FixedClock()
    settings = _settings(tmp_path)
    key = ConversationKey("discord", "G", "C")
    ids = [
        add_turn(store, key, Role.USER, f"t{i}", at=clock() - timedelta(days=40 - i * 5)) for i in range(8)
    ]
    leader = BotScheduler(settings, store, clock=clock, holder="a")
    follower = BotScheduler(settings, store, clock=clock, holder="b")
    assert await leader.check_lease()
    assert await follower.run_prune() is None
    report = await leader.run_prune()
    assert report is not None
    # 40, 35, 30 (exactly 30: kept), 25, ... days old: only the first two are outside the age limit
    assert report.removed == {str(key): 2}
    assert [m.id for m in store.history(key)] == ids[2:]
