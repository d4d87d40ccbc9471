"""A run's loss history, its sparkline, its end-of-run post and when a paused bot expects to be back (no training)."""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from adapters.console import ConsoleAdapter
from bot.app import build_core
from bot.domain import Author, ConversationKey, IncomingMessage
from bot.learning.announce import RunAnnouncer, announcement, parse_conversation_key
from bot.learning.commands import render_status
from bot.learning.progress import MAX_POINTS, LossHistory, RunOrigin, expected_back, sparkline
from bot.learning.service import FinetuneStatus
from bot.lossplot import png_size
from bot.settings import load_settings
from bot.store.conversations import ConversationStore
from bot.store.learning_records import LearningRecords, RunInfo, RunOutcomeFields, RunStatus
from tests.fakes import RecordingSink, ScriptedEngine

NOW = datetime(2026, 12, 5, 17, 0, tzinfo=UTC)


def run_info(status: RunStatus = RunStatus.RUNNING, **progress: object) -> RunInfo:
    return RunInfo(
        id=7,
        status=status,
        trigger="manual",
        started_by="discord:42",
        started_at=NOW - timedelta(minutes=10),
        finished_at=None if status is RunStatus.RUNNING else NOW,
        progress=dict(progress),
        train_examples=16,
        eval_examples=8,
        eval_loss=0.21 if status is RunStatus.SUCCEEDED else None,
        baseline_loss=10.65 if status is RunStatus.SUCCEEDED else None,
        lora_path=None,
        error=None,
    )


def test_sparkline_goes_from_the_highest_bar_to_the_lowest() -> None:
    assert sparkline([8, 7, 6, 5, 4, 3, 2, 1]) == "█▇▆▅▄▃▂▁"
    assert sparkline([2.0, 2.0]) == "▅▅"
    assert sparkline([]) == ""
    long = sparkline([100 - i for i in range(100)], width=10)
    assert len(long) == 10 and long[0] == "█" and long[-1] == "▁"


def test_history_takes_the_trainers_events_and_stays_small() -> None:
    history = LossHistory()
    assert history.add_event("heldout", {"step": 0, "loss": 3.0})
    for step in range(1, 1001):
        assert history.add_event("progress", {"step": step, "total": 1000, "loss": 3.0 - step / 1000})
    assert not history.add_event("phase", {"phase": "saving"})
    assert not history.add_event("progress", {"step": 3, "loss": float("nan")})
    assert len(history.train) <= MAX_POINTS and history.train[-1][0] == 1000
    assert history.train[0][1] > history.train[-1][1]
    again = LossHistory.from_json(history.as_json())
    assert again.held_out == [(0.0, 3.0)] and len(again.train) == len(history.train)


def test_status_of_a_running_run_shows_the_sparkline_and_the_latest_loss() -> None:
    history = LossHistory()
    for step, loss in enumerate([2.4, 2.0, 1.5, 1.1, 0.7, 0.4], start=1):
        history.add_event("progress", {"step": step, "loss": loss})
    history.add_event("heldout", {"step": 6, "loss": 0.9})
    running = run_info(phase="training", step=6, total=30, loss=0.4, eta_s=48.0, losses=history.as_json())
    status = FinetuneStatus(running=running, last=None, active=None, last_prune=None, serving=None)

    en = render_status(status, "en", ZoneInfo("Asia/Seoul")).splitlines()
    ko = render_status(status, "ko", ZoneInfo("Asia/Seoul")).splitlines()

    assert en[1] == "Loss so far: █▇▅▃▂▁ 0.4000 (held-out 0.9000)"
    assert ko[1] == "손실 추이: █▇▅▃▂▁ 0.4000 (검증 0.9000)"


def test_the_paused_bot_expects_to_be_back_after_the_eta_and_scoring() -> None:
    updated = (NOW - timedelta(seconds=30)).timestamp()
    training = run_info(phase="training", eta_s=600.0, updated=updated, scoring_s=120.0)
    assert expected_back(training, None, now=NOW) == NOW + timedelta(seconds=-30 + 600 + 120)
    scoring = run_info(phase="evaluating", eta_s=0.0, updated=updated, scoring_s=120.0)  # training is over
    assert expected_back(scoring, None, now=NOW) == NOW + timedelta(seconds=90)
    late = run_info(phase="evaluating", eta_s=0.0, updated=updated - 3600, scoring_s=120.0)
    assert expected_back(late, None, now=NOW) == NOW + timedelta(minutes=1), "never in the past"

    last = run_info(RunStatus.SUCCEEDED)
    last = RunInfo(
        **{
            **vars(last),
            "started_at": NOW - timedelta(days=1, minutes=40),
            "finished_at": NOW - timedelta(days=1),
        }
    )
    loading = run_info(phase="loading")
    assert expected_back(loading, last, now=NOW) == loading.started_at + timedelta(minutes=40)
    assert expected_back(loading, None, now=NOW) is None
    assert expected_back(None, last, now=NOW) is None


def test_the_announcement_says_how_the_run_ended_in_the_askers_language() -> None:
    done = run_info(RunStatus.SUCCEEDED)
    assert announcement(done, "en", curve=True).splitlines() == [
        "Fine-tune run #7 has ended (/finetune run, started by discord:42): promoted, held-out loss 0.2100 "
        "(was 10.6500).",
        "Loss curve attached (blue: training loss, orange: held-out loss, across: steps).",
    ]
    assert announcement(done, "ko", curve=False).startswith(
        "학습 #7이(가) 끝났어요 (/finetune run, 시작: discord:42): "
    )


