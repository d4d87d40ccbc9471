"""/ready follows the Discord gateway: ready while connected, red while discord.py reconnects after the gateway
dropped, ready again once it resumed; the database and engine are checked beside it. REST attempts are counted."""

from __future__ import annotations

import asyncio

import pytest

from bot.app import readiness_checks
from bot.ops.prometheus import PrometheusMetrics
from bot.ops.server import OpsServer
from tests.discord.conftest import StartBot
from tests.discord.fake_discord import FakeDiscord
from tests.ops.helpers import get, ready, total, until_ready_status


@pytest.fixture
async def ops_for():
    servers: list[OpsServer] = []

    async def start(bot) -> OpsServer:
        ops = OpsServer(
            PrometheusMetrics(), readiness_checks(bot.store, bot.engine, [bot.adapter]), check_timeout_s=2.0
        )
        await ops.start()
        servers.append(ops)
        return ops

    yield start
    for ops in servers:
        await ops.stop()


async def test_discord_is_ready_while_the_gateway_is_up(
    start_bot: StartBot, fake_discord: FakeDiscord, ops_for
):
    bot = await start_bot()
    ops = await ops_for(bot)
    assert (await get(ops.port, "/health"))[0] == 200
    status, body = await ready(ops.port)
    assert status == 200, body
    assert body["checks"] == {"database": "ok", "engine": "ok", "platform:discord": "ok"}

    await fake_discord.drop_gateway()
    await until_ready_status(ops.port, 503)
    await until_ready_status(ops.port, 200, within_s=30)  # discord.py reconnects by itself

    await bot.adapter.stop()
    status, body = await ready(ops.port)
    assert status == 503 and body["checks"]["platform:discord"] == "down"


async def test_rest_attempts_are_counted_with_rate_limits_and_server_errors_as_retries(
    start_bot: StartBot, fake_discord: FakeDiscord
):
    metrics = PrometheusMetrics()
    bot = await start_bot(metrics=metrics)
    fake_discord.fail("POST", r"/channels/\d+/messages$", status=429, retry_after=0.1, times=1)
    fake_discord.fail("POST", r"/channels/\d+/messages$", status=500, times=1)
    person = fake_discord.new_user("Hana")

    fake_discord.post_message(fake_discord.general, person, "hello", mention_bot=True)
    await bot.stored(fake_discord.general, 2)

    # the reply is stored before the message's outcome is counted: wait for the count, not for a fixed time
    for _ in range(100):
        page = (await metrics.exposition()).decode()
        if total(page, "hanbot_messages_total", platform="discord", outcome="answered") >= 1:
            break
        await asyncio.sleep(0.05)
    rest = [r for r in fake_discord.requests if r.status]
    assert total(page, "hanbot_platform_api_calls_total", platform="discord", result="retry") == 2
    assert total(page, "hanbot_platform_api_calls_total", platform="discord") >= len(rest)
    assert total(page, "hanbot_messages_total", platform="discord", outcome="answered") == 1
