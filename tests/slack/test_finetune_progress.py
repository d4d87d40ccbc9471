"""A real fine-tune of the demo model started with /finetune on the fake Slack: /finetune status during the run
shows the loss so far as a sparkline, and the run's end is posted in the channel with the loss-curve PNG uploaded
the way Slack takes files (files.getUploadURLExternal, the bytes, files.completeUploadExternal)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.lossplot import png_size
from tests.learning.progress_helpers import demo_overrides, trainer_held_mid_training
from tests.learning.synthetic import FACTS, seed_facts
from tests.slack.harness import command_form

pytestmark = pytest.mark.slow

SPARK = set("▁▂▃▄▅▆▇█")


@pytest.fixture(autouse=True)
def _four_facts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tests.learning.synthetic.FACTS", FACTS[:4])


async def test_finetune_shows_its_loss_while_running_and_posts_its_verdict_with_the_curve(
    start_bot, fake_slack, demo_model_dir: Path
) -> None:
    bot = await start_bot(learning=True, overrides=demo_overrides(demo_model_dir))
    seed_facts(bot.store)

    await bot.post_command(command_form(fake_slack, "/finetune", user="UADMIN", channel="C1", text="run"))
    await fake_slack.wait_until(lambda: len(fake_slack.responses) == 1)
    assert fake_slack.responses[0]["text"].startswith("Fine-tune run #1 started.")

    async with trainer_held_mid_training(bot.finetune, bot.store):
        await bot.post_command(
            command_form(fake_slack, "/finetune", user="UADMIN", channel="C1", text="status")
        )
        await fake_slack.wait_until(lambda: len(fake_slack.responses) == 2)
    running, curve = fake_slack.responses[1]["text"].splitlines()[:2]
    assert running.startswith("Run #1: training, step ")
    spark, latest = curve.removeprefix("Loss so far: ").split()[:2]
    assert curve.startswith("Loss so far: ") and spark and set(spark) <= SPARK and float(latest) > 0

    await fake_slack.wait_until(lambda: any(u.completed for u in fake_slack.uploads), within_s=240)
    [upload] = fake_slack.uploads
    assert (upload.channel, upload.thread_ts, upload.filename) == ("C1", None, "loss-curve.png")
    assert upload.data[:8] == b"\x89PNG\r\n\x1a\n" and png_size(upload.data) == (640, 360)
    lines = upload.comment.splitlines()
    assert lines[0].startswith(
        "Fine-tune run #1 has ended (/finetune run, started by slack:UADMIN): promoted"
    )
    assert sum(line.strip().startswith("✓") for line in lines[1:]) >= 3, "the gate's checks, one per line"
    assert lines[-1].startswith("Loss curve attached")
    assert [c.method for c in fake_slack.calls if c.method.startswith("files.")] == [
        "files.getUploadURLExternal",
        "files.completeUploadExternal",
    ]
