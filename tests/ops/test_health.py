"""/health and /ready for the console chat: the real core (store, chat service, commands), the console adapter reading
a pipe, the operations server on a free port. A stuck engine turns /ready red; so do a closed terminal and an
unhealthy engine. (Discord and Slack: tests/discord/test_health.py, tests/slack/test_health.py.)"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from adapters.console import ConsoleAdapter
from bot.app import build_core, readiness_checks, shutdown, start_ops
from bot.errors import ConfigError
from bot.ops.prometheus import PrometheusMetrics
from bot.settings import load_settings
from tests.fakes import ScriptedEngine
from tests.ops.helpers import HealthSwitch, get, ready, total, until_metric


@pytest.fixture
def settings(tmp_path: Path):
    return load_settings(
        data_dir=tmp_path / "data", scheduler={"enabled": False}, ops={"port": 0, "check_timeout_s": 0.5}
    )


async def test_console_health_ready_and_a_stuck_engine_turns_ready_red(settings):
    metrics = PrometheusMetrics()
    ops = await start_ops(settings, metrics)
    assert ops is not None and ops.port
    read_end, write_end = os.pipe()
    stdin = os.fdopen(read_end, "r", encoding="utf-8")
    writer = os.fdopen(write_end, "w", encoding="utf-8")
    engine = ScriptedEngine(reply="콘솔 답변")
    switch = HealthSwitch(engine)

    # before the core is up (a 70B loads for minutes): alive, not ready
    assert (await get(ops.port, "/health"))[0] == 200
    status, body = await ready(ops.port)
    assert status == 503 and body["checks"] == {"serving": "starting"}

    core = build_core(settings, engine=engine, metrics=metrics)
    console = ConsoleAdapter(stdin=stdin, stdout=io.StringIO())
    try:
        await console.start(core.chat.handle, core.commands)
        ops.watch(readiness_checks(core.store, core.engine, [console]))

        status, body = await ready(ops.port)
        assert status == 200, body
        assert body["checks"] == {"database": "ok", "engine": "ok", "platform:console": "ok"}

        writer.write("안녕하세요\n")
        writer.flush()
        await until_metric(ops.port, "hanbot_messages_total", 1, platform="console", outcome="answered")
        page = (await get(ops.port, "/metrics"))[1]
        assert total(page, "hanbot_ready", check="engine") == 1
        assert (
            total(page, "hanbot_lora_in_service", version="base") == 1
        )  # the fine-tune service, read at scrape
        assert total(page, "hanbot_finetune_running") == 0

        switch.mode = "stuck"
        status, body = await ready(ops.port)
        assert status == 503
        assert body["checks"]["engine"].startswith("no answer within")
        assert body["checks"]["database"] == "ok"
        assert total((await get(ops.port, "/metrics"))[1], "hanbot_ready", check="engine") == 0

        switch.mode = "unhealthy"
        assert (await ready(ops.port))[1]["checks"]["engine"] == "EngineUnhealthy"

        switch.mode = "ok"
        assert (await ready(ops.port))[0] == 200
        assert (await get(ops.port, "/health"))[0] == 200  # liveness never depended on the engine

        writer.close()  # the terminal closes: the console is no longer served
        await console.wait_closed()
        status, body = await ready(ops.port)
        assert status == 503 and body["checks"]["platform:console"] == "down"
    finally:
        if not writer.closed:
            writer.close()
        await shutdown(core, [console], ops)
        stdin.close()


async def test_a_taken_port_stops_a_service_but_not_the_console_chat(settings, tmp_path):
    metrics = PrometheusMetrics()
    first = await start_ops(settings, metrics)
    assert first is not None
    taken = load_settings(data_dir=tmp_path / "data", scheduler={"enabled": False}, ops={"port": first.port})
    try:
        with pytest.raises(ConfigError, match="HANBOT_OPS__PORT"):
            await start_ops(taken, PrometheusMetrics())
        assert await start_ops(taken, PrometheusMetrics(), required=False) is None
    finally:
        await first.stop()


async def test_the_endpoint_is_off_when_the_settings_say_so(tmp_path):
    off = load_settings(data_dir=tmp_path / "data", ops={"enabled": False})
    assert await start_ops(off, PrometheusMetrics()) is None
