"""JSON log lines (log_format = "json"): one object per line, with the request and channel ids of the message being
answered, durations and lengths; never the message body or the reply at INFO."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path

from bot.chat import ChatService
from bot.domain import Author, ConversationKey, IncomingMessage
from bot.ops.logs import JsonFormatter, log_context
from bot.settings import load_settings
from tests.fakes import RecordingSink, ScriptedEngine

REPO = Path(__file__).resolve().parents[2]
SECRET_WORDS = "비밀 회의록 내용 confidential-minutes"
REPLY = "the reply body must stay out of the logs too"


async def test_json_lines_carry_ids_durations_and_lengths_but_no_bodies(tmp_path, sqlite_store):
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        settings = load_settings(data_dir=tmp_path / "data", scheduler={"enabled": False})
        chat = ChatService(settings=settings, store=sqlite_store, engine=ScriptedEngine(reply=REPLY))
        message = IncomingMessage(
            platform="slack",
            conversation=ConversationKey("slack", "T1", "C42"),
            message_id="1700000000.000100",
            author=Author(id="U1", display_name="Alice"),
            text=SECRET_WORDS,
        )
        await chat.handle(message, RecordingSink())
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)

    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    ours = [line for line in lines if line["logger"] == "bot.chat"]
    assert ours, lines
    for line in ours:
        assert line["level"] == "INFO" and line["time"]
        assert line["request"] == "slack:1700000000.000100"
        assert line["channel"] == "slack:T1:C42"
    done = next(line for line in ours if line["message"].startswith("reply done"))
    assert "first_token_s=" in done["message"] and "total_s=" in done["message"]
    assert any(f"chars={len(SECRET_WORDS)}" in line["message"] for line in ours)
    everything = out.getvalue()
    assert "confidential-minutes" not in everything and "비밀" not in everything
    assert REPLY not in everything


def test_context_fields_and_extras_reach_the_line():
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "took %d ms", (12,), None)
    record.duration_ms = 12
    with log_context(request="discord:1", channel="discord:g:c"):
        line = json.loads(JsonFormatter().format(record))
    assert line == {
        "time": line["time"],
        "level": "WARNING",
        "logger": "x",
        "message": "took 12 ms",
        "request": "discord:1",
        "channel": "discord:g:c",
        "duration_ms": 12,
    }
    assert "request" not in json.loads(JsonFormatter().format(record))  # outside the context


def test_the_setting_switches_the_cli_to_json_lines(tmp_path):
    env = {"HANBOT_LOG_FORMAT": "json", "HANBOT_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "bot", "--log-level", "INFO", "migrate"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert lines and all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
