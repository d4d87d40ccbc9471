"""What a fine-tune run shows while it runs and keeps when it ends: its loss history, a sparkline of it, where the
run was asked for (for the end-of-run post), and when a paused bot expects to be back.

The trainer's stdout events (``bot.learning.job``) feed ``LossHistory``: ``progress`` lines give the training loss per
step, ``heldout`` lines the held-out loss at each evaluation (step 0 is the model training starts from). The history
is stored in the run's progress (``progress["losses"]``, so /finetune status in any process can show it) and in the
run's folder (``losses.json``).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bot.domain import ConversationKey
from bot.store.learning_records import LearningRecords, RunInfo, RunStatus
from bot.texts import Lang

LOSSES_FILE = "losses.json"
MAX_POINTS = 400  # a long run's training curve is halved (neighbours averaged) beyond this many points
SPARK = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 24
EVAL_AFTER_TRAINING_DEFAULT_S = 60.0  # scoring the new LoRA, when the run did not measure scoring the base


@dataclass(frozen=True)
class RunOrigin:
    """Where a run was asked for: its end is posted there, in the asker's language."""

    conversation: ConversationKey
    lang: Lang = "en"


@dataclass
class LossHistory:
    """Training loss per optimiser step and held-out loss per evaluation, as (step, loss) pairs."""

    train: list[tuple[float, float]] = field(default_factory=list)
    held_out: list[tuple[float, float]] = field(default_factory=list)

    def add_event(self, kind: str, event: dict[str, Any]) -> bool:
        """Take one trainer event; True when it added a point."""
        step, loss = event.get("step"), event.get("loss")
        if not isinstance(step, int | float) or not isinstance(loss, int | float) or not math.isfinite(loss):
            return False
        if kind == "progress":
            self.train.append((float(step), float(loss)))
            if len(self.train) > MAX_POINTS:
                self.train = _halved(self.train)
            return True
        if kind == "heldout":
            self.held_out.append((float(step), float(loss)))
            return True
        return False

    def as_json(self) -> dict[str, list[list[float]]]:
        return {
            "train": [[s, round(v, 5)] for s, v in self.train],
            "held_out": [[s, round(v, 5)] for s, v in self.held_out],
        }

    @classmethod
    def from_json(cls, data: object) -> LossHistory:
        if not isinstance(data, dict):
            return cls()
        return cls(_pairs(data.get("train")), _pairs(data.get("held_out")))

    @classmethod
    def of_run(cls, run: RunInfo) -> LossHistory:
        return cls.from_json(run.progress.get("losses"))

    def write(self, folder: Path) -> Path:
        path = folder / LOSSES_FILE
        path.write_text(json.dumps(self.as_json()), encoding="utf-8")
        return path

    def __bool__(self) -> bool:
        return bool(self.train or self.held_out)


def sparkline(values: Sequence[float], width: int = SPARK_WIDTH) -> str:
    """``values`` as bars ▁…█ (low to high), at most ``width`` of them (means of equal slices)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return ""
    if len(finite) > width:
        size = len(finite) / width
        finite = [
            sum(part) / len(part)
            for i in range(width)
            if (part := finite[round(i * size) : round((i + 1) * size)])
        ]
    low, high = min(finite), max(finite)
    if high - low < 1e-12:
        return SPARK[len(SPARK) // 2] * len(finite)
    top = len(SPARK) - 1
    return "".join(SPARK[round((v - low) / (high - low) * top)] for v in finite)


def expected_back(
    running: RunInfo | None, last: RunInfo | None, *, now: datetime | None = None
) -> datetime | None:
    """When a bot paused for this run should answer again: once training started, the trainer's last ETA plus
    scoring the new LoRA (as long as scoring the base took); before, as long after its start as the last run took.
    None when nothing says."""
    if running is None or running.status is not RunStatus.RUNNING:
        return None
    now = now or datetime.now(UTC)
    progress = running.progress
    eta, updated = progress.get("eta_s"), progress.get("updated")
    if isinstance(eta, int | float) and isinstance(updated, int | float):  # training started (or is over)
        scoring = progress.get("scoring_s")
        after = float(scoring) if isinstance(scoring, int | float) else EVAL_AFTER_TRAINING_DEFAULT_S
        back = datetime.fromtimestamp(float(updated), UTC) + timedelta(seconds=float(eta) + after)
        return max(back, now + timedelta(minutes=1))
    if last is not None and last.finished_at is not None and last.status is not RunStatus.CANCELLED:
        took = last.finished_at - last.started_at
        back = running.started_at + took
        if back > now:
            return back
    return None


def back_estimate(records: LearningRecords) -> Callable[[], Awaitable[datetime | None]]:
    """``expected_back`` for the run going now, read from the records (any process's run): the chat service's
    ``back_at``."""

    def read() -> datetime | None:
        # any team's run: a team's own run pauses the engine for everyone too
        running = records.running_runs(every_tenant=True)
        return expected_back(running[-1] if running else None, records.last_finished_run())

    async def back_at() -> datetime | None:
        return await asyncio.to_thread(read)

    return back_at


class PhaseClock:
    """Measures how long the trainer scored the base (between its ``evaluating`` and ``training`` phases), the
    estimate of how long scoring the new LoRA takes after training."""

    def __init__(self) -> None:
        self._evaluating_since: float | None = None
        self.scoring_s: float | None = None

    def phase(self, name: object) -> None:
        now = time.monotonic()
        if name == "evaluating" and self.scoring_s is None:
            self._evaluating_since = now
        elif name == "training" and self._evaluating_since is not None and self.scoring_s is None:
            self.scoring_s = now - self._evaluating_since


def _halved(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    pairs = [points[i : i + 2] for i in range(0, len(points), 2)]
    return [(part[-1][0], sum(v for _, v in part) / len(part)) for part in pairs]


def _pairs(raw: object) -> list[tuple[float, float]]:
    if not isinstance(raw, list):
        return []
    found = []
    for item in raw:
        if (
            isinstance(item, list | tuple)
            and len(item) == 2
            and all(isinstance(x, int | float) for x in item)
        ):
            found.append((float(item[0]), float(item[1])))
    return found
