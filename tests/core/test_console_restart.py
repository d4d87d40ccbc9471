"""No lost reply (fault 2), end to end: `python -m bot chat` in a subprocess, killed (-9) or stopped (SIGTERM)
mid-reply, then started again on the same data directory.

The model is an OpenAI-compatible server on loopback (tests/inference/remote_server.py) that streams slowly, so the
kill lands mid-reply; the console, the chat service, the store and the remote engine are the real ones.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from bot.domain import ConversationKey, MessageStatus, Role
from bot.prompt import INCOMPLETE_MARK
from bot.store.conversations import ConversationStore
from bot.store.db import create_db_engine
from bot.texts import say
from tests.inference.engine_helpers import wait_until
from tests.inference.remote_server import FakeOpenAI, Reply

REPO = Path(__file__).resolve().parents[2]
CONSOLE = ConversationKey("console", "", "console")
STORY = tuple(f"word{i} " for i in range(200))  # 200 chunks, 0.1 s apart: far longer than the test waits

pytestmark = pytest.mark.slow


class Console:
    """`python -m bot chat` on the fake server, fed line by line."""

    def __init__(self, data_dir: Path, server: FakeOpenAI, model_dir: Path) -> None:
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),  # this checkout's code, whatever the environment has installed
            "HANBOT_DATA_DIR": str(data_dir),
            "HF_HUB_OFFLINE": "1",
            "HANBOT_ENGINE__KIND": "remote",
            "HANBOT_ENGINE__REMOTE_BASE_URL": server.base_url,
            "HANBOT_ENGINE__REMOTE_MODEL": "test-model",
            "HANBOT_ENGINE__REMOTE_TOKENIZER": str(model_dir),
            "HANBOT_MODEL__NAME_OR_PATH": str(model_dir),
            "HANBOT_SCHEDULER__ENABLED": "false",
        }
        self.cwd = data_dir.parent
        self.proc: asyncio.subprocess.Process | None = None
        self.out = ""

    async def start(self) -> Console:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            "chat",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=self.cwd,
            env=self.env,
        )
        return self

    async def say(self, line: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(f"{line}\n".encode())
        await self.proc.stdin.drain()

    async def read_until(self, text: str, within_s: float = 60.0) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        async with asyncio.timeout(within_s):
            while text not in self.out:
                chunk = await self.proc.stdout.read(256)
                if not chunk:
                    raise AssertionError(f"the console ended before {text!r}: {self.out!r}")
                self.out += chunk.decode(errors="replace")
        return self.out

    async def finish(self) -> tuple[int, str, str]:
        assert self.proc is not None
        out, err = await asyncio.wait_for(self.proc.communicate(), 60)
        self.out += out.decode(errors="replace")
        return self.proc.returncode or 0, self.out, err.decode(errors="replace")


def all_turns(data_dir: Path) -> list[tuple[Role, str, MessageStatus]]:
    """Every stored turn of the console conversation, whatever its status."""
    engine = create_db_engine(f"sqlite:///{data_dir / 'hanbot.db'}")
    try:
        store = ConversationStore(engine)
        with store.session() as session:
            from sqlalchemy import select

            from bot.store.models import Message

            rows = session.scalars(select(Message).order_by(Message.id)).all()
            return [(Role(r.role), r.content, MessageStatus(r.status)) for r in rows]
    finally:
        engine.dispose()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    return data


async def test_fault_02_kill_9_mid_reply_then_restart_keeps_the_partial_reply_as_incomplete(
    data_dir: Path, demo_model_dir: Path
) -> None:
    server = await FakeOpenAI([Reply(chunks=STORY, delay_s=0.1), Reply(chunks=("The end.",))]).start()
    try:
        console = await Console(data_dir, server, demo_model_dir).start()
        await console.say("Tell me a long story")
        await console.read_until("word3 ")
        assert console.proc is not None
        console.proc.kill()  # SIGKILL: no handler runs
        await console.proc.wait()

        turns = all_turns(data_dir)
        assert [t[0] for t in turns] == [Role.USER, Role.ASSISTANT], (
            "the partial reply was saved as it streamed"
        )
        shown = console.out.split("봇: ", 1)[1]
        assert turns[1][1].startswith("word0 ") and shown.startswith(turns[1][1]), (
            "saved: a prefix of what was shown"
        )

        again = await Console(data_dir, server, demo_model_dir).start()
        await again.say("Go on")
        await again.read_until("The end.")
        await again.say("exit")
        code, _, err = await again.finish()
    finally:
        await server.stop()

    assert code == 0, err
    turns = all_turns(data_dir)
    assert [(role, status) for role, _, status in turns] == [
        (Role.USER, MessageStatus.COMPLETE),
        (Role.ASSISTANT, MessageStatus.INCOMPLETE),
        (Role.USER, MessageStatus.COMPLETE),
        (Role.ASSISTANT, MessageStatus.COMPLETE),
    ]
    prompt = server.chat_requests[-1].body["messages"]
    roles = [m["role"] for m in prompt]
    assert roles == ["system", "user", "assistant", "user"], "user and assistant turns alternate"
    assert prompt[2]["content"].endswith(INCOMPLETE_MARK) and prompt[2]["content"].startswith("word0 ")
    assert prompt[3]["content"] == "Go on"


async def test_fault_02_sigterm_mid_reply_stores_it_incomplete_and_exits_cleanly(
    data_dir: Path, demo_model_dir: Path
) -> None:
    server = await FakeOpenAI([Reply(chunks=STORY, delay_s=0.1)]).start()
    try:
        console = await Console(data_dir, server, demo_model_dir).start()
        await console.say("Tell me a long story")
        await console.read_until("word3 ")
        assert console.proc is not None
        console.proc.send_signal(signal.SIGTERM)
        code, out, err = await console.finish()
    finally:
        await server.stop()

    assert code == 0, err
    assert "Traceback" not in err
    assert say("chat.incomplete") in out
    turns = all_turns(data_dir)
    assert [(role, status) for role, _, status in turns] == [
        (Role.USER, MessageStatus.COMPLETE),
        (Role.ASSISTANT, MessageStatus.INCOMPLETE),
    ]
    assert turns[1][1].startswith("word0 word1 word2 word3 ")


async def test_fault_02_a_message_left_unanswered_by_a_kill_gets_a_sentence_at_restart(
    data_dir: Path, demo_model_dir: Path
) -> None:
    server = await FakeOpenAI([Reply(stall_s=60)]).start()  # the model never starts answering
    try:
        console = await Console(data_dir, server, demo_model_dir).start()
        await console.say("Are you there?")
        await console.read_until("봇: ")
        await wait_until(lambda: bool(server.chat_requests))
        assert console.proc is not None
        console.proc.kill()
        await console.proc.wait()

        again = await Console(data_dir, server, demo_model_dir).start()
        await again.say("exit")
        code, out, err = await again.finish()
    finally:
        await server.stop()

    assert code == 0, err
    assert say("chat.restarted") in out
    assert len(server.chat_requests) == 1, "the notice is a sentence, not another model call"
