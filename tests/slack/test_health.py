"""/ready follows the Slack connection: Socket Mode's websocket (red once Slack cannot be reached) and the HTTP
server (red once it stops); the database and the engine are checked beside it. Platform API attempts are counted."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.app import readiness_checks
from bot.domain import ConversationKey
from bot.ops.prometheus import PrometheusMetrics
from bot.ops.server import OpsServer
from tests.fakes import ScriptedEngine
from tests.ops.helpers import get, ready, total, until_ready_status
from tests.slack.fake_slack import TEAM, FakeSlack
from tests.slack.harness import SlackBot, dm_event, envelope, make_settings

DM = ConversationKey("slack", TEAM, "D1")


@pytest.fixture
async def running(tmp_path, fake_slack: FakeSlack) -> AsyncIterator:
    started: list[tuple[SlackBot, OpsServer]] = []

    async def start(mode: str) -> tuple[SlackBot, OpsServer]:
        metrics = PrometheusMetrics()
        settings = make_settings(tmp_path, fake_slack, mode=mode, native_streaming=False)
        bot = await SlackBot(settings, fake_slack, ScriptedEngine(reply="ok"), metrics=metrics).start()
        assert bot.store is not None and bot.adapter is not None
        ops = OpsServer(metrics, readiness_checks(bot.store, bot.engine, [bot.adapter]), check_timeout_s=2.0)
        await ops.start()
        started.append((bot, ops))
        return bot, ops

    yield start
    for bot, ops in started:
        await ops.stop()
        await bot.stop()


async def test_socket_mode_is_ready_while_the_websocket_is_up_and_red_when_slack_is_gone(running, fake_slack):
    bot, ops = await running("socket")
    assert ops.port
    assert (await get(ops.port, "/health"))[0] == 200
    status, body = await ready(ops.port)
    assert status == 200, body
    assert body["checks"] == {"database": "ok", "engine": "ok", "platform:slack": "ok"}

    await fake_slack.push(envelope(dm_event("hello", "1700000040.000100"), "Ev400"))
    await fake_slack.wait_until(lambda: len(bot.history(DM)) == 2)
    page = (await get(ops.port, "/metrics"))[1]
    assert total(page, "hanbot_messages_total", platform="slack", outcome="answered") == 1
    api_ok = total(page, "hanbot_platform_api_calls_total", platform="slack", result="ok")
    assert api_ok >= len(fake_slack.called("chat.postMessage")) + len(fake_slack.called("auth.test"))

    await fake_slack.stop()  # Slack unreachable: the socket closes and cannot reconnect

    await until_ready_status(ops.port, 503)
    status, body = await ready(ops.port)
    assert status == 503 and body["checks"]["platform:slack"] == "down"
    assert body["checks"]["database"] == "ok"


async def test_http_mode_is_ready_while_it_listens(running, fake_slack):
    bot, ops = await running("http")
    status, body = await ready(ops.port)
    assert status == 200 and body["checks"]["platform:slack"] == "ok"

    await bot.adapter.stop()

    status, body = await ready(ops.port)
    assert status == 503 and body["checks"]["platform:slack"] == "down"


async def test_rate_limited_calls_are_counted_as_retries(running, fake_slack):
    fake_slack.rate_limited_updates = 2
    fake_slack.retry_after_s = 0
    engine_reply = "a reply long enough to be edited a few times " * 4
    bot, ops = await running("http")
    bot.engine.reply = engine_reply
    bot.engine.chunk_size = 20
    bot.engine.delay_s = 0.15

    await bot.post_event(envelope(dm_event("hello", "1700000050.000100"), "Ev500"))
    await fake_slack.wait_until(lambda: len(bot.history(DM)) == 2, within_s=20)

    page = (await get(ops.port, "/metrics"))[1]
    refused = len([c for c in fake_slack.calls if c.status == 429])
    assert refused == 2
    assert total(page, "hanbot_platform_api_calls_total", platform="slack", result="retry") == refused
