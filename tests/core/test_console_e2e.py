"""The Quick start's first command, end to end: `python -m bot chat --demo` fed on standard input.

Runs the real CLI in a subprocess: settings, migrations, the demo model loaded through from_pretrained, the local
engine, the chat service and the console adapter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.domain import ConversationKey, Role
from bot.store.conversations import ConversationStore
from bot.store.db import create_db_engine

REPO = Path(__file__).resolve().parents[2]
CONSOLE = ConversationKey("console", "", "console")

pytestmark = pytest.mark.slow


def run_cli(args: list[str], stdin: str, data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "HANBOT_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=data_dir.parent,
        env=environment,
        timeout=240,
    )


@pytest.fixture
def data_dir(tmp_path: Path, demo_model_dir: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "demo-model").symlink_to(demo_model_dir, target_is_directory=True)  # built once per test run
    return data


def console_store(data_dir: Path) -> ConversationStore:
    return ConversationStore(create_db_engine(f"sqlite:///{data_dir / 'hanbot.db'}"))


def test_demo_chat_answers_streams_and_quits(data_dir: Path) -> None:
    from inference.demo_model import FAQ

    question, answer = next((q, a) for q, a in FAQ if q.startswith("What does /reset"))
    result = run_cli(["chat", "--demo"], f"안녕하세요\n{question}\n종료\n", data_dir)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "demo model" in out and "NOT Bllossom" in out  # nobody mistakes it for the real model
    replies = [line.split("봇: ", 1)[1] for line in out.splitlines() if "봇: " in line]
    assert len(replies) == 2, out
    assert replies[0].strip()
    assert replies[1].strip() == answer

    store = console_store(data_dir)
    history = store.history(CONSOLE)
    assert [m.role for m in history] == [Role.USER, Role.ASSISTANT, Role.USER, Role.ASSISTANT]
    assert history[2].content == question and history[3].content.strip() == answer


def test_history_survives_a_restart_and_reset_clears_it(data_dir: Path) -> None:
    first = run_cli(["chat", "--demo"], "Hello\n", data_dir)  # end of input quits too
    assert first.returncode == 0, first.stderr
    store = console_store(data_dir)
    assert store.count_messages(CONSOLE) == 2

    second = run_cli(["chat", "--demo"], "What is hanbot?\nexit\n", data_dir)
    assert second.returncode == 0, second.stderr
    assert store.count_messages(CONSOLE) == 4  # the first session's turns are still there

    third = run_cli(["chat", "--demo"], "/reset\n종료\n", data_dir)
    assert third.returncode == 0, third.stderr
    assert "cleared (4 messages)" in third.stdout
    assert store.count_messages(CONSOLE) == 0


def test_empty_line_gets_a_hint_without_a_model_call(data_dir: Path) -> None:
    result = run_cli(["chat", "--demo"], "\n종료\n", data_dir)
    assert result.returncode == 0, result.stderr
    assert "empty" in result.stdout
    assert console_store(data_dir).count_messages(CONSOLE) == 0


def test_a_model_that_cannot_load_exits_non_zero_with_a_clear_message(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    missing = tmp_path / "no-such-model"
    result = run_cli(["chat"], "hello\n", data, HANBOT_MODEL__NAME_OR_PATH=str(missing))
    assert result.returncode != 0
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr


def test_the_console_shows_the_model_loading_as_a_bar(data_dir: Path) -> None:
    """On a terminal (here: asked for with HANBOT_MODEL__PROGRESS_BAR=on) the loading draws a bar on stderr."""
    result = run_cli(["chat", "--demo"], "종료\n", data_dir, HANBOT_MODEL__PROGRESS_BAR="on")
    assert result.returncode == 0, result.stderr
    bars = [part.strip() for part in result.stderr.splitlines() if part.startswith("[")]  # "\r" reads as "\n"
    assert bars and bars[-1].startswith("[" + "#" * 24 + "] model loading: "), result.stderr[-2000:]
    assert "(100%)" in bars[-1] and "done in" in bars[-1]
    assert "model loading" not in result.stdout, "the chat's own output stays clean"
