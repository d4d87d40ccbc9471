"""Fixtures for the Slack tests: a fake Slack on loopback and the bot started against it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import ScriptedEngine
from tests.slack.fake_slack import FakeSlack
from tests.slack.harness import ENV, SlackBot, make_settings

StartBot = Callable[..., Awaitable[SlackBot]]


@pytest.fixture(autouse=True)
def slack_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
async def fake_slack() -> AsyncIterator[FakeSlack]:
    fake = FakeSlack()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def start_bot(tmp_path: Path, fake_slack: FakeSlack) -> AsyncIterator[StartBot]:
    """Start the bot: ``await start_bot(engine=..., **slack_settings)``; stopped at the end of the test."""
    bots: list[SlackBot] = []

    async def start(
        engine: ScriptedEngine | None = None,
        *,
        learning: bool = False,
        overrides: dict[str, Any] | None = None,
        **slack: Any,
    ) -> SlackBot:
        """``learning``: the whole core as bot.app builds it (the learning loop's /finetune, LoRA routes);
        ``overrides``: other sections of the settings."""
        settings = make_settings(tmp_path, fake_slack, overrides=overrides, **slack)
        bot = SlackBot(settings, fake_slack, engine or ScriptedEngine(), learning=learning)
        bots.append(bot)
        return await bot.start()

    yield start
    for bot in bots:
        await bot.stop()