def test_conversation_keys_parse_as_the_bot_writes_them() -> None:
    assert parse_conversation_key("slack:T1:C9") == ConversationKey("slack", "T1", "C9")
    assert parse_conversation_key("console:-:console") == ConversationKey("console", "", "console")
    assert parse_conversation_key("slack:T1:C9:1712.3") == ConversationKey("slack", "T1", "C9", "1712.3")


class Poster:
    def __init__(self, name: str) -> None:
        self.name = name
        self.posts: list[tuple[ConversationKey, str, Path | None]] = []

    async def post_file(self, conversation: ConversationKey, text: str, path: Path | None = None) -> bool:
        self.posts.append((conversation, text, path))
        return True


async def test_nightly_runs_post_in_the_admin_channel_in_both_languages(
    sqlite_store: ConversationStore, tmp_path: Path
) -> None:
    records = LearningRecords(sqlite_store)
    run = records.create_run(trigger="schedule", started_by="scheduler", owner="me")
    records.update_progress(
        run.id, {"losses": {"train": [[1, 2.0], [2, 1.0]], "held_out": [[0, 2.5], [2, 1.2]]}}
    )
    finished = records.finish_run(
        run.id, RunStatus.REJECTED, RunOutcomeFields(error="gate", reason={"key": "gate"})
    )
    slack = Poster("slack")
    announcer = RunAnnouncer([slack, Poster("discord")], admin_channel="slack:T1:CADMIN")

    await announcer(finished, None, tmp_path / "run")

    [(where, text, picture)] = slack.posts
    assert where == ConversationKey("slack", "T1", "CADMIN")
    assert "야간 학습" in text and "nightly" in text
    assert picture == tmp_path / "run" / "loss-curve.png" and png_size(picture.read_bytes()) == (640, 360)


async def test_a_run_with_no_channel_or_cancelled_is_not_posted(tmp_path: Path) -> None:
    poster = Poster("discord")
    origin = RunOrigin(ConversationKey("discord", "1", "2"), "ko")
    await RunAnnouncer([poster])(run_info(RunStatus.SUCCEEDED), None, tmp_path)
    await RunAnnouncer([poster])(run_info(RunStatus.CANCELLED), origin, tmp_path)
    assert poster.posts == []
    await RunAnnouncer([poster])(run_info(RunStatus.FAILED), origin, tmp_path)
    [(_, text, picture)] = poster.posts
    assert text.startswith("학습 #7이(가) 끝났어요") and picture is None  # never trained: no curve


async def test_a_paused_bot_says_when_it_expects_to_be_back(
    sqlite_store: ConversationStore, tmp_path: Path
) -> None:
    """The whole core as bot.app builds it: a run training with 10 minutes left (and 1 of scoring after) pauses the
    engine; a message gets the maintenance sentence with the time, in the writer's language."""
    settings = load_settings(
        data_dir=tmp_path / "data", scheduler={"enabled": False, "timezone": "Asia/Seoul"}
    )
    engine = ScriptedEngine()
    core = build_core(settings, engine=engine, store=sqlite_store)
    records = LearningRecords(sqlite_store)
    sink = RecordingSink()

    await engine.pause()
    await core.chat.handle(message("안녕하세요"), sink)  # no run going: nothing to estimate from
    run = records.create_run(trigger="manual", started_by="console:local", owner="me")
    updated = time.time()
    records.update_progress(
        run.id, {"phase": "training", "eta_s": 600.0, "updated": updated, "scoring_s": 60.0}
    )
    await core.chat.handle(message("안녕하세요"), sink)
    await core.chat.handle(message("hello there"), sink)

    back = datetime.fromtimestamp(updated + 660, ZoneInfo("Asia/Seoul")).strftime("%H:%M")
    assert sink.sent == [
        "지금 점검(모델 학습) 중이에요. 잠시 후 다시 물어봐 주세요.",
        f"지금 점검(모델 학습) 중이에요. {back}쯤(약 11분 뒤) 다시 답할 수 있을 거예요.",
        f"I am down for maintenance (model training) and expect to be back around {back} (in about 11 min).",
    ]


def message(text: str) -> IncomingMessage:
    return IncomingMessage(
        platform="console",
        conversation=ConversationKey("console", "", "progress"),
        message_id=f"m-{time.monotonic_ns()}",
        author=Author(id="local", display_name="local"),
        text=text,
        is_direct=True,
    )


async def test_the_console_prints_the_post_and_the_pictures_path(tmp_path: Path) -> None:
    out = io.StringIO()
    console = ConsoleAdapter(session="console", stdin=io.StringIO(), stdout=out)
    picture = tmp_path / "loss-curve.png"

    assert await console.post_file(
        ConversationKey("console", "", "console"), "학습 #3이(가) 끝났어요", picture
    )
    assert not await console.post_file(ConversationKey("slack", "T1", "C1"), "elsewhere", picture)

    assert out.getvalue() == f"봇: 학습 #3이(가) 끝났어요\n    {picture}\n"
