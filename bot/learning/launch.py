"""How the learning loop starts the trainer: a port the composition root fills (``bot.app.trainer_launch``).

The trainer is a separate program with a declared entry point (``hanbot-train`` in pyproject.toml); the core knows
only the command line it is given, so no dependency on ``inference/`` hides in a string here.

With ``finetune.gpu_sharing = "shared"`` the trainer runs on the serving GPU beside the engine. Two CUDA processes on
one GPU time-slice it, unless an NVIDIA MPS control daemon serves the GPU and both are its clients: then their
kernels run side by side, and the trainer's environment can cap its share of the SMs and lower its priority
(``finetune.trainer_mps_sm_percent``, ``finetune.trainer_mps_priority``; docs/learning.md, "Sharing one GPU: MPS").
The variables are read by the CUDA driver when the trainer creates its context; without a daemon they do nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.settings import FinetuneSettings

MPS_PIPE_DIRECTORY = "CUDA_MPS_PIPE_DIRECTORY"
MPS_DEFAULT_PIPE_DIRECTORY = "/tmp/nvidia-mps"  # the daemon's and the clients' default (NVIDIA's MPS guide)
MPS_CONTROL_PID_FILE = "nvidia-cuda-mps-control.pid"  # the daemon writes it in its pipe directory
MPS_SM_PERCENT = "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"
MPS_CLIENT_PRIORITY = "CUDA_MPS_CLIENT_PRIORITY"
# the levels MPS accepts (NVIDIA's MPS guide): 0 NORMAL, 1 BELOW NORMAL; a hint to the driver, not a guarantee
MPS_PRIORITY_LEVELS = {"normal": "0", "below_normal": "1"}
MPS_CLIENT_LIMITS = (MPS_SM_PERCENT, MPS_CLIENT_PRIORITY)


@dataclass(frozen=True)
class TrainerLaunch:
    """The trainer's command line (the job file's path is appended) and the folder it runs in."""

    argv: Sequence[str]
    cwd: Path

    def command(self, job_file: Path) -> list[str]:
        return [*self.argv, str(job_file)]

    def env(self, finetune: FinetuneSettings | None = None) -> dict[str, str]:
        """This process's environment for the trainer, with its MPS limits when ``finetune`` asks for them.

        MPS limits the bot itself was started with (for the engine) are not passed on: the trainer's come from the
        settings only. The daemon's pipe and log directories are kept, so the trainer finds the engine's daemon."""
        env = {k: v for k, v in os.environ.items() if k not in MPS_CLIENT_LIMITS}
        env["PYTHONUNBUFFERED"] = "1"
        if finetune is not None:
            env.update(mps_client_env(finetune))
        return env


def mps_client_env(finetune: FinetuneSettings) -> dict[str, str]:
    """The MPS variables of the trainer sharing the serving GPU (``gpu_sharing = "shared"``); none in another mode
    or when neither limit is set."""
    if finetune.gpu_sharing != "shared":
        return {}
    env: dict[str, str] = {}
    if finetune.trainer_mps_sm_percent is not None:
        env[MPS_SM_PERCENT] = str(finetune.trainer_mps_sm_percent)
    if finetune.trainer_mps_priority is not None:
        env[MPS_CLIENT_PRIORITY] = MPS_PRIORITY_LEVELS[finetune.trainer_mps_priority]
    return env


@dataclass(frozen=True)
class MpsDaemon:
    """Whether an MPS control daemon serves the pipe directory this process's CUDA clients would use."""

    pipe_directory: str
    pid: int | None  # the daemon's, when its pid file names a live process

    @property
    def serving(self) -> bool:
        return self.pid is not None


def mps_daemon(environ: Mapping[str, str] | None = None) -> MpsDaemon:
    """Look for the control daemon without touching CUDA: its pid file in the pipe directory
    (``CUDA_MPS_PIPE_DIRECTORY``, default /tmp/nvidia-mps), and that process alive. A pid file left by a daemon
    that died reads as none. Whether this process really is a client (it must have started after the daemon, with
    the same pipe directory) only CUDA knows; docs/learning.md says how to start them in order."""
    environ = os.environ if environ is None else environ
    pipe = environ.get(MPS_PIPE_DIRECTORY) or MPS_DEFAULT_PIPE_DIRECTORY
    try:
        pid = int((Path(pipe) / MPS_CONTROL_PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return MpsDaemon(pipe, None)
    return MpsDaemon(pipe, pid if _alive(pid) else None)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's (a daemon started as root)
        return True
    except OSError:
        return False
    return True
