"""FinetuneService: runs fine-tunes, promotes or rejects their LoRAs, switches and rolls back the engine's LoRA.

One run: take the run lease (one run at a time, across bot processes) → build the dataset → free the GPU or not
(``finetune.gpu_sharing``) → train in a subprocess, reading its progress → give the GPU back → quality gate →
promote (version folder, database row, ``engine.load_lora`` + ``use_lora``) or keep it as a candidate → record and
audit. A candidate (the gate refused it, or it passed while a trial was open: then admins decide) can be tried in
some channels (``try_candidate``: the other channels keep the active version) and promoted by hand
(``promote_candidate``). Which version answers in which conversation is ``routes`` (bot.learning.routing).

The default LoRA in service changes only at promotion and rollback. Whatever happens to the subprocess (a crash, a
kill, a timeout), the run is marked failed and the engine keeps serving what it served. If the bot itself dies
mid-run, the run lease expires; ``restore()`` at the next start marks the run failed and loads the active LoRA again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from bot.domain import BASE_MODEL, ConversationKey
from bot.errors import ConfigError, EngineError
from bot.learning.dataset import (
    EVAL_FILE,
    TRAIN_FILE,
    DatasetFiles,
    build_dataset,
    count_examples,
    held_out_examples,
    purge_author,
    top_up,
)
from bot.learning.defaults import effective_settings
from bot.learning.gate import ActiveVersion, GateDecision, GateRules, judge, refuse_small
from bot.learning.job import TrainJob, TrainResult
from bot.learning.launch import TrainerLaunch, mps_client_env, mps_daemon
from bot.learning.progress import LossHistory, PhaseClock, RunOrigin
from bot.learning.routing import LoraRoutes, scope_matches
from bot.learning.tenants import SHARED, TenantPolicy, TenantRoutes, scope_dataset_options
from bot.ports import Engine
from bot.settings import Settings
from bot.store.async_learning_records import AsyncLearningRecords
from bot.store.conversations import ConversationStore
from bot.store.learning_records import (
    DeletedTurns,
    LearningRecords,
    PruneSummary,
    RunInfo,
    RunOutcomeFields,
    RunStatus,
    TrialInfo,
    VersionInfo,
)
from bot.store.leases import Clock, DbLease, is_dead_local_process, process_identity
from bot.store.models import utcnow

_log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
RUN_LEASE = "finetune-run"
RUN_LORA_DIR = "lora"  # inside a run's folder: where the trainer saves the new LoRA
_OLD_RUN_LORA_DIR = "adapter"  # the same, in run folders from before the LoRA fields were named lora
HELD_OUT_NAME = "heldout.jsonl"  # kept beside each version: the next run's regression set
GENERAL_PROMPTS = PROJECT_ROOT / "bot" / "data" / "general_prompts.json"  # the gate's "did it damage" set
REPLAY_PROMPTS = (
    PROJECT_ROOT / "bot" / "data" / "replay_prompts.json"
)  # base answers trained on, against forgetting
PROGRESS_SAVE_INTERVAL_S = 2.0
PROGRESS_LOG_INTERVAL_S = 10.0


# called when a run ends (not when the bot stops it): the run as recorded, where it was asked for, its folder
RunListener = Callable[[RunInfo, RunOrigin | None, Path], Awaitable[None]]


class TrainingFailed(Exception):
    """The training subprocess did not produce a result (crash, kill, timeout).

    ``reason``: the same for /finetune status in the reader's language (``finetune.reason.<key>`` and fields)."""

    def __init__(self, message: str, reason: dict[str, Any]) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class StartOutcome:
    started: bool
    run: RunInfo | None  # the run just started, or the one already running


@dataclass(frozen=True)
class RollbackOutcome:
    rolled_back: bool
    previous: str | None = None  # version name that was active
    current: str | None = None  # version name now active, None for the base
    ended_trial: str | None = None  # the version whose trial this rollback ended (nothing else changed then)


@dataclass(frozen=True)
class TrialOutcome:
    started: bool
    version: str | None = None  # the candidate now served in ``scopes``
    scopes: tuple[str, ...] = ()
    active: str | None = None  # what every other conversation gets (None: the base)


@dataclass(frozen=True)
class PromoteOutcome:
    promoted: bool
    version: str | None = None  # now the default
    previous: str | None = None  # the default before, None for the base
    ended_trial: bool = False


@dataclass(frozen=True)
class ForgetOutcome:
    newly_opted_out: bool
    deleted_turns: int
    deleted_replies: int = 0  # the bot's replies to those turns


@dataclass(frozen=True)
class OptInOutcome:
    opted_in: bool  # an opt-out was undone
    by_settings: bool  # finetune.opted_out_users still keeps this user out (an admin's setting)


@dataclass(frozen=True)
class FinetuneStatus:
    running: RunInfo | None
    last: RunInfo | None
    active: VersionInfo | None
    last_prune: PruneSummary | None
    serving: str | None  # what this process's engine says it serves (a version name, or None for the base)
    trial: TrialInfo | None = None  # the open /finetune try
    candidate: VersionInfo | None = None  # the newest candidate, when no trial serves it
    tenant: str = SHARED  # the learning scope shown: the shared version, or a team's own


