"""The demo holds a conversation: eight FAQ questions in one console conversation, over two console sessions (the
second continues the first's stored conversation), each answered exactly, through the real CLI and console adapter."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.core.test_console_e2e import CONSOLE, console_store, run_cli

pytestmark = pytest.mark.slow

ORDER = [4, 9, 14, 19, 2, 23, 7, 16]  # FAQ indices: both languages, no greeting first, no order trained on


@pytest.fixture
def data_dir(tmp_path: Path, demo_model_dir: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "demo-model").symlink_to(demo_model_dir, target_is_directory=True)
    return data


def replies_of(stdout: str) -> list[str]:
    return [line.split("봇: ", 1)[1].strip() for line in stdout.splitlines() if "봇: " in line]


def test_eight_turns_over_two_sessions_answer_every_faq_question_exactly(data_dir: Path) -> None:
    from inference.demo_model import FAQ

    pairs = [FAQ[i] for i in ORDER]
    first = run_cli(["chat", "--demo"], "".join(f"{q}\n" for q, _ in pairs[:4]) + "종료\n", data_dir)
    assert first.returncode == 0, first.stderr
    second = run_cli(["chat", "--demo"], "".join(f"{q}\n" for q, _ in pairs[4:]) + "exit\n", data_dir)
    assert second.returncode == 0, second.stderr

    assert replies_of(first.stdout) + replies_of(second.stdout) == [a for _, a in pairs]
    history = console_store(data_dir).history(CONSOLE)
    assert len(history) == 16  # one stored conversation of eight exchanges
