"""How the learning loop starts the trainer: a port the composition root fills (``bot.app.trainer_launch``).

The trainer is a separate program with a declared entry point (``hanbot-train`` in pyproject.toml); the core knows
only the command line it is given, so no dependency on ``inference/`` hides in a string here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TrainerLaunch:
    """The trainer's command line (the job file's path is appended) and the folder it runs in."""

    argv: Sequence[str]
    cwd: Path

    def command(self, job_file: Path) -> list[str]:
        return [*self.argv, str(job_file)]

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONUNBUFFERED": "1"}
