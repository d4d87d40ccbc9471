"""Stopping the trainer (cancel, timeout, shutdown): SIGTERM first, so it leaves normally and its queued GPU work
finishes (under MPS a client killed with kernels in flight can upset the server the engine shares); SIGKILL only for a
trainer that does not go within the grace period."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

from bot.learning.service import _kill

REPO = Path(__file__).resolve().parents[2]


async def _start(code: str) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE)
    assert process.stdout is not None
    assert (await process.stdout.readline()).strip() == b"ready"  # its signal handlers are in place
    return process


def test_a_trainer_that_leaves_on_sigterm_is_not_killed() -> None:
    async def scenario() -> tuple[int | None, float]:
        process = await _start("import time; print('ready', flush=True); time.sleep(60)")
        t = time.monotonic()
        await _kill(process, grace_s=30)
        return process.returncode, time.monotonic() - t

    code, seconds = asyncio.run(scenario())
    assert code == -signal.SIGTERM
    assert seconds < 10


def test_a_trainer_that_ignores_sigterm_is_killed_after_the_grace_period() -> None:
    async def scenario() -> tuple[int | None, float]:
        process = await _start(
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
            "time.sleep(60)"
        )
        t = time.monotonic()
        await _kill(process, grace_s=0.5)
        return process.returncode, time.monotonic() - t

    code, seconds = asyncio.run(scenario())
    assert code == -signal.SIGKILL
    assert 0.5 <= seconds < 10


def test_the_trainer_turns_sigterm_into_a_normal_exit() -> None:
    code = (
        "import os, signal, time\n"
        "from inference.finetune.train import finish_gpu_work, stop_on_sigterm\n"
        "stop_on_sigterm()\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(30)\n"
        "except SystemExit as exc:\n"
        "    finish_gpu_work()\n"
        "    print('left with', exc.code, flush=True)\n"
        "    raise\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.stdout.strip() == f"left with {128 + signal.SIGTERM}", done.stderr
    assert done.returncode == 128 + signal.SIGTERM
