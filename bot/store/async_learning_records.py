"""The learning records' async API: each method is one operation (one short transaction), run in one hop to a worker
thread, so ``bot.learning.service`` awaits it instead of wrapping each call in ``asyncio.to_thread``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from bot.store.learning_records import (
    LearningRecords,
    RunInfo,
    RunOutcomeFields,
    RunStatus,
    TrialInfo,
    VersionInfo,
)


class AsyncLearningRecords:
    def __init__(self, records: LearningRecords) -> None:
        self.sync = records  # for work already on a worker thread

    async def create_run(self, *, trigger: str, started_by: str, owner: str) -> RunInfo:
        return await asyncio.to_thread(
            lambda: self.sync.create_run(trigger=trigger, started_by=started_by, owner=owner)
        )

    async def update_progress(self, run_id: int, progress: dict[str, Any]) -> None:
        return await asyncio.to_thread(self.sync.update_progress, run_id, progress)

    async def set_gpu_sharing(self, run_id: int, mode: str) -> None:
        return await asyncio.to_thread(self.sync.set_gpu_sharing, run_id, mode)

    async def set_examples(self, run_id: int, *, train: int, eval: int) -> None:
        return await asyncio.to_thread(lambda: self.sync.set_examples(run_id, train=train, eval=eval))

    async def finish_run(self, run_id: int, status: RunStatus, fields: RunOutcomeFields) -> RunInfo:
        return await asyncio.to_thread(self.sync.finish_run, run_id, status, fields)

    async def active_version(self) -> VersionInfo | None:
        return await asyncio.to_thread(self.sync.active_version)

    async def versions(self) -> list[VersionInfo]:
        return await asyncio.to_thread(self.sync.versions)

    async def versions_named(self, names: Iterable[str]) -> dict[str, VersionInfo]:
        return await asyncio.to_thread(self.sync.versions_named, names)

    async def next_version_name(self) -> str:
        return await asyncio.to_thread(self.sync.next_version_name)

    async def promote(
        self,
        *,
        name: str,
        path: str,
        run_id: int | None,
        eval_loss: float | None,
        actor: str,
        gate_passed: bool = False,
    ) -> VersionInfo:
        return await asyncio.to_thread(
            lambda: self.sync.promote(
                name=name, path=path, run_id=run_id, eval_loss=eval_loss, actor=actor, gate_passed=gate_passed
            )
        )

    async def rollback_target(self) -> tuple[VersionInfo | None, VersionInfo | None]:
        return await asyncio.to_thread(self.sync.rollback_target)

    async def roll_back(self, *, from_id: int, to_id: int | None, actor: str) -> None:
        return await asyncio.to_thread(lambda: self.sync.roll_back(from_id=from_id, to_id=to_id, actor=actor))

    async def add_candidate(
        self, *, name: str, path: str, run_id: int, eval_loss: float | None, actor: str
    ) -> tuple[VersionInfo, list[VersionInfo]]:
        return await asyncio.to_thread(
            lambda: self.sync.add_candidate(
                name=name, path=path, run_id=run_id, eval_loss=eval_loss, actor=actor
            )
        )

    async def newest_candidate(self) -> VersionInfo | None:
        return await asyncio.to_thread(self.sync.newest_candidate)

    async def open_trial(self) -> TrialInfo | None:
        return await asyncio.to_thread(self.sync.open_trial)

    async def start_trial(self, version_id: int, scopes: Iterable[str], *, actor: str) -> TrialInfo:
        return await asyncio.to_thread(lambda: self.sync.start_trial(version_id, scopes, actor=actor))

    async def end_trial(self, *, reason: str, actor: str) -> TrialInfo | None:
        return await asyncio.to_thread(lambda: self.sync.end_trial(reason=reason, actor=actor))

    async def promote_candidate(
        self, version_id: int, *, actor: str
    ) -> tuple[VersionInfo, VersionInfo | None]:
        return await asyncio.to_thread(lambda: self.sync.promote_candidate(version_id, actor=actor))

    async def opt_in(self, platform: str, user_id: str) -> bool:
        return await asyncio.to_thread(self.sync.opt_in, platform, user_id)

    async def opted_out_users(self) -> set[str]:
        return await asyncio.to_thread(self.sync.opted_out_users)