class FinetuneService:
    def __init__(
        self,
        settings: Settings,
        store: ConversationStore,
        engine: Engine,
        *,
        clock: Clock = utcnow,
        holder: str | None = None,
        trainer: TrainerLaunch | None = None,
    ) -> None:
        """``trainer``: how to start the trainer (the composition root's ``trainer_launch``); without it a run
        fails with "no trainer"."""
        self._settings = settings
        self._trainer = trainer
        self._store = store
        self._engine = engine
        self._records = LearningRecords(store, data_dir=settings.data_dir)
        self._db = AsyncLearningRecords(self._records)
        self._holder = holder or process_identity()
        self._lease = DbLease(
            store,
            RUN_LEASE,
            holder=self._holder,
            ttl=timedelta(seconds=settings.scheduler.lease_ttl_s),
            clock=clock,
        )
        self._start_lock = asyncio.Lock()
        self._switch_lock = asyncio.Lock()
        self._task: asyncio.Task[RunInfo] | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._loaded: set[str] = set()
        self._serving: str | None = None  # what this service last made the engine serve
        self._routes = LoraRoutes(
            settings.finetune.version_routes
        )  # the shared version's trial, configured routes
        self._listeners: list[RunListener] = []
        self._policy = TenantPolicy.from_settings(settings)
        self._tenant_routes = TenantRoutes()  # teams with their own versions

    @property
    def records(self) -> LearningRecords:
        return self._records

    def on_run_end(self, listener: RunListener) -> None:
        """Call ``listener`` when a run this process started ends (trained, refused, failed; not cancelled)."""
        self._listeners.append(listener)

    @property
    def routes(self) -> LoraRoutes:
        return self._routes

    @property
    def policy(self) -> TenantPolicy:
        return self._policy

    def records_for(self, tenant: str) -> LearningRecords:
        """The rows of one learning scope (``SHARED`` or a team with its own version)."""
        return self._records if tenant == SHARED else self._records.for_tenant(tenant)

    def db_for(self, tenant: str) -> AsyncLearningRecords:
        """The same rows' async API (one thread hop per operation)."""
        return self._db if tenant == SHARED else AsyncLearningRecords(self.records_for(tenant))

    def scope_for(self, key: ConversationKey, user_id: str | None = None) -> str | None:
        """Whose versions serve a conversation and learn from it: SHARED, the team's own, or None (the base)."""
        return self._policy.scope_for(key, user_id)

    def lora_for(self, key: ConversationKey, user_id: str | None = None) -> str | None:
        """``GenerationRequest.lora`` for a conversation (the chat service asks before each reply; ``user_id``: who
        speaks, which places a Discord DM in a team). In order: the team's own trial, a shared trial and
        ``finetune.version_routes``, then the team's own version (the base model until it has one), the base model
        for a team served the base, else the engine's default (the shared version)."""
        scope = self._policy.scope_for(key, user_id)
        if scope is not None and scope != SHARED:
            trial = self._tenant_routes.trial(scope)
            if trial is not None and any(scope_matches(s, key) for s in trial[1]):
                return trial[0]
        routed = self._routes.lora_for(key)
        if routed is not None or scope == SHARED:
            return routed
        return BASE_MODEL if scope is None else self._tenant_routes.lora_for(scope, key)

    def _scopes(self) -> list[str]:
        """The shared version first, then every team served a version of its own (listed in the settings, or
        with rows recorded while ``tenants.default`` is "own")."""
        recorded = [t for t in self._records.tenants() if t != SHARED]
        own = [t for t in self._policy.own_tenants(recorded) if self._policy.mode_of(t) == "own"]
        return [SHARED, *sorted(set(own))]

    @property
    def lora_dir(self) -> Path:
        """Absolute: the trainer runs in the project folder, whatever folder the bot runs in."""
        return self._settings.lora_dir.resolve()

    @property
    def training_pid(self) -> int | None:
        """The training subprocess's pid while one runs in this process."""
        return self._process.pid if self._process is not None else None

    # lifecycle

    async def restore(self) -> None:
        """At bot start: fail runs whose process died, load the versions the settings route channels to, and serve
        the active LoRA and the open trial again."""
        await asyncio.to_thread(self._fail_abandoned_runs)
        await self._load_configured_routes()
        await self.sync_active()

    async def sync_active(self) -> None:
        """Make this process's engine serve the active version and the open trial of every scope (another process
        may have promoted one or started a trial)."""
        for scope in await asyncio.to_thread(self._scopes):
            if scope == SHARED:
                await self._sync_default()
            else:
                await self._sync_own_default(scope)
            await self._sync_trial(scope)

    async def _sync_own_default(self, scope: str) -> None:
        """A team's own active version: loaded into the engine and routed to its conversations (the base model
        while it has none, or when its folder is missing or cannot be loaded)."""
        active = await self.db_for(scope).active_version()
        async with self._switch_lock:
            wanted = active.name if active else None
            if wanted == self._tenant_routes.active(scope) and (wanted is None or wanted in self._loaded):
                return
            if active is not None and not await asyncio.to_thread(Path(active.path).is_dir):
                _log.error(
                    "LoRA %s is active but its folder %s is missing: serving the base",
                    active.name,
                    active.path,
                )
                wanted = None
            elif active is not None:
                try:
                    await self._ensure_loaded(active)
                except EngineError as exc:
                    _log.error(
                        "LoRA %s is active but cannot be loaded (%s): serving the base", active.name, exc
                    )
                    wanted = None
            self._tenant_routes.set_active(scope, wanted)
            _log.info("tenant %s: serving LoRA %s", scope, wanted or "(base)")

    async def _sync_default(self) -> None:
        active = await self._db.active_version()
        present = active is not None and await asyncio.to_thread(Path(active.path).is_dir)
        async with self._switch_lock:
            wanted = active.name if active else None
            if wanted == self._serving:
                return
            if active is not None and not present:
                _log.error(
                    "LoRA %s is active but its folder %s is missing: serving the base",
                    active.name,
                    active.path,
                )
                wanted = None
                if self._serving is None:
                    return
            if active is not None and wanted is not None:
                try:
                    await self._ensure_loaded(active)
                except EngineError as exc:
                    _log.error(
                        "LoRA %s is active but cannot be loaded (%s): serving the base", active.name, exc
                    )
                    wanted = None
                    if self._serving is None:
                        return
            await self._engine.use_lora(wanted)
            self._serving = wanted
            _log.info("serving LoRA %s", wanted or "(base)")

    def _trial_served(self, scope: str) -> tuple[str, tuple[str, ...]] | None:
        return self._routes.trial if scope == SHARED else self._tenant_routes.trial(scope)

    def _set_trial(self, scope: str, version: str | None, scopes: tuple[str, ...] = ()) -> None:
        if scope == SHARED:
            self._routes.set_trial(version, scopes)
        else:
            self._tenant_routes.set_trial(scope, version, scopes)

    async def _sync_trial(self, scope: str = SHARED) -> None:
        records = self.db_for(scope)
        trial = await records.open_trial()
        async with self._switch_lock:
            wanted = (trial.version.name, trial.scopes) if trial else None
            if wanted == self._trial_served(scope):
                return
            if trial is not None and not await asyncio.to_thread(Path(trial.version.path).is_dir):
                _log.error(
                    "LoRA %s is on trial but its folder %s is missing: ending the trial",
                    trial.version.name,
                    trial.version.path,
                )
                await records.end_trial(reason="missing", actor="bot")
                self._set_trial(scope, None)
                return
            if trial is not None:
                await self._ensure_loaded(trial.version)
                self._set_trial(scope, trial.version.name, trial.scopes)
            else:
                self._set_trial(scope, None)
            _log.info(
                "trial: %s", f"LoRA {trial.version.name} in {len(trial.scopes)} scopes" if trial else "none"
            )

    async def _load_configured_routes(self) -> None:
        """Load the versions ``finetune.version_routes`` names. An unknown name stops the bot (a typo would
        otherwise serve the wrong version silently); a version whose folder is gone is logged, and its channels get
        the default."""
        names = self._routes.configured_versions
        if not names:
            return
        known = await self._db.versions_named(names)
        unknown = sorted(names - set(known))
        if unknown:
            raise ConfigError(
                f"finetune.version_routes names version(s) {', '.join(unknown)} that this bot never trained "
                f"(known: {', '.join(v.name for v in await self._db.versions()) or 'none'})"
            )
        for version in known.values():
            if not await asyncio.to_thread(Path(version.path).is_dir):
                _log.error(
                    "LoRA %s (finetune.version_routes) has no folder %s: its channels get the default",
                    version.name,
                    version.path,
                )
                continue
            await self._ensure_loaded(version)
            self._routes.mark_ready([version.name])

    async def aclose(self) -> None:
        """Stop a run in progress (its subprocess is killed, the run is marked cancelled)."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # commands

    async def start(
        self,
        *,
        actor: str,
        trigger: str = "manual",
        origin: RunOrigin | None = None,
        tenant: str = SHARED,
    ) -> StartOutcome:
        """Start a run of ``tenant``'s version in the background, or say which one is running already (one run at
        a time, whatever its scope: they share the GPU). ``origin``: where its end is posted (None: the admin
        channel of the settings, if any)."""
        async with self._start_lock:
            if self._task is not None and not self._task.done():
                return StartOutcome(False, await asyncio.to_thread(self._latest_running))
            if not await self._lease.take():
                return StartOutcome(False, await asyncio.to_thread(self._latest_running))
            await asyncio.to_thread(self._fail_abandoned_runs)  # holding the lease: no other run is alive
            run = await self.db_for(tenant).create_run(trigger=trigger, started_by=actor, owner=self._holder)
            _log.info("fine-tune run=%d tenant=%s started by=%s trigger=%s", run.id, tenant, actor, trigger)
            self._task = asyncio.create_task(self._execute(run, origin), name=f"finetune-run-{run.id}")
            return StartOutcome(True, run)

    async def run(
        self,
        *,
        actor: str,
        trigger: str = "manual",
        origin: RunOrigin | None = None,
        tenant: str = SHARED,
    ) -> RunInfo | None:
        """Start a run and wait for its end. None when another run was already going."""
        outcome = await self.start(actor=actor, trigger=trigger, origin=origin, tenant=tenant)
        if not outcome.started:
            return None
        return await self.wait()

    async def run_nightly(self, *, actor: str = "scheduler", trigger: str = "schedule") -> list[RunInfo]:
        """The nightly job: train, one at a time, each scope whose data changed enough since its last run (the
        shared version first), each through the same gate. Stops early if another process is running one."""
        finished: list[RunInfo] = []
        for scope in await asyncio.to_thread(self._scopes):
            if not await asyncio.to_thread(self._due, scope):
                continue
            run = await self.run(actor=actor, trigger=trigger, tenant=scope)
            if run is None:
                break
            finished.append(run)
        return finished

    def _due(self, scope: str) -> bool:
        """Whether a scope's examples changed by ``tenants.min_changed_examples`` since its last finished run (or,
        never trained, whether it has ``finetune.min_examples``)."""
        settings = effective_settings(self._settings)
        records = self.records_for(scope)
        options = scope_dataset_options(settings, scope, opted_out=records.opted_out_users())
        now = count_examples(self._store, options)
        last = records.last_finished_run()
        if last is None:
            due = now >= settings.finetune.min_examples
        else:
            due = (
                abs(now - (last.train_examples + last.eval_examples)) >= settings.tenants.min_changed_examples
            )
        _log.info("nightly: tenant=%s examples=%d due=%s", scope, now, due)
        return due

    async def wait(self) -> RunInfo | None:
        """Wait for the run this process started (if any) and return its record."""
        task = self._task
        if task is None:
            return None
        return await asyncio.shield(task)

    async def status(self, tenant: str = SHARED) -> FinetuneStatus:
        """The scope's running run, last run, active version, trial or candidate, and what this process serves it."""
        records = self.records_for(tenant)

        def read() -> FinetuneStatus:
            trial = records.open_trial()
            candidate = records.newest_candidate()
            if trial is not None and candidate is not None and candidate.id == trial.version.id:
                candidate = None
            running = records.running_runs()
            return FinetuneStatus(
                running=running[-1] if running else None,
                last=records.last_finished_run(),
                active=records.active_version(),
                last_prune=records.last_prune(),
                serving=self._engine.active_lora if tenant == SHARED else self._tenant_routes.active(tenant),
                trial=trial,
                candidate=candidate,
                tenant=tenant,
            )

        return await asyncio.to_thread(read)

    async def try_candidate(
        self, *, actor: str, scopes: tuple[str, ...], tenant: str = SHARED
    ) -> TrialOutcome:
        """Serve the newest candidate in ``scopes`` only; every other conversation keeps the active version.

        Replaces an open trial. The trial is stored, so it survives a restart and every bot process serves it."""
        records = self.db_for(tenant)
        async with self._switch_lock:
            candidate = await records.newest_candidate()
            if candidate is None or not await asyncio.to_thread(Path(candidate.path).is_dir):
                return TrialOutcome(False)
            await self._ensure_loaded(candidate)
            trial = await records.start_trial(candidate.id, scopes, actor=actor)
            self._set_trial(tenant, candidate.name, trial.scopes)
            active = await records.active_version()
        _log.info("trial of LoRA %s in %d scopes started by=%s", candidate.name, len(scopes), actor)
        return TrialOutcome(True, candidate.name, trial.scopes, active.name if active else None)

    async def promote_candidate(self, *, actor: str, tenant: str = SHARED) -> PromoteOutcome:
        """Make the version on trial (or, with no trial, the newest candidate) the default, and end the trial."""
        records = self.db_for(tenant)
        async with self._switch_lock:
            trial = await records.open_trial()
            candidate = trial.version if trial else await records.newest_candidate()
            if candidate is None or not await asyncio.to_thread(Path(candidate.path).is_dir):
                return PromoteOutcome(False)
            active = await records.active_version()
            await self._ensure_loaded(candidate)
            await self._serve(tenant, candidate.name)
            try:
                await records.promote_candidate(candidate.id, actor=actor)
            except BaseException:
                await self._serve_again(active, tenant)
                raise
            self._set_trial(tenant, None)
        _log.info(
            "LoRA %s promoted by=%s (was %s)", candidate.name, actor, active.name if active else "(base)"
        )
        return PromoteOutcome(True, candidate.name, active.name if active else None, trial is not None)

    async def rollback(self, *, actor: str, tenant: str = SHARED) -> RollbackOutcome:
        """Go back one step: end the open trial if there is one (everyone gets the active version again); else serve
        the version promoted before the active one (or the base), and retire the active one."""
        records = self.db_for(tenant)
        async with self._switch_lock:
            ended = await records.end_trial(reason="rollback", actor=actor)
            if ended is not None:
                self._set_trial(tenant, None)
                _log.info("trial of LoRA %s ended by=%s (rollback)", ended.version.name, actor)
                return RollbackOutcome(False, ended_trial=ended.version.name)
            active, target = await records.rollback_target()
            if active is None:
                return RollbackOutcome(False)
            if target is not None:
                await self._ensure_loaded(target)
            await self._serve(tenant, target.name if target else None)
            await records.roll_back(from_id=active.id, to_id=target.id if target else None, actor=actor)
        _log.info(
            "tenant %s: rolled back LoRA %s -> %s by=%s",
            tenant,
            active.name,
            target.name if target else "(base)",
            actor,
        )
        return RollbackOutcome(True, active.name, target.name if target else None)

    async def forget_user(self, platform: str, user_id: str, *, delete: bool) -> ForgetOutcome:
        """Opt a user out of training; with ``delete``, also remove their turns and the bot's replies to them."""

        def forget() -> ForgetOutcome:
            new = self._records.opt_out(platform, user_id)
            author = f"{platform}:{user_id}"
            purged = {path: purge_author(path, author) for path in self._kept_held_out_sets()}
            deleted = self._records.delete_user_turns(platform, user_id) if delete else DeletedTurns(0, 0)
            added = self._refresh_active_held_out(purged)
            _log.info(
                "opt-out platform=%s user=%s new=%s held_out_removed=%d held_out_added=%d deleted=%d "
                "replies_deleted=%d",
                platform,
                user_id,
                new,
                sum(purged.values()),
                added,
                deleted.turns,
                deleted.replies,
            )
            return ForgetOutcome(new, deleted.turns, deleted.replies)

        return await asyncio.to_thread(forget)

    async def opt_in(self, platform: str, user_id: str) -> OptInOutcome:
        """Undo ``forget_user``'s opt-out (deleted turns stay deleted)."""
        opted_in = await self._db.opt_in(platform, user_id)
        by_settings = f"{platform}:{user_id}" in self._settings.finetune.opted_out_users
        _log.info(
            "opt-in platform=%s user=%s undone=%s by_settings=%s", platform, user_id, opted_in, by_settings
        )
        return OptInOutcome(opted_in, by_settings)

    # one run

    async def _execute(self, run: RunInfo, origin: RunOrigin | None = None) -> RunInfo:
        renewer = asyncio.create_task(self._renew_lease_while_running(), name=f"finetune-lease-{run.id}")
        try:
            finished = await self._pipeline(run)
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            await self._lease.give_up()
        await self._tell_listeners(finished, origin)
        return finished

    async def _tell_listeners(self, run: RunInfo, origin: RunOrigin | None) -> None:
        for listener in self._listeners:
            try:
                await listener(run, origin, self._run_dir(run))
            except Exception:
                _log.exception("fine-tune run=%d: a run-end listener failed", run.id)

    def _run_dir(self, run: RunInfo) -> Path:
        return self.lora_dir / "runs" / f"run-{run.id:04d}"

    async def _pipeline(self, run: RunInfo) -> RunInfo:
        run_dir = self._run_dir(run)
        active = await self.db_for(run.tenant).active_version()
        settings = effective_settings(self._settings)
        rules = gate_rules(settings)
        try:
            files = await self._build_dataset(run, run_dir, settings)
            total = files.train_examples + files.eval_examples
            if total < settings.finetune.min_examples:
                return await self._finish(run, RunStatus.REJECTED, too_few_examples(files, settings))
            too_small = refuse_small(files.eval_examples, rules)
            if too_small is not None:
                _log.info("fine-tune run=%d not promoted: %s", run.id, too_small.reason)
                refused = RunOutcomeFields(
                    train_examples=files.train_examples,
                    eval_examples=files.eval_examples,
                    error=too_small.reason,
                    reason={"key": "gate"},
                    gate=too_small.report.as_json(),
                )
                return await self._finish(run, RunStatus.REJECTED, refused)
            job = self._job(run_dir, files, active, settings)
            job.write(run_dir / "job.json")
            result = await self._train(run, job, run_dir)
            decision = judge(
                result, rules, ActiveVersion(active.name, active.gate_passed) if active else None
            )
            fields = RunOutcomeFields(
                train_examples=result.train_examples,
                eval_examples=result.eval_examples,
                eval_loss=decision.candidate_loss,
                baseline_loss=decision.reference_loss,
                gate=decision.report.as_json(),
            )
            if not decision.promote:
                _log.info("fine-tune run=%d not promoted: %s", run.id, decision.reason)
                candidate = await self._keep_candidate(run, job, result, decision.candidate_loss)
                fields = replace(
                    fields,
                    error=decision.reason,
                    reason={"key": "gate"},
                    lora_path=candidate.path if candidate else None,
                )
                return await self._finish(run, RunStatus.REJECTED, fields)
            version = await self._promote(run, job, result, decision, active)
            if version is None:  # a trial is open: admins decide
                candidate = await self._keep_candidate(run, job, result, decision.candidate_loss)
                fields = replace(fields, lora_path=candidate.path if candidate else None)
                return await self._finish(run, RunStatus.HELD, fields)
            return await self._finish(run, RunStatus.SUCCEEDED, replace(fields, lora_path=version.path))
        except asyncio.CancelledError:
            await self._finish(run, RunStatus.CANCELLED, RunOutcomeFields(error="the bot stopped"))
            raise
        except TrainingFailed as exc:
            _log.warning("fine-tune run=%d failed: %s", run.id, exc)
            return await self._finish(
                run, RunStatus.FAILED, RunOutcomeFields(error=str(exc), reason=exc.reason)
            )
        except Exception as exc:
            _log.exception("fine-tune run=%d crashed", run.id)
            detail = f"{type(exc).__name__}: {exc}"
            return await self._finish(
                run,
                RunStatus.FAILED,
                RunOutcomeFields(error=detail, reason={"key": "crashed", "detail": detail[:300]}),
            )
        finally:
            await asyncio.to_thread(_remove_datasets, run_dir)

    async def _build_dataset(self, run: RunInfo, run_dir: Path, settings: Settings) -> DatasetFiles:
        opted_out = await self._db.opted_out_users()
        options = scope_dataset_options(settings, run.tenant, opted_out=opted_out)
        files = await asyncio.to_thread(build_dataset, self._store, options, run_dir)
        await self._db.set_examples(run.id, train=files.train_examples, eval=files.eval_examples)
        return files

    def _job(
        self, run_dir: Path, files: DatasetFiles, active: VersionInfo | None, settings: Settings
    ) -> TrainJob:
        """The trainer's job. The active version is always measured; only one that passed the gate is built on
        (training continues from it) and has its kept held-out split checked."""
        ft = settings.finetune
        trusted = active is not None and active.gate_passed
        regression = Path(active.path) / HELD_OUT_NAME if active and trusted else None
        return TrainJob(
            base_model=_model_reference(settings.model.name_or_path),
            train_file=str(files.train_path),
            eval_file=str(files.eval_path),
            output_dir=str(run_dir / RUN_LORA_DIR),
            result_file=str(run_dir / "result.json"),
            regression_file=str(regression) if regression and regression.is_file() else None,
            init_lora=active.path if active else None,
            continue_from_init=ft.continue_from_active and trusted,
            epochs=ft.epochs,
            max_steps=ft.max_steps,
            learning_rate=ft.learning_rate,
            lora_r=ft.lora_r,
            lora_alpha=ft.lora_alpha,
            max_seq_len=ft.max_seq_len,
            batch_size=ft.batch_size,
            micro_batch_size=ft.micro_batch_size,
            seed=ft.seed,
            # "shared": "auto" is the serving GPU (cuda:0), where the engine keeps engine.reserve_training_gib free
            device=(ft.train_device or "auto") if ft.gpu_sharing == "separate" else "auto",
            quantization=ft.quantization,
            general_prompts_file=str(GENERAL_PROMPTS) if GENERAL_PROMPTS.is_file() else None,
            replay_prompts_file=str(REPLAY_PROMPTS) if REPLAY_PROMPTS.is_file() else None,
            system_prompt=settings.model.system_prompt,
        )

    async def _train(self, run: RunInfo, job: TrainJob, run_dir: Path) -> TrainResult:
        """Train in a subprocess; in "pause" mode the engine gives the GPU up meanwhile ("separate" and "shared"
        keep it serving: on another device, or beside it on the same GPU)."""
        sharing = self._settings.finetune.gpu_sharing
        await self._db.set_gpu_sharing(run.id, sharing)  # /finetune status shows it
        pause = sharing == "pause"
        if pause:
            _log.info("fine-tune run=%d: pausing the engine (maintenance) while training", run.id)
            await self._engine.pause()
        elif sharing == "shared":
            _log_gpu_sharing(run.id, self._settings)
        try:
            return await self._run_trainer(run, job, run_dir)
        finally:
            if pause:
                await self._engine.resume()
                _log.info("fine-tune run=%d: engine resumed", run.id)

    async def _run_trainer(self, run: RunInfo, job: TrainJob, run_dir: Path) -> TrainResult:
        log_path = run_dir / "train.log"
        with log_path.open("ab") as log:
            if self._trainer is None:
                raise TrainingFailed(
                    "no trainer: this bot was built without one (bot.app.trainer_launch)",
                    {"key": "no_trainer"},
                )
            process = await asyncio.create_subprocess_exec(
                *self._trainer.command(run_dir / "job.json"),
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                cwd=str(self._trainer.cwd),
                env=self._trainer.env(self._settings.finetune),
            )
        self._process = process
        _log.info("fine-tune run=%d: trainer pid=%d", run.id, process.pid)
        try:
            async with asyncio.timeout(self._settings.finetune.timeout_s):
                await self._follow_progress(run, process, run_dir)
                code = await process.wait()
        except TimeoutError:
            await _kill(process)
            seconds = round(self._settings.finetune.timeout_s)
            raise TrainingFailed(
                f"timed out after {seconds} s", {"key": "timeout", "seconds": seconds}
            ) from None
        except BaseException:
            await _kill(process)
            raise
        finally:
            self._process = None
        if code != 0:
            detail = f"{_describe_exit(code)}; {_tail(log_path)}"
            raise TrainingFailed(f"trainer {detail}", {"key": "trainer_stopped", "detail": detail[:300]})
        try:
            return TrainResult.read(Path(job.result_file))
        except (OSError, ValueError, KeyError) as exc:
            raise TrainingFailed(
                f"trainer left no readable result: {exc}", {"key": "no_result", "detail": str(exc)[:300]}
            ) from exc

    async def _follow_progress(
        self, run: RunInfo, process: asyncio.subprocess.Process, run_dir: Path
    ) -> None:
        """Keep the run's progress (and its loss history, ``bot.learning.progress``) in its record as it goes."""
        assert process.stdout is not None
        progress: dict[str, Any] = {}
        history, clock = LossHistory(), PhaseClock()
        saved = logged = 0.0
        async for raw in process.stdout:
            event = _parse_event(raw)
            if event is None:
                continue
            kind = event.pop("event")
            if history.add_event(kind, event):
                progress["losses"] = history.as_json()
            if kind == "progress":
                progress.update(phase="training", **event)
                progress["updated"] = time.time()  # when eta_s was said (the maintenance estimate)
            elif kind == "phase":
                progress["phase"] = event.get("phase")
                clock.phase(event.get("phase"))
                if clock.scoring_s is not None:
                    progress["scoring_s"] = round(clock.scoring_s, 1)
            elif kind == "heldout":
                _log.info(
                    "fine-tune run=%d step %s held-out loss=%s", run.id, event.get("step"), event.get("loss")
                )
            elif kind == "eval":
                progress[f"loss_{event.get('split')}_{event.get('which')}"] = event.get("loss")
                _log.info(
                    "fine-tune run=%d held-out loss %s/%s=%.4f",
                    run.id,
                    event.get("split"),
                    event.get("which"),
                    float(event.get("loss") or 0.0),
                )
            now = time.monotonic()
            last_step = kind == "progress" and event.get("step") == event.get("total")
            if now - saved >= PROGRESS_SAVE_INTERVAL_S or kind != "progress" or last_step:
                saved = now
                await self._db.update_progress(run.id, dict(progress))
            if kind == "progress" and (now - logged >= PROGRESS_LOG_INTERVAL_S or last_step):
                logged = now
                _log.info(
                    "fine-tune run=%d step %s/%s loss=%s eta=%ss",
                    run.id,
                    event.get("step"),
                    event.get("total"),
                    event.get("loss"),
                    event.get("eta_s"),
                )
        if history:
            await self._db.update_progress(run.id, {"losses": history.as_json()})
            await asyncio.to_thread(history.write, run_dir)

    async def _promote(
        self,
        run: RunInfo,
        job: TrainJob,
        result: TrainResult,
        decision: GateDecision,
        compared_with: VersionInfo | None,
    ) -> VersionInfo | None:
        """Version the LoRA on disk, switch the engine to it, and record it as active.

        None when a trial is open: then nothing is promoted automatically (the caller keeps it as a candidate)."""
        records = self.db_for(run.tenant)
        async with self._switch_lock:
            active = await records.active_version()
            if (active.id if active else None) != (compared_with.id if compared_with else None):
                raise TrainingFailed(
                    "the active LoRA changed while this run trained; not promoting", {"key": "active_changed"}
                )
            trial = await records.open_trial()
            if trial is not None:
                _log.info(
                    "fine-tune run=%d passed the gate; not promoted while LoRA %s is on trial",
                    run.id,
                    trial.version.name,
                )
                return None
            name = await self._db.next_version_name()
            version_dir = self.lora_dir / "versions" / name
            await asyncio.to_thread(
                _store_version, Path(job.output_dir), Path(job.eval_file), result, version_dir
            )
            try:
                await self._load(name, str(version_dir))
                await self._serve(run.tenant, name)
                assert decision.candidate_loss is not None
                version = await records.promote(
                    name=name,
                    path=str(version_dir),
                    run_id=run.id,
                    eval_loss=decision.candidate_loss,
                    actor=run.started_by,
                    gate_passed=decision.promote,
                )
            except BaseException:
                await self._serve_again(active, run.tenant)
                await asyncio.to_thread(shutil.rmtree, version_dir, True)
                raise
        _log.info(
            "fine-tune run=%d tenant=%s promoted as LoRA %s (%s)", run.id, run.tenant, name, decision.reason
        )
        return version

    async def _keep_candidate(
        self, run: RunInfo, job: TrainJob, result: TrainResult, eval_loss: float | None
    ) -> VersionInfo | None:
        """Keep a trained LoRA that was not promoted as a candidate version (for /finetune try and promote).

        Older candidates no trial serves are dropped, folders included. A failure here loses only the candidate."""
        try:
            async with self._switch_lock:
                name = await self._db.next_version_name()
                version_dir = self.lora_dir / "versions" / name
                await asyncio.to_thread(
                    _store_version, Path(job.output_dir), Path(job.eval_file), result, version_dir
                )
                candidate, superseded = await self.db_for(run.tenant).add_candidate(
                    name=name,
                    path=str(version_dir),
                    run_id=run.id,
                    eval_loss=eval_loss,
                    actor=run.started_by,
                )
            for old in superseded:
                await asyncio.to_thread(shutil.rmtree, old.path, True)
        except Exception:
            _log.exception("fine-tune run=%d: could not keep the LoRA as a candidate", run.id)
            return None
        _log.info(
            "fine-tune run=%d kept as candidate LoRA %s (dropped: %s)",
            run.id,
            candidate.name,
            ", ".join(v.name for v in superseded) or "none",
        )
        return candidate

    async def _serve(self, tenant: str, name: str | None) -> None:
        """Make ``name`` (loaded; None: the base) what ``tenant``'s conversations get by default: the engine's default
        for the shared version, the team's route for its own."""
        if tenant == SHARED:
            await self._engine.use_lora(name)
            self._serving = name
        else:
            self._tenant_routes.set_active(tenant, name)

    async def _serve_again(self, version: VersionInfo | None, tenant: str = SHARED) -> None:
        """After a failed switch, make sure the engine serves what it served before (best effort)."""
        name = version.name if version else None
        try:
            await self._serve(tenant, name)
        except Exception:
            _log.exception(
                "could not switch the engine back to %s after a failed promotion", name or "the base"
            )

    async def _finish(self, run: RunInfo, status: RunStatus, fields: RunOutcomeFields) -> RunInfo:
        finished = await self.db_for(run.tenant).finish_run(run.id, status, fields)
        _log.info("fine-tune run=%d finished: %s", run.id, status.value)
        return finished

    async def _renew_lease_while_running(self) -> None:
        interval = max(1.0, self._settings.scheduler.lease_ttl_s / 3)
        while True:
            await asyncio.sleep(interval)
            if not await self._lease.take():
                _log.warning("fine-tune run lease was lost (database unreachable for too long?)")

    async def _ensure_loaded(self, version: VersionInfo) -> None:
        if version.name not in self._loaded:
            await self._load(version.name, version.path)

    async def _load(self, name: str, path: str) -> None:
        """Load a version into the engine. An engine with a fixed adapter pool may unload a version nothing needs
        now to make room (not the default, the trial's or a routed one, with enough engine.lora_slots): those are
        forgotten here, and loaded again when they are needed next (a rollback to them, say)."""
        await self._engine.load_lora(name, path)
        trial = self._routes.trial
        needed = {
            self._serving,
            trial[0] if trial else None,
            *self._routes.ready_versions,
            *self._tenant_routes.names(),
        }
        self._loaded = {name} | (self._loaded & {n for n in needed if n})

    # helpers

    def _latest_running(self) -> RunInfo | None:
        running = self._records.running_runs(every_tenant=True)
        return running[-1] if running else None

    def _fail_abandoned_runs(self) -> None:
        """Runs marked running whose owner no longer holds the run lease died with their bot process.

        A holder on this host whose process is gone (the bot crashed and restarted before the lease ran out) is
        dead too: its lease is broken at once.
        """
        holder = self._lease.current_holder()
        if holder is not None and holder != self._holder and is_dead_local_process(holder):
            self._lease.break_if_held_by(holder)
            holder = None
        for run in self._records.running_runs(every_tenant=True):
            if holder is None or run.progress.get("owner") != holder:
                self.records_for(run.tenant).finish_run(
                    run.id,
                    RunStatus.FAILED,
                    RunOutcomeFields(
                        error="the bot stopped while this run was training", reason={"key": "abandoned"}
                    ),
                )
                _log.warning("fine-tune run=%d was left running by a stopped bot: marked failed", run.id)

    def _refresh_active_held_out(self, purged: dict[Path, int]) -> int:
        """An active version's kept held-out set lost examples to an opt-out: top it up with today's held-out
        examples of its own scope (never trained on by any run with these settings), so the next gate is not
        silently weaker. Every scope's active version, each from its own conversations only."""
        added = 0
        opted_out = self._records.opted_out_users()
        for scope in self._scopes():
            active = self.records_for(scope).active_version()
            kept = Path(active.path) / HELD_OUT_NAME if active is not None else None
            if kept is None or not purged.get(kept):
                continue
            options = scope_dataset_options(self._settings, scope, opted_out=opted_out)
            added += top_up(kept, held_out_examples(self._store, options))
        return added

    def _kept_held_out_sets(self) -> list[Path]:
        versions = self.lora_dir / "versions"
        return sorted(versions.glob(f"*/{HELD_OUT_NAME}")) if versions.is_dir() else []


