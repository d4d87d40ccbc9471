"""Catching a real fine-tune in the middle of its training: wait until the run has recorded training losses, then
stop the trainer (SIGSTOP) while the test looks at /finetune status, and let it go on (SIGCONT)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

from bot.learning.service import FinetuneService
from bot.store.conversations import ConversationStore
from bot.store.learning_records import LearningRecords
from tests.learning.conftest import QUICK_FINETUNE

# settings sections for a bot on the demo model whose /finetune run takes seconds and gets past the (loosened) gate
DEMO_FINETUNE = {"finetune": {**QUICK_FINETUNE, "max_steps": 40}}


def demo_overrides(demo_model_dir: Any) -> dict[str, Any]:
    return {
        "model": {
            "name_or_path": str(demo_model_dir),
            "dtype": "float32",
            "device_map": None,
            "is_demo": True,
        },
        **DEMO_FINETUNE,
    }


@contextlib.asynccontextmanager
async def trainer_held_mid_training(
    service: FinetuneService, store: ConversationStore, within_s: float = 240.0
) -> AsyncIterator[None]:
    """Inside: the run is training, has stored some training losses, and its trainer is stopped."""
    records = LearningRecords(store)
    deadline = time.monotonic() + within_s
    while True:
        running = records.running_runs()
        losses = running[-1].progress.get("losses") if running else None
        pid = service.training_pid
        if pid is not None and isinstance(losses, dict) and losses.get("train"):
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"the run never recorded training losses: {running}")
        await asyncio.sleep(0.05)
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
