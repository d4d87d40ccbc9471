"""bench/load.py's accounting on a small run (scripted engine): every message is answered or refused, none lost or
doubled, and the /metrics totals agree. The committed figures come from the
documented command (bench/results/load.json)."""

from __future__ import annotations

import argparse

import discord
import pytest

from bench.load import run
from tests.slack.harness import ENV

pytestmark = pytest.mark.slow


async def test_a_small_load_run_accounts_for_every_message(monkeypatch):
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)  # the bench sets them too: restored after the test
    monkeypatch.setattr(
        discord.http.Route, "BASE", discord.http.Route.BASE
    )  # the bench points it at its fake
    monkeypatch.setattr(
        discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    )
    args = argparse.Namespace(
        engine="scripted",
        messages=40,
        channels=10,
        bursts=2,
        gap_s=0.5,
        batch=8,
        queue_limit=8,
        max_new_tokens=16,
        settle_s=60.0,
    )
    result = await run(args)
    assert result["sent"] == 40
    assert result["answered"] + result["refused"] == result["sent"]
    assert result["answered"] > 0
    assert result["duplicates"] == 0 and result["lost"] == 0
    assert result["metrics_final"]["messages_answered"] == result["answered"]
    assert result["metrics_final"]["messages_refused"] == result["refused"]
    assert result["metrics_agree"]
