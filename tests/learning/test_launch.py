"""The trainer's environment: its MPS limits only when it shares the serving GPU (finetune.gpu_sharing="shared") and
they are set; the bot's own limits never leak to it; the MPS control daemon is found from its pid file; a shared run
says in one INFO line whether MPS is in use."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.learning.launch import (
    MPS_CLIENT_PRIORITY,
    MPS_CONTROL_PID_FILE,
    MPS_DEFAULT_PIPE_DIRECTORY,
    MPS_PIPE_DIRECTORY,
    MPS_SM_PERCENT,
    TrainerLaunch,
    mps_client_env,
    mps_daemon,
)
from bot.learning.service import FinetuneService
from bot.settings import FinetuneSettings
from bot.store.conversations import ConversationStore
from bot.store.learning_records import RunStatus
from tests.learning.conftest import RecordingEngine, SettingsFactory
from tests.learning.synthetic import seed_facts

LIMITS = {"trainer_mps_sm_percent": 35, "trainer_mps_priority": "below_normal"}


def shared(**limits: object) -> FinetuneSettings:
    return FinetuneSettings.model_validate({"gpu_sharing": "shared", **limits})


def test_the_trainer_gets_its_mps_limits_only_when_sharing_the_gpu_with_them_set() -> None:
    launch = TrainerLaunch(argv=("python",), cwd=Path("."))
    env = launch.env(shared(**LIMITS))
    assert (env[MPS_SM_PERCENT], env[MPS_CLIENT_PRIORITY]) == ("35", "1")
    assert env["PYTHONUNBUFFERED"] == "1" and env["PATH"] == os.environ["PATH"]
    assert mps_client_env(shared(trainer_mps_priority="normal")) == {MPS_CLIENT_PRIORITY: "0"}
    assert mps_client_env(shared(trainer_mps_sm_percent=100)) == {MPS_SM_PERCENT: "100"}
    for finetune in (
        shared(),  # sharing, no limits: the daemon's defaults
        FinetuneSettings(),  # pause
        FinetuneSettings(gpu_sharing="separate", train_device="cuda:1"),
        # a mode changed after validation (as a test or a reload might): the mode still decides
        shared(**LIMITS).model_copy(update={"gpu_sharing": "pause"}),
    ):
        assert mps_client_env(finetune) == {}
        env = launch.env(finetune)
        assert MPS_SM_PERCENT not in env and MPS_CLIENT_PRIORITY not in env
    assert MPS_SM_PERCENT not in launch.env()


def test_the_bots_own_mps_limits_are_not_the_trainers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bot started with limits for its engine: the trainer gets the settings' limits or none, and the daemon's
    pipe directory (how it finds the same daemon)."""
    monkeypatch.setenv(MPS_SM_PERCENT, "80")
    monkeypatch.setenv(MPS_CLIENT_PRIORITY, "0")
    monkeypatch.setenv(MPS_PIPE_DIRECTORY, "/run/hanbot-mps")
    launch = TrainerLaunch(argv=("python",), cwd=Path("."))
    plain = launch.env(FinetuneSettings())
    assert MPS_SM_PERCENT not in plain and MPS_CLIENT_PRIORITY not in plain
    assert plain[MPS_PIPE_DIRECTORY] == "/run/hanbot-mps"
    limited = launch.env(shared(trainer_mps_sm_percent=20))
    assert limited[MPS_SM_PERCENT] == "20" and MPS_CLIENT_PRIORITY not in limited
    assert os.environ[MPS_SM_PERCENT] == "80", "the bot's own environment is left as it was"


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(done.stdout)