def gate_rules(settings: Settings) -> GateRules:
    ft = settings.finetune
    return GateRules(
        min_eval_examples=ft.min_eval_examples,
        z=ft.gate_z,
        min_relative_gain=ft.promote_margin,
        min_pair_gain=ft.min_pair_gain,
        general_max_increase=ft.general_max_increase,
    )


def too_few_examples(files: DatasetFiles, settings: Settings) -> RunOutcomeFields:
    """The refusal of a run with too little data, with what the dataset rules left out and why."""
    dropped = {
        "opted_out": files.counts.get("opted_out_exchanges", 0),
        "excluded": files.counts.get("excluded_replies", 0),
        "feedback": files.counts.get("feedback_dropped", 0),
    }
    total = files.train_examples + files.eval_examples
    minimum = settings.finetune.min_examples
    error = (
        f"too few examples: {total} < {minimum} (left out: {dropped['opted_out']} replies to people who opted "
        f"out, {dropped['excluded']} in excluded channels, {dropped['feedback']} by feedback)"
    )
    reason = {"key": "too_few", "total": total, "minimum": minimum, **dropped}
    return RunOutcomeFields(
        train_examples=files.train_examples, eval_examples=files.eval_examples, error=error, reason=reason
    )


def _model_reference(name_or_path: str) -> str:
    """A local model folder named relative to the bot's working folder, made absolute for the trainer (which runs
    in the project folder); a Hub id as it is."""
    local = Path(name_or_path).expanduser()
    return str(local.resolve()) if local.exists() else name_or_path


