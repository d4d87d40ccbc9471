"""Two bot processes behind one address: `python -m bot slack` twice, Slack in HTTP mode, one PostgreSQL, the demo
model in each. Signed Slack requests alternate between them (a load balancer), and every delivery is sent again to the
other process (Slack retries): every event is answered once, exactly one process runs the scheduled jobs, and /reset
through one is what the other builds its next prompt on.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from slack_sdk.signature import SignatureVerifier

from bot.domain import ConversationKey
from bot.scheduler import PRUNE_JOB_ID
from bot.store.conversations import ConversationStore
from bot.store.db import create_db_engine
from tests.inference.remote_server import free_port
from tests.ops.helpers import get
from tests.slack.fake_slack import TEAM, FakeSlack
from tests.slack.harness import ENV, SECRET, command_form, dm_event, envelope

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


@dataclass
class BotProcess:
    name: str
    process: subprocess.Popen[str]
    http_port: int
    ops_port: int
    log_path: Path

    @property
    def events_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/slack/events"

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue  # a library printing outside logging
        return lines

    def messages(self, start: str) -> list[str]:
        return [line["message"] for line in self.log_lines() if line["message"].startswith(start)]


def start_process(
    name: str, tmp_path: Path, database_url: str, fake: FakeSlack, model_dir: Path
) -> BotProcess:
    http_port, ops_port = free_port(), free_port()
    log_path = tmp_path / f"{name}.log"
    env = {
        **os.environ,
        **ENV,
        "HF_HUB_OFFLINE": "1",
        "HANBOT_DATA_DIR": str(tmp_path / name),
        "HANBOT_STORE__DATABASE_URL": database_url,
        "HANBOT_MODEL__NAME_OR_PATH": str(model_dir),
        "HANBOT_MODEL__DTYPE": "float32",
        "HANBOT_MODEL__DEVICE_MAP": "",
        "HANBOT_ENGINE__DECODER": "hf",
        "HANBOT_GENERATION__TEMPERATURE": "0",
        "HANBOT_GENERATION__MAX_NEW_TOKENS": "24",
        "HANBOT_SLACK__MODE": "http",
        "HANBOT_SLACK__HTTP_HOST": "127.0.0.1",
        "HANBOT_SLACK__HTTP_PORT": str(http_port),
        "HANBOT_SLACK__API_BASE_URL": fake.base_url,
        "HANBOT_SLACK__NATIVE_STREAMING": "false",
        "HANBOT_SLACK__UPDATE_INTERVAL_S": "0.2",
        "HANBOT_SLACK__ADMIN_USER_IDS": '["UADMIN"]',
        "HANBOT_SCHEDULER__PRUNE_CRON": "* * * * *",  # every minute, so the test sees who runs it
        "HANBOT_OPS__PORT": str(ops_port),
        "HANBOT_LOG_FORMAT": "json",
        "HANBOT_LOG_LEVEL": "INFO",
    }
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bot", "slack"], cwd=REPO, env=env, stdout=log, stderr=log, text=True
        )
    return BotProcess(name, process, http_port, ops_port, log_path)


async def until_ready(bot: BotProcess, within_s: float = 180.0) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        assert bot.process.poll() is None, bot.log_path.read_text()[-3000:]
        try:
            if (await get(bot.ops_port, "/ready"))[0] == 200:
                return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.5)
    raise AssertionError(f"{bot.name} never got ready: {bot.log_path.read_text()[-3000:]}")


async def signed_post(url: str, body: bytes, content_type: str, retry: int = 0) -> int:
    ts = str(int(time.time()))
    headers = {
        "Content-Type": content_type,
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": SignatureVerifier(SECRET).generate_signature(timestamp=ts, body=body),
    }
    if retry:
        headers |= {"X-Slack-Retry-Num": str(retry), "X-Slack-Retry-Reason": "http_timeout"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
        async with session.post(url, data=body, headers=headers) as response:
            return response.status


@pytest.fixture
async def two_bots(
    tmp_path, postgres_url, demo_model_dir
) -> AsyncIterator[tuple[FakeSlack, BotProcess, BotProcess]]:
    fake = FakeSlack()
    await fake.start()
    bots = [start_process(name, tmp_path, postgres_url, fake, demo_model_dir) for name in ("a", "b")]
    try:
        await asyncio.gather(*(until_ready(bot) for bot in bots))
        yield fake, bots[0], bots[1]
    finally:
        for bot in bots:
            if bot.process.poll() is None:
                bot.process.send_signal(signal.SIGTERM)
        for bot in bots:
            try:
                bot.process.wait(30)
            except subprocess.TimeoutExpired:
                bot.process.kill()
        await fake.stop()


async def test_two_processes_answer_every_event_once_run_one_scheduler_and_share_reset(
    two_bots, postgres_url
):
    fake, a, b = two_bots
    store = ConversationStore(create_db_engine(postgres_url))
    channels = [f"D{i}" for i in range(1, 7)]

    # every event to one process, then the same delivery again to the other (a retry)
    for i, channel in enumerate(channels):
        first, other = (a, b) if i % 2 == 0 else (b, a)
        body = json.dumps(
            envelope(
                dm_event("What does /reset do?", f"17000002{i:02d}.000100", channel=channel), f"EvTwo{i}"
            )
        ).encode()
        assert await signed_post(first.events_url, body, "application/json") == 200
        assert await signed_post(other.events_url, body, "application/json", retry=1) == 200

    def answered(channel: str) -> int:
        return len(store.history(ConversationKey("slack", TEAM, channel)))

    await fake.wait_until(lambda: all(answered(c) == 2 for c in channels), within_s=120)
    await asyncio.sleep(1.0)
    for channel in channels:
        assert len(fake.replies(channel)) == 1, channel  # answered once, by one of the two
        assert answered(channel) == 2
    stored_by = {bot.name: len(bot.messages("message stored")) for bot in (a, b)}
    assert sum(stored_by.values()) == len(channels) and all(stored_by.values()), stored_by  # both did work

    # /reset through a; the next message in that DM goes to b, which builds on the emptied conversation
    form = command_form(fake, "/reset", user="UADMIN", channel="D1")
    assert (
        await signed_post(a.events_url, urlencode(form).encode(), "application/x-www-form-urlencoded") == 200
    )
    await fake.wait_until(lambda: len(fake.responses) == 1, within_s=20)
    assert answered("D1") == 0
    body = json.dumps(
        envelope(dm_event("What does /reset do?", "1700000300.000100", channel="D1"), "EvTwoR")
    ).encode()
    assert await signed_post(b.events_url, body, "application/json") == 200
    await fake.wait_until(lambda: answered("D1") == 2, within_s=60)
    assert [t.role.value for t in store.history(ConversationKey("slack", TEAM, "D1"))] == [
        "user",
        "assistant",
    ]

    # exactly one process holds the scheduler lease and runs the (every-minute) prune job
    leaders = [
        bot.name for bot in (a, b) if any("leader=True" in m for m in bot.messages("scheduler started"))
    ]
    assert len(leaders) == 1, leaders
    leader = a if leaders[0] == "a" else b
    await fake.wait_until(lambda: bool(leader.messages(f"job {PRUNE_JOB_ID} running")), within_s=75)
    await asyncio.sleep(2.0)  # the other process's run of the same minute, if it wrongly ran
    ran = {bot.name: bot.messages(f"job {PRUNE_JOB_ID} running") for bot in (a, b)}
    skipped = {bot.name: bot.messages(f"job {PRUNE_JOB_ID} skipped") for bot in (a, b)}
    assert ran[leaders[0]] and not skipped[leaders[0]]
    follower = "b" if leaders[0] == "a" else "a"
    assert not ran[follower]
    store.engine.dispose()
