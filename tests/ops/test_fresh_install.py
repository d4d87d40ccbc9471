"""A fresh virtual environment with only the platform extras (``pip install hanbot[discord,slack]``, no torch)
imports the bot and serves the console chat against a remote engine: this project's engine server, running the demo
model from the development environment. Built from the project's files, offline: the dependencies come from a
wheelhouse packed from this environment's installed distributions (``tests/ops/wheelhouse.py``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

from tests.inference.remote_server import EngineServe, demo_engine_env
from tests.ops.wheelhouse import build_wheelhouse

REPO = Path(__file__).resolve().parents[2]
PROJECT_FILES = ("pyproject.toml", "README.md", "LICENSE", "bot", "adapters", "inference", "migrations")
EXTRAS = ("discord", "slack")

pytestmark = pytest.mark.slow


def copy_project(out: Path) -> Path:
    """The files the Dockerfile copies, without caches: a build must not write into the working tree."""
    out.mkdir(parents=True)
    for name in PROJECT_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, out / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, out / name)
    return out


def platform_requirements() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    extras = project["project"]["optional-dependencies"]
    build = project["build-system"]["requires"]
    return [*project["project"]["dependencies"], *(spec for name in EXTRAS for spec in extras[name]), *build]


def run(command: list[str], *, env: dict[str, str] | None = None, cwd: Path, **kwargs: object) -> str:
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=600, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{command[:4]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return str(result.stdout)


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment with hanbot[discord,slack] installed from a copy of the project, offline."""
    root = tmp_path_factory.mktemp("fresh")
    project = copy_project(root / "project")
    wheels = root / "wheels"
    packed = build_wheelhouse(platform_requirements(), wheels)
    assert "torch" not in packed and "discord-py" in packed and "slack-bolt" in packed
    venv.EnvBuilder(with_pip=True).create(root / "venv")
    python = root / "venv" / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PIP_CONSTRAINT")}
    run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(wheels),
         "--no-cache-dir", f"{project}[{','.join(EXTRAS)}]"],
        env=env,
        cwd=root,
    )  # fmt: skip
    return root / "venv"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for the fresh install's programs: nothing of this checkout on the import path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, **extra}


def test_the_core_and_both_platforms_import_without_torch(fresh_env: Path, tmp_path: Path) -> None:
    python = str(fresh_env / "bin" / "python")
    probe = (
        "import importlib.util, sys\n"
        "import bot.app, bot.cli, inference.remote_engine, adapters.discord.adapter, adapters.slack.adapter\n"
        "from bot.import_names import check_import_names\n"
        "check_import_names()\n"
        "print(importlib.util.find_spec('torch') is None, 'torch' in sys.modules, bot.app.__file__)\n"
    )
    no_torch, torch_loaded, where = run([python, "-c", probe], env=clean_env(), cwd=tmp_path).split()
    assert (no_torch, torch_loaded) == ("True", "False")
    assert Path(where).is_relative_to(fresh_env)  # the installed copy, not this checkout


def test_the_fresh_bot_chats_through_a_remote_engine_server(
    fresh_env: Path, demo_model_dir: Path, tmp_path: Path
) -> None:
    from inference.demo_model import FAQ

    question, answer = next((q, a) for q, a in FAQ if q.startswith("What does /reset"))
    server = EngineServe(
        demo_engine_env(demo_model_dir, tmp_path / "engine"), tmp_path / "engine.log", python=sys.executable
    ).start()  # the engine: the development environment (torch), as a GPU host would run it
    try:
        env = clean_env(
            HANBOT_DATA_DIR=str(tmp_path / "bot"),
            HANBOT_ENGINE__KIND="remote",
            HANBOT_ENGINE__REMOTE_BASE_URL=server.base_url,
            HANBOT_ENGINE__REMOTE_MODEL=server.model_name,
            HANBOT_MODEL__NAME_OR_PATH=str(demo_model_dir),  # its tokenizer counts the prompt's tokens
            HANBOT_GENERATION__TEMPERATURE="0",
            HANBOT_GENERATION__REPETITION_PENALTY="1.0",
            HANBOT_SCHEDULER__ENABLED="false",
            HANBOT_OPS__ENABLED="false",
            HF_HUB_OFFLINE="1",
        )
        out = run(
            [str(fresh_env / "bin" / "hanbot"), "chat"], env=env, cwd=tmp_path, input=f"{question}\n종료\n"
        )
    finally:
        server.stop()
    replies = [line.split("봇: ", 1)[1].strip() for line in out.splitlines() if "봇: " in line]
    assert replies == [answer]


def test_the_local_engine_without_torch_is_a_configuration_error_that_names_the_extra(
    fresh_env: Path, tmp_path: Path
) -> None:
    env = clean_env(HANBOT_DATA_DIR=str(tmp_path / "bot"), HANBOT_OPS__ENABLED="false")
    result = subprocess.run(
        [str(fresh_env / "bin" / "hanbot"), "chat", "--demo"],
        env=env,
        cwd=tmp_path,
        input="",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 78, result.stderr  # EXIT_CONFIG, no traceback
    assert "hanbot[local]" in result.stderr and "HANBOT_ENGINE__KIND=remote" in result.stderr
    assert "Traceback" not in result.stderr