def _parse_event(raw: bytes) -> dict[str, Any] | None:
    try:
        event = json.loads(raw)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


TRAINER_STOP_GRACE_S = 10.0  # a trainer asked to stop (SIGTERM) gets this long before it is killed


async def _kill(process: asyncio.subprocess.Process, grace_s: float = TRAINER_STOP_GRACE_S) -> None:
    """Stop the trainer: SIGTERM first (it leaves at once, letting its GPU work finish: under MPS a client killed
    with kernels in flight can upset the server the engine shares), SIGKILL if it is still there after ``grace_s``."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        async with asyncio.timeout(grace_s):
            await process.wait()
        return
    except TimeoutError:
        _log.warning("trainer pid=%d did not stop within %.0f s of SIGTERM: killing it", process.pid, grace_s)
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    await process.wait()


def _log_gpu_sharing(run_id: int, settings: Settings) -> None:
    """One line at the start of a shared training: whether an MPS daemon serves this GPU (the trainer's kernels then
    run beside the engine's, within its limits) or not (the two processes time-slice the GPU)."""
    daemon = mps_daemon()
    limits = " ".join(f"{k}={v}" for k, v in mps_client_env(settings.finetune).items())
    if daemon.serving:
        _log.info(
            "fine-tune run=%d: training beside the engine on its GPU under MPS (control daemon pid=%d, pipe "
            "directory %s; %s); the engine is its client too if the bot started after the daemon",
            run_id,
            daemon.pid,
            daemon.pipe_directory,
            limits or "no trainer limits",
        )
    else:
        _log.info(
            "fine-tune run=%d: training beside the engine on its GPU without MPS (no control daemon's live pid file "
            "in %s): the two processes time-slice the GPU%s",
            run_id,
            daemon.pipe_directory,
            f"; {limits} take effect only under MPS" if limits else "",
        )


def _describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _tail(log_path: Path, lines: int = 3) -> str:
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return " | ".join(text[-lines:])[-600:] or "empty log"


def _store_version(lora_dir: Path, eval_file: Path, result: TrainResult, version_dir: Path) -> None:
    version_dir.parent.mkdir(parents=True, exist_ok=True)
    if version_dir.exists():
        shutil.rmtree(version_dir)
    shutil.move(str(lora_dir), str(version_dir))
    shutil.copyfile(eval_file, version_dir / HELD_OUT_NAME)
    (version_dir / "metrics.json").write_text(
        json.dumps(
            {
                "eval": vars(result.eval),
                "steps": result.steps,
                "train_examples": result.train_examples,
                "eval_examples": result.eval_examples,
                "device": result.device,
                "quantized": result.quantized,
            },
            indent=1,
        ),
        encoding="utf-8",
    )


def _remove_datasets(run_dir: Path) -> None:
    """Training text does not outlive its run (the held-out set is copied into a promoted version)."""
    for name in (TRAIN_FILE, EVAL_FILE):
        with contextlib.suppress(FileNotFoundError):
            (run_dir / name).unlink()
    for folder in (RUN_LORA_DIR, _OLD_RUN_LORA_DIR):
        shutil.rmtree(run_dir / folder, ignore_errors=True)