def test_the_mps_daemon_is_found_by_its_pid_file(tmp_path: Path) -> None:
    pipe = tmp_path / "pipe"
    env = {MPS_PIPE_DIRECTORY: str(pipe)}
    assert not mps_daemon(env).serving  # no pipe directory
    pipe.mkdir()
    assert mps_daemon(env).pipe_directory == str(pipe) and not mps_daemon(env).serving
    pid_file = pipe / MPS_CONTROL_PID_FILE
    pid_file.write_text(f"{os.getpid()}\n")
    assert mps_daemon(env).serving and mps_daemon(env).pid == os.getpid()
    pid_file.write_text(str(dead_pid()))
    assert not mps_daemon(env).serving, "a pid file left by a daemon that died"
    pid_file.write_text("not a pid")
    assert not mps_daemon(env).serving
    assert mps_daemon({}).pipe_directory == MPS_DEFAULT_PIPE_DIRECTORY


# a trainer that writes the MPS variables it was given and fails (the run's outcome is not what is tested)
DUMP_ENV = (
    "import json, os, sys; "
    f"names = {(MPS_SM_PERCENT, MPS_CLIENT_PRIORITY, MPS_PIPE_DIRECTORY)!r}; "
    "json.dump({k: os.environ.get(k) for k in names}, open(sys.argv[1], 'w')); "
    "sys.exit(3)"
)


async def test_a_shared_run_starts_the_trainer_with_its_limits_and_says_whether_mps_is_in_use(
    sqlite_store: ConversationStore,
    learning_settings: SettingsFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    dump = tmp_path / "trainer-env.json"
    trainer = TrainerLaunch(argv=(sys.executable, "-c", DUMP_ENV, str(dump)), cwd=tmp_path)
    settings = learning_settings()
    # shared mode needs engine.reserve_training_gib at load (test_trial checks that); set after it, as test_service does
    settings.finetune.gpu_sharing = "shared"
    settings.finetune.trainer_mps_sm_percent = 30
    settings.finetune.trainer_mps_priority = "below_normal"
    seed_facts(sqlite_store)
    pipe = tmp_path / "mps-pipe"
    monkeypatch.setenv(MPS_PIPE_DIRECTORY, str(pipe))
    engine = RecordingEngine()
    caplog.set_level(logging.INFO, logger="bot.learning.service")

    # no daemon: the trainer still gets its limits (harmless without MPS), the log says they do nothing
    run = await FinetuneService(settings, sqlite_store, engine, trainer=trainer).run(actor="console:local")
    assert run is not None and run.status is RunStatus.FAILED and "exited with status 3" in (run.error or "")
    assert json.loads(dump.read_text()) == {
        MPS_SM_PERCENT: "30",
        MPS_CLIENT_PRIORITY: "1",
        MPS_PIPE_DIRECTORY: str(pipe),
    }
    assert engine.calls == [], "shared: the engine was not paused"
    lines = [r.getMessage() for r in caplog.records if "MPS" in r.getMessage()]
    assert len(lines) == 1 and "without MPS (no control daemon's live pid file in " + str(pipe) in lines[0], (
        lines
    )
    assert (
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=30 CUDA_MPS_CLIENT_PRIORITY=1 take effect only under MPS"
        in lines[0]
    )

    # a daemon serving that pipe directory (its pid file naming a live process: this one)
    pipe.mkdir()
    (pipe / MPS_CONTROL_PID_FILE).write_text(str(os.getpid()))
    caplog.clear()
    await FinetuneService(settings, sqlite_store, engine, trainer=trainer).run(actor="console:local")
    lines = [r.getMessage() for r in caplog.records if "MPS" in r.getMessage()]
    assert (
        len(lines) == 1 and f"under MPS (control daemon pid={os.getpid()}, pipe directory {pipe}" in lines[0]
    )

    # pause mode: no line, no limits
    settings.finetune.gpu_sharing = "pause"
    caplog.clear()
    dump.unlink()
    await FinetuneService(settings, sqlite_store, engine, trainer=trainer).run(actor="console:local")
    assert not [r for r in caplog.records if "MPS" in r.getMessage()]
    assert json.loads(dump.read_text())[MPS_SM_PERCENT] is None
