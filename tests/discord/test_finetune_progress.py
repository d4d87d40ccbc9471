"""A real fine-tune of the demo model started with /finetune on the fake Discord: /finetune status during the run
shows the loss so far as a sparkline, and the run's end is posted in the channel with the loss-curve PNG attached."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.lossplot import png_size
from tests.discord.conftest import StartBot
from tests.discord.fake_discord import FakeDiscord, FakeUser
from tests.learning.progress_helpers import demo_overrides, trainer_held_mid_training
from tests.learning.synthetic import FACTS, seed_facts

pytestmark = pytest.mark.slow

SPARK = set("▁▂▃▄▅▆▇█")


@pytest.fixture(autouse=True)
def _four_facts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tests.learning.synthetic.FACTS", FACTS[:4])


async def command(fake: FakeDiscord, user: FakeUser, action: str, *, locale: str = "en-US") -> list[str]:
    token = fake.run_command("finetune", user, fake.general, options={"action": action}, locale=locale)
    await fake.wait_for(lambda: len(fake.interaction_responses[token]) >= 2)
    return [f.body["content"] for f in fake.interaction_responses[token][1:]]


async def test_finetune_shows_its_loss_while_running_and_posts_its_verdict_with_the_curve(
    start_bot: StartBot, fake_discord: FakeDiscord, demo_model_dir: Path
) -> None:
    bot = await start_bot(
        learning=True, allowed_guild_ids=[fake_discord.guild_id], overrides=demo_overrides(demo_model_dir)
    )
    assert bot.finetune is not None
    seed_facts(bot.store)
    admin = fake_discord.new_user("Admin", roles=[fake_discord.admin_role])

    started = await command(fake_discord, admin, "run", locale="ko")
    assert started == ["학습 #1을(를) 시작했어요. 진행 상황은 /finetune status 로 볼 수 있어요."]

    async with trainer_held_mid_training(bot.finetune, bot.store):
        [status] = await command(fake_discord, admin, "status")
    running, curve = status.splitlines()[:2]
    assert running.startswith("Run #1: training, step ")
    assert curve.startswith("Loss so far: ")
    spark, latest = curve.removeprefix("Loss so far: ").split()[:2]
    assert spark and set(spark) <= SPARK
    assert float(latest) > 0

    await fake_discord.wait_for(
        lambda: any(m["attachments"] for m in fake_discord.bot_messages(fake_discord.general)), within_s=240
    )
    [post] = [m for m in fake_discord.bot_messages(fake_discord.general) if m["attachments"]]
    lines = post["content"].splitlines()
    assert lines[0].startswith("학습 #1이(가) 끝났어요 (/finetune run, 시작: discord:")
    assert "적용됨, 검증 loss" in lines[0], "the verdict: promoted (the tests' gate is loose)"
    assert sum(line.strip().startswith("✓") for line in lines[1:]) >= 3, "the gate's checks, one per line"
    assert lines[-1].startswith("손실 곡선을 첨부했어요")
    [attachment] = post["attachments"]
    assert attachment["filename"] == "loss-curve.png"
    data = fake_discord.files[attachment["id"]]
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and png_size(data) == (640, 360)
    assert attachment["size"] == len(data) > 2000
