"""The learning loop's rows: fine-tune runs, LoRA versions, audit events, opt-outs and prune records.

Synchronous, one short transaction per call, like ConversationStore; async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.domain import Role
from bot.learning.paths import from_stored, to_stored
from bot.learning.tenants import SHARED
from bot.store.conversations import ConversationStore
from bot.store.models import (
    AuditEvent,
    FinetuneRun,
    LoraTrial,
    LoraVersion,
    Message,
    OptOut,
    PruneRecord,
    utcnow,
)

_log = logging.getLogger(__name__)

PRUNE_TOTAL_LABEL = "(all)"  # the prune job's summary row; the others are labelled with a conversation key


class RunStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # trained and promoted
    REJECTED = "rejected"  # trained (or had too little data) and not promoted: the quality gate said no
    FAILED = "failed"  # crashed, killed, timed out, or the bot died while it ran
    HELD = "held"  # passed the gate but kept as a candidate: a trial was going (/finetune try), admins decide
    CANCELLED = "cancelled"  # the bot shut down while it ran


@dataclass(frozen=True)
class RunInfo:
    id: int
    status: RunStatus
    trigger: str
    started_by: str
    started_at: datetime
    finished_at: datetime | None
    progress: dict[str, Any]
    train_examples: int
    eval_examples: int
    eval_loss: float | None
    baseline_loss: float | None
    lora_path: str | None
    error: str | None
    gpu_sharing: str | None = None  # finetune.gpu_sharing of its training (None: it never trained)
    gate: dict[str, Any] | None = None  # the gate's checks (bot.learning.gate.GateReport.as_json)
    tenant: str = SHARED  # the learning scope it trains (bot.learning.tenants)

    @classmethod
    def of(cls, row: FinetuneRun, data_dir: Path | None = None) -> RunInfo:
        return cls(
            id=row.id,
            status=RunStatus(row.status),
            trigger=row.trigger,
            started_by=row.started_by,
            started_at=row.started_at,
            finished_at=row.finished_at,
            progress=dict(row.progress or {}),
            train_examples=row.train_examples,
            eval_examples=row.eval_examples,
            eval_loss=row.eval_loss,
            baseline_loss=row.baseline_loss,
            lora_path=_resolved(row.lora_path, data_dir),
            error=row.error,
            gpu_sharing=row.gpu_sharing,
            gate=dict(row.gate) if row.gate else None,
            tenant=row.tenant or SHARED,
        )


@dataclass(frozen=True)
class VersionInfo:
    id: int
    name: str
    path: str  # the folder, absolute (the database keeps it relative to the data directory)
    run_id: int | None
    eval_loss: float | None
    is_active: bool
    created_at: datetime
    retired_at: datetime | None
    promoted_at: datetime | None = None  # None: a candidate, never promoted
    gate_passed: bool = False  # passed the gate and not rolled back: its held-out set checks the next run

    @classmethod
    def of(cls, row: LoraVersion, data_dir: Path | None = None) -> VersionInfo:
        return cls(
            id=row.id,
            name=row.name,
            path=_resolved(row.path, data_dir) or row.path,
            run_id=row.run_id,
            eval_loss=row.eval_loss,
            is_active=row.is_active,
            created_at=row.created_at,
            retired_at=row.retired_at,
            promoted_at=row.promoted_at,
            gate_passed=bool(row.gate_passed),
        )


@dataclass(frozen=True)
class TrialInfo:
    """The open ``/finetune try``: which version, where (conversation keys or prefixes), who started it and when."""

    id: int
    version: VersionInfo
    scopes: tuple[str, ...]
    started_by: str
    started_at: datetime


@dataclass(frozen=True)
class PruneSummary:
    ran_at: datetime
    conversations: int
    removed: int


@dataclass(frozen=True)
class DeletedTurns:
    """What /forget-me delete:yes removed: the user's turns, and the bot's replies to them."""

    turns: int
    replies: int


@dataclass(frozen=True)
class RunOutcomeFields:
    """What a finished run records besides its status."""

    train_examples: int = 0
    eval_examples: int = 0
    eval_loss: float | None = None
    baseline_loss: float | None = None
    lora_path: str | None = None
    error: str | None = None  # an English phrase for the logs and the audit trail
    # the same reason for /finetune status in the reader's language: {"key": <finetune.reason.KEY in texts>, **fields}
    reason: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None  # the gate's checks (bot.learning.gate.GateReport.as_json)


class LearningRecords:
    """One learning scope's rows (``tenant``: ``SHARED``, or a team with its own version; bot.learning.tenants):
    its runs, versions, trial and fine-tune audit events. Opt-outs, deletions and prune records are everyone's.

    ``data_dir``: version folders are stored relative to it and handed out absolute (None: as stored)."""

    def __init__(
        self, store: ConversationStore, *, data_dir: Path | None = None, tenant: str = SHARED
    ) -> None:
        self._store = store
        self._data_dir = data_dir
        self._tenant = tenant

    @property
    def tenant(self) -> str:
        return self._tenant

    def for_tenant(self, tenant: str) -> LearningRecords:
        """The same store and data directory, another learning scope."""
        return LearningRecords(self._store, data_dir=self._data_dir, tenant=tenant)

    def tenants(self) -> list[str]:
        """The learning scopes that have runs or versions recorded."""
        with self._store.session() as session:
            found = set(session.scalars(select(FinetuneRun.tenant).distinct()))
            found |= set(session.scalars(select(LoraVersion.tenant).distinct()))
        return sorted(found)

    def _run(self, row: FinetuneRun) -> RunInfo:
        return RunInfo.of(row, self._data_dir)

    def _version(self, row: LoraVersion) -> VersionInfo:
        return VersionInfo.of(row, self._data_dir)

    def _trial(self, session: Session, trial: LoraTrial) -> TrialInfo:
        version = session.get(LoraVersion, trial.version_id)
        assert version is not None  # the foreign key cascades
        return TrialInfo(
            id=trial.id,
            version=self._version(version),
            scopes=tuple(trial.scopes or ()),
            started_by=trial.started_by,
            started_at=trial.started_at,
        )

    def _stored(self, path: str | None) -> str | None:
        return to_stored(path, self._data_dir) if path is not None and self._data_dir is not None else path

    # runs

    def create_run(self, *, trigger: str, started_by: str, owner: str) -> RunInfo:
        with self._store.session() as session, session.begin():
            row = FinetuneRun(
                tenant=self._tenant,
                status=RunStatus.RUNNING.value,
                trigger=trigger,
                started_by=started_by,
                started_at=utcnow(),
                progress={"owner": owner, "phase": "dataset"},
            )
            session.add(row)
            session.flush()
            session.add(
                AuditEvent(
                    action="finetune.start",
                    actor=started_by,
                    detail={"run": row.id, "trigger": trigger},
                    tenant=self._tenant,
                )
            )
            return self._run(row)

    def update_progress(self, run_id: int, progress: dict[str, Any]) -> None:
        with self._store.session() as session, session.begin():
            row = session.get(FinetuneRun, run_id)
            if row is not None:
                row.progress = {**(row.progress or {}), **progress}

    def set_gpu_sharing(self, run_id: int, mode: str) -> None:
        """How the run's training shares the GPU with serving (``finetune.gpu_sharing``), when training starts."""
        with self._store.session() as session, session.begin():
            session.execute(update(FinetuneRun).where(FinetuneRun.id == run_id).values(gpu_sharing=mode))

    def set_examples(self, run_id: int, *, train: int, eval: int) -> None:
        with self._store.session() as session, session.begin():
            session.execute(
                update(FinetuneRun)
                .where(FinetuneRun.id == run_id)
                .values(train_examples=train, eval_examples=eval)
            )

    def finish_run(self, run_id: int, status: RunStatus, fields: RunOutcomeFields) -> RunInfo:
        with self._store.session() as session, session.begin():
            row = session.get(FinetuneRun, run_id)
            if row is None:
                raise LookupError(f"no fine-tune run {run_id}")
            row.status = status.value
            row.finished_at = utcnow()
            row.train_examples = fields.train_examples or row.train_examples
            row.eval_examples = fields.eval_examples or row.eval_examples
            row.eval_loss = fields.eval_loss
            row.baseline_loss = fields.baseline_loss
            row.lora_path = self._stored(fields.lora_path)
            row.error = fields.error[:2000] if fields.error else None
            if fields.reason is not None:
                row.progress = {**(row.progress or {}), "reason": fields.reason}
            row.gate = fields.gate
            session.add(
                AuditEvent(
                    action=f"finetune.{status.value}",
                    actor=row.started_by,
                    detail={
                        "run": run_id,
                        "eval_loss": fields.eval_loss,
                        "baseline_loss": fields.baseline_loss,
                    },
                    tenant=self._tenant,
                )
            )
            return self._run(row)

    def run(self, run_id: int) -> RunInfo | None:
        with self._store.session() as session:
            row = session.get(FinetuneRun, run_id)
            return self._run(row) if row else None

    def running_runs(self, *, every_tenant: bool = False) -> list[RunInfo]:
        """Runs marked running in this scope (``every_tenant``: in any scope: one run at a time trains)."""
        with self._store.session() as session:
            query = select(FinetuneRun).where(FinetuneRun.status == RunStatus.RUNNING.value)
            if not every_tenant:
                query = query.where(FinetuneRun.tenant == self._tenant)
            rows = session.scalars(query.order_by(FinetuneRun.id))
            return [self._run(r) for r in rows]

    def last_finished_run(self) -> RunInfo | None:
        with self._store.session() as session:
            row = session.scalar(
                select(FinetuneRun)
                .where(FinetuneRun.status != RunStatus.RUNNING.value, FinetuneRun.tenant == self._tenant)
                .order_by(FinetuneRun.id.desc())
                .limit(1)
            )
            return self._run(row) if row else None

    # LoRA versions

    def active_version(self) -> VersionInfo | None:
        with self._store.session() as session:
            row = session.scalar(
                select(LoraVersion)
                .where(LoraVersion.is_active.is_(True), LoraVersion.tenant == self._tenant)
                .limit(1)
            )
            return self._version(row) if row else None

    def versions(self) -> list[VersionInfo]:
        with self._store.session() as session:
            query = select(LoraVersion).where(LoraVersion.tenant == self._tenant).order_by(LoraVersion.id)
            return [self._version(r) for r in session.scalars(query)]

    def next_version_name(self) -> str:
        with self._store.session() as session:
            count = session.scalar(select(func.count(LoraVersion.id))) or 0
        return f"v{count + 1}"

    def promote(
        self,
        *,
        name: str,
        path: str,
        run_id: int | None,
        eval_loss: float | None,
        actor: str,
        gate_passed: bool = False,
    ) -> VersionInfo:
        """Record a new version and make it the active one, in one transaction.

        ``gate_passed`` only when the quality gate promoted it: a version made active any other way is not a reference
        for later gates.
        """
        with self._store.session() as session, session.begin():
            previous = session.scalar(
                select(LoraVersion).where(LoraVersion.is_active.is_(True), LoraVersion.tenant == self._tenant)
            )
            if previous is not None:
                previous.is_active = False
            row = self._add_version(
                session,
                name=name,
                path=path,
                run_id=run_id,
                eval_loss=eval_loss,
                promoted=True,
                gate_passed=gate_passed,
            )
            session.add(
                AuditEvent(
                    action="finetune.promote",
                    actor=actor,
                    detail={
                        "run": run_id,
                        "version": name,
                        "previous": previous.name if previous else None,
                        "gate_passed": gate_passed,
                    },
                    tenant=self._tenant,
                )
            )
            return self._version(row)

    def _add_version(
        self,
        session: Session,
        *,
        name: str,
        path: str,
        run_id: int | None,
        eval_loss: float | None,
        promoted: bool,
        gate_passed: bool = False,
    ) -> LoraVersion:
        """Add a version row (flushed, so it has its id): promoted, it is the active one from now on; else a
        candidate, served to no one until a trial or a promotion."""
        now = utcnow()
        row = LoraVersion(
            tenant=self._tenant,
            name=name,
            path=self._stored(path),
            run_id=run_id,
            eval_loss=eval_loss,
            is_active=promoted,
            created_at=now,
            promoted_at=now if promoted else None,
            gate_passed=gate_passed,
        )
        session.add(row)
        session.flush()
        return row

    def rollback_target(self) -> tuple[VersionInfo | None, VersionInfo | None]:
        """(the active version, the version a rollback returns to: the newest older one not retired, or None)."""
        with self._store.session() as session:
            active = session.scalar(
                select(LoraVersion).where(LoraVersion.is_active.is_(True), LoraVersion.tenant == self._tenant)
            )
            if active is None:
                return None, None
            target = session.scalar(
                select(LoraVersion)
                .where(
                    LoraVersion.tenant == self._tenant,
                    LoraVersion.id < active.id,
                    LoraVersion.retired_at.is_(None),
                    LoraVersion.promoted_at.is_not(None),  # candidates were never served to everyone
                )
                .order_by(LoraVersion.id.desc())
                .limit(1)
            )
            return self._version(active), self._version(target) if target else None

    def roll_back(self, *, from_id: int, to_id: int | None, actor: str) -> None:
        """Retire ``from_id`` (a later rollback goes further back) and activate ``to_id`` (None: the base)."""
        with self._store.session() as session, session.begin():
            current = session.get(LoraVersion, from_id)
            if current is None or not current.is_active:
                raise LookupError("the active LoRA changed meanwhile")
            current.is_active = False
            current.retired_at = utcnow()
            current.gate_passed = False  # rolled back: never again a reference for the gate
            target = session.get(LoraVersion, to_id) if to_id is not None else None
            if target is not None:
                target.is_active = True
            trial = _end_open_trial(session, self._tenant, "rollback")
            session.add(
                AuditEvent(
                    action="finetune.rollback",
                    actor=actor,
                    detail={
                        "from": current.name,
                        "to": target.name if target else None,
                        "trial_ended": trial is not None,
                    },
                    tenant=self._tenant,
                )
            )

    # candidates and trials

    def add_candidate(
        self, *, name: str, path: str, run_id: int, eval_loss: float | None, actor: str
    ) -> tuple[VersionInfo, list[VersionInfo]]:
        """Record a version that was not promoted. Older candidates that no trial serves are retired: returned, so
        their folders can go (only the newest candidate is kept for ``/finetune try``)."""
        with self._store.session() as session, session.begin():
            trial = _open_trial(session, self._tenant)
            older = session.scalars(
                select(LoraVersion).where(
                    LoraVersion.tenant == self._tenant,
                    LoraVersion.promoted_at.is_(None),
                    LoraVersion.retired_at.is_(None),
                    LoraVersion.is_active.is_(False),
                )
            ).all()
            superseded = [v for v in older if trial is None or v.id != trial.version_id]
            now = utcnow()
            for version in superseded:
                version.retired_at = now
            row = self._add_version(
                session, name=name, path=path, run_id=run_id, eval_loss=eval_loss, promoted=False
            )
            session.add(
                AuditEvent(
                    action="finetune.candidate",
                    actor=actor,
                    detail={"run": run_id, "version": name, "superseded": [v.name for v in superseded]},
                    tenant=self._tenant,
                )
            )
            return self._version(row), [self._version(v) for v in superseded]

    def newest_candidate(self) -> VersionInfo | None:
        """The newest version that was trained and never promoted (nor retired)."""
        with self._store.session() as session:
            row = session.scalar(
                select(LoraVersion)
                .where(
                    LoraVersion.tenant == self._tenant,
                    LoraVersion.promoted_at.is_(None),
                    LoraVersion.retired_at.is_(None),
                    LoraVersion.is_active.is_(False),
                )
                .order_by(LoraVersion.id.desc())
                .limit(1)
            )
            return self._version(row) if row else None

    def versions_named(self, names: Iterable[str]) -> dict[str, VersionInfo]:
        with self._store.session() as session:
            rows = session.scalars(select(LoraVersion).where(LoraVersion.name.in_(list(names))))
            return {row.name: self._version(row) for row in rows}

    def open_trial(self) -> TrialInfo | None:
        with self._store.session() as session:
            trial = _open_trial(session, self._tenant)
            return self._trial(session, trial) if trial else None

    def start_trial(self, version_id: int, scopes: Iterable[str], *, actor: str) -> TrialInfo:
        """Open a trial of ``version_id`` in ``scopes``; an open trial is ended (replaced) in the same transaction."""
        with self._store.session() as session, session.begin():
            replaced = _end_open_trial(session, self._tenant, "replaced")
            row = LoraTrial(
                tenant=self._tenant,
                version_id=version_id,
                scopes=list(scopes),
                started_by=actor,
                started_at=utcnow(),
            )
            session.add(row)
            session.flush()
            info = self._trial(session, row)
            session.add(
                AuditEvent(
                    action="finetune.try",
                    actor=actor,
                    detail={
                        "version": info.version.name,
                        "scopes": list(info.scopes),
                        "replaced": replaced.id if replaced else None,
                    },
                    tenant=self._tenant,
                )
            )
            return info

    def end_trial(self, *, reason: str, actor: str) -> TrialInfo | None:
        """End the open trial (if any) and return it."""
        with self._store.session() as session, session.begin():
            trial = _end_open_trial(session, self._tenant, reason)
            if trial is None:
                return None
            info = self._trial(session, trial)
            session.add(
                AuditEvent(
                    action="finetune.trial_end",
                    actor=actor,
                    detail={"version": info.version.name, "reason": reason},
                    tenant=self._tenant,
                )
            )
            return info

    def promote_candidate(self, version_id: int, *, actor: str) -> tuple[VersionInfo, VersionInfo | None]:
        """Make a candidate the active version and end the open trial, in one transaction.

        Returns (the version now active, the one that was). Raises LookupError if the candidate is gone."""
        with self._store.session() as session, session.begin():
            row = session.get(LoraVersion, version_id)
            if row is None or row.retired_at is not None or row.tenant != self._tenant:
                raise LookupError("the candidate was retired meanwhile")
            previous = session.scalar(
                select(LoraVersion).where(LoraVersion.is_active.is_(True), LoraVersion.tenant == self._tenant)
            )
            if previous is not None:
                previous.is_active = False
            row.is_active = True
            row.promoted_at = utcnow()
            run = session.get(FinetuneRun, row.run_id) if row.run_id is not None else None
            row.gate_passed = bool(
                run is not None and (run.gate or {}).get("passed")
            )  # by hand: as its gate said
            trial = _end_open_trial(session, self._tenant, "promoted")
            session.add(
                AuditEvent(
                    action="finetune.promote",
                    actor=actor,
                    detail={
                        "run": row.run_id,
                        "version": row.name,
                        "previous": previous.name if previous else None,
                        "trial_ended": trial is not None,
                    },
                    tenant=self._tenant,
                )
            )
            return self._version(row), self._version(previous) if previous else None

    def deactivate(self, version_id: int, *, reason: str) -> None:
        """Serve the base instead of a version that cannot be loaded (its files are gone)."""
        with self._store.session() as session, session.begin():
            session.execute(
                update(LoraVersion)
                .where(LoraVersion.id == version_id, LoraVersion.tenant == self._tenant)
                .values(is_active=False)
            )
            session.add(
                AuditEvent(
                    action="finetune.deactivate",
                    actor="bot",
                    detail={"version": version_id, "reason": reason},
                    tenant=self._tenant,
                )
            )

    # opt-outs

    def opt_out(self, platform: str, user_id: str) -> bool:
        """Record that a user's turns are never trained on. False when they had opted out already."""
        try:
            with self._store.session() as session, session.begin():
                session.add(OptOut(platform=platform, user_id=user_id, created_at=utcnow()))
                session.add(
                    AuditEvent(action="opt_out", actor=f"{platform}:{user_id}", detail={"platform": platform})
                )
        except IntegrityError:
            return False
        return True

    def opt_in(self, platform: str, user_id: str) -> bool:
        """Undo an opt-out (``/forget-me undo``). False when the user had not opted out."""
        with self._store.session() as session, session.begin():
            removed = _rowcount(
                session.execute(delete(OptOut).where(OptOut.platform == platform, OptOut.user_id == user_id))
            )
            if removed:
                session.add(
                    AuditEvent(action="opt_in", actor=f"{platform}:{user_id}", detail={"platform": platform})
                )
        return removed > 0

    def opted_out_users(self) -> set[str]:
        """``platform:user_id`` of everyone who opted out with /forget-me."""
        with self._store.session() as session:
            return {f"{p}:{u}" for p, u in session.execute(select(OptOut.platform, OptOut.user_id))}

    def delete_user_turns(self, platform: str, user_id: str) -> DeletedTurns:
        """Remove a user's own turns and the bot's replies to them (the /forget-me ``delete`` option)."""
        turns = select(Message.id).where(
            Message.platform == platform,
            Message.author_id == user_id,
            Message.role == Role.USER.value,
        )
        with self._store.session() as session, session.begin():
            replies = _rowcount(
                session.execute(
                    delete(Message).where(
                        Message.role == Role.ASSISTANT.value, Message.reply_to_id.in_(turns)
                    )
                )
            )
            removed = _rowcount(session.execute(delete(Message).where(Message.id.in_(turns))))
            session.add(
                AuditEvent(
                    action="forget_me.delete",
                    actor=f"{platform}:{user_id}",
                    detail={"platform": platform, "removed": removed, "replies_removed": replies},
                )
            )
        return DeletedTurns(turns=removed, replies=replies)

    # audit and prune records

    def audit(self, action: str, actor: str, detail: dict[str, object] | None = None) -> None:
        """An event of this scope (``finetune.*``) or everyone's (any other action)."""
        tenant = self._tenant if action.startswith("finetune.") else None
        with self._store.session() as session, session.begin():
            session.add(AuditEvent(action=action, actor=actor, detail=detail, tenant=tenant))

    def audit_events(
        self, actions: Iterable[str] | None = None, *, every_tenant: bool = True
    ) -> list[tuple[str, str, dict[str, Any]]]:
        """Audit events, oldest first (``every_tenant=False``: this scope's fine-tune events only)."""
        with self._store.session() as session:
            query = select(AuditEvent).order_by(AuditEvent.id)
            if not every_tenant:
                query = query.where(AuditEvent.tenant == self._tenant)
            if actions is not None:
                query = query.where(AuditEvent.action.in_(list(actions)))
            return [(e.action, e.actor, dict(e.detail or {})) for e in session.scalars(query)]

    def last_prune(self) -> PruneSummary | None:
        """The last prune job's totals (its summary row), with how many conversations lost turns."""
        with self._store.session() as session:
            total = session.scalar(
                select(PruneRecord)
                .where(PruneRecord.conversation_label == PRUNE_TOTAL_LABEL)
                .order_by(PruneRecord.id.desc())
                .limit(1)
            )
            if total is None:
                return None
            conversations = session.scalar(
                select(func.count(PruneRecord.id)).where(
                    PruneRecord.ran_at == total.ran_at, PruneRecord.conversation_label != PRUNE_TOTAL_LABEL
                )
            )
            return PruneSummary(
                ran_at=total.ran_at, conversations=int(conversations or 0), removed=total.removed
            )


def _resolved(stored: str | None, data_dir: Path | None) -> str | None:
    if stored is None or data_dir is None:
        return stored
    return str(from_stored(stored, data_dir))


def _open_trial(session: Session, tenant: str) -> LoraTrial | None:
    return session.scalar(
        select(LoraTrial)
        .where(LoraTrial.ended_at.is_(None), LoraTrial.tenant == tenant)
        .order_by(LoraTrial.id.desc())
        .limit(1)
    )


def _end_open_trial(session: Session, tenant: str, reason: str) -> LoraTrial | None:
    trial = _open_trial(session, tenant)
    if trial is not None:
        trial.ended_at = utcnow()
        trial.end_reason = reason
    return trial


def _rowcount(result: object) -> int:
    return result.rowcount if isinstance(result, CursorResult) else 0
