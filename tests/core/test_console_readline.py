"""At a terminal the console reads through readline: a Hangul syllable is erased whole, the arrow keys move in the
line and bring back earlier lines. Run in a real pseudo-terminal (a child process), keys typed as a person would."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from adapters.console import PROMPT

CHILD = """
import asyncio, sys
from adapters.console import ConsoleAdapter
from bot.commands import CommandRegistry

async def main() -> None:
    console = ConsoleAdapter()
    async def on_message(message, sink) -> None:
        with open(sys.argv[1], "a", encoding="utf-8") as out:
            out.write(message.text + "\\n")
    await console.start(on_message, CommandRegistry(None))
    await console.wait_closed()

asyncio.run(main())
"""
BACKSPACE, UP, LEFT, CTRL_D = "\x7f", "\x1b[A", "\x1b[D", "\x04"
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="a POSIX pseudo-terminal")


class Terminal:
    def __init__(self, received: Path) -> None:
        self.master, slave = pty.openpty()
        env = {**os.environ, "PYTHONPATH": str(REPO), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TERM": "xterm"}
        self.child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(received)], stdin=slave, stdout=slave, stderr=slave, env=env
        )
        os.close(slave)
        self.screen = b""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                return
            if not chunk:
                return
            self.screen += chunk

    def type_line(self, keys: str, prompts_before: int) -> None:
        """Wait for the prompt to be shown for the ``prompts_before``-th time, then type ``keys``."""
        deadline = time.monotonic() + 60
        while self.screen.count(PROMPT.encode()) < prompts_before:
            assert time.monotonic() < deadline, self.screen.decode(errors="replace")
            time.sleep(0.05)
        for key in keys:  # one key at a time, as typed
            os.write(self.master, key.encode())
            time.sleep(0.01)


def test_readline_edits_hangul_and_recalls_history(tmp_path: Path) -> None:
    received = tmp_path / "received.txt"
    terminal = Terminal(received)
    try:
        terminal.type_line("한국어요" + BACKSPACE + "\r", 1)  # one backspace: the whole syllable 요
        terminal.type_line("ac" + LEFT + "b\r", 2)  # the left arrow moves inside the line
        terminal.type_line(UP + UP + " 다시\r", 3)  # two lines back: 한국어, then more typed after it
        terminal.type_line(CTRL_D, 4)  # end of input: the console ends
        assert terminal.child.wait(60) == 0
    finally:
        if terminal.child.poll() is None:
            terminal.child.kill()
        os.close(terminal.master)
    assert received.read_text(encoding="utf-8").splitlines() == ["한국어", "abc", "한국어 다시"]
