"""The metrics a scraper reads: each message counted once by platform and outcome, latency histograms, errors by kind,
prune counts; and the Grafana dashboard names only series that are exported (and every one of them)."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

from bot.chat import ChatService
from bot.domain import Author, ConversationKey, IncomingMessage, Role
from bot.errors import GenerationFailed, QueueFull
from bot.metrics import EngineLoad
from bot.ops.prometheus import PrometheusMetrics
from bot.scheduler import BotScheduler
from bot.settings import Settings, load_settings
from bot.store.conversations import ConversationStore
from tests.fakes import RecordingSink, ScriptedEngine
from tests.learning.helpers import FixedClock, add_turn
from tests.ops.helpers import total

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "hanbot.json"


def _settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path / "data", scheduler={"enabled": False})


def _message(n: int, text: str = "hello there", platform: str = "slack") -> IncomingMessage:
    return IncomingMessage(
        platform=platform,
        conversation=ConversationKey(platform, "T1", f"C{n % 3}"),
        message_id=f"m{n}",
        author=Author(id="U1", display_name="Alice"),
        text=text,
    )


async def _page(metrics: PrometheusMetrics) -> str:
    return (await metrics.exposition()).decode()


async def test_each_message_is_counted_once_by_platform_and_outcome(
    tmp_path, sqlite_store: ConversationStore
):
    metrics = PrometheusMetrics()
    engine = ScriptedEngine(reply="a reply of a few tokens", chunk_size=4, queue_positions=(1,))
    chat = ChatService(settings=_settings(tmp_path), store=sqlite_store, engine=engine, metrics=metrics)

    for n in range(3):
        await chat.handle(_message(n), RecordingSink())
    await chat.handle(_message(0), RecordingSink())  # a second delivery of m0
    await chat.handle(_message(9, text="   ", platform="discord"), RecordingSink())  # empty: one sentence

    page = await _page(metrics)
    assert total(page, "hanbot_messages_total", platform="slack", outcome="answered") == 3
    assert total(page, "hanbot_messages_total", platform="slack", outcome="duplicate") == 1
    assert total(page, "hanbot_messages_total", platform="discord", outcome="refused") == 1
    assert total(page, "hanbot_messages_total") == 5
    assert total(page, "hanbot_first_token_seconds_count") == 3
    assert total(page, "hanbot_queue_wait_seconds_count") == 3
    assert total(page, "hanbot_tokens_per_second_count") == 3
    assert total(page, "hanbot_replies_waiting") == 0
    assert total(page, "hanbot_generation_errors_total") == 0


async def test_a_full_queue_is_a_refusal_and_a_failure_midway_is_a_failed_reply(
    tmp_path, sqlite_store: ConversationStore
):
    metrics = PrometheusMetrics()
    settings = _settings(tmp_path)
    full = ScriptedEngine(fail_after=0, error=QueueFull("64 waiting"))
    broken = ScriptedEngine(
        reply="partial then broken", chunk_size=4, fail_after=2, error=GenerationFailed("x")
    )

    await ChatService(settings=settings, store=sqlite_store, engine=full, metrics=metrics).handle(
        _message(1), RecordingSink()
    )
    await ChatService(settings=settings, store=sqlite_store, engine=broken, metrics=metrics).handle(
        _message(2), RecordingSink()
    )

    page = await _page(metrics)
    assert total(page, "hanbot_messages_total", outcome="refused") == 1
    assert total(page, "hanbot_messages_total", outcome="failed") == 1
    assert total(page, "hanbot_generation_errors_total", kind="QueueFull") == 1
    assert total(page, "hanbot_generation_errors_total", kind="GenerationFailed") == 1
    assert total(page, "hanbot_replies_waiting") == 0  # neither is left counted as waiting


async def test_engine_load_fine_tune_state_and_lora_in_service_are_set_before_each_scrape():
    metrics = PrometheusMetrics()
    state = {"serving": "v1"}

    async def refresh() -> None:
        metrics.set_finetune(running=False, last_status="succeeded", serving=state["serving"])

    metrics.add_refresher(refresh)
    page = await _page(metrics)
    assert total(page, "hanbot_lora_in_service", version="v1") == 1
    assert total(page, "hanbot_finetune_last_run", status="succeeded") == 1

    state["serving"] = None  # rolled back to the base model
    page = await _page(metrics)
    assert total(page, "hanbot_lora_in_service", version="base") == 1
    assert total(page, "hanbot_lora_in_service", version="v1") == 0


# the dashboard

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_series() -> dict[str, str]:
    """{sample name a query can use: its family}, from a live registry."""
    names: dict[str, str] = {}
    for family in PrometheusMetrics().registry.collect():
        for suffix in SUFFIXES.get(family.type, ("",)):
            names[family.name + suffix] = family.name
    return names


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_dashboard_expression_names_exported_series_and_every_series_is_on_the_dashboard():
    exported = exported_series()
    used: set[str] = set()
    for expr in dashboard_expressions():
        names = set(re.findall(r"\b((?:hanbot|process)_[a-z_]+)\b", expr))
        assert names, f"no hanbot series in {expr!r}"
        unknown = names - exported.keys()
        assert not unknown, f"{expr!r} names series that are not exported: {unknown}"
        used |= {exported[n] for n in names}
    families = set(exported.values())
    assert families - used <= {
        "process_virtual_memory_bytes",
        "process_start_time_seconds",
        "process_open_fds",
        "process_max_fds",
    }


def test_the_dashboard_check_sees_an_unknown_series():
    assert "hanbot_mesages_total" not in exported_series()
    assert "hanbot_messages_total" in exported_series()


async def test_the_prune_job_counts_the_turns_it_removed_and_only_the_leader_counts(tmp_path, sqlite_store):
    clock = FixedClock()
    settings = load_settings(
        data_dir=tmp_path / "data",
        scheduler={"lease_ttl_s": 30},
        history={"max_age_days": 30, "keep_recent_messages": 2},
    )
    key = ConversationKey("discord", "G", "C")
    for i in range(8):
        add_turn(sqlite_store, key, Role.USER, f"t{i}", at=clock() - timedelta(days=40 - i * 5))
    metrics = PrometheusMetrics()
    leader = BotScheduler(settings, sqlite_store, clock=clock, holder="a", metrics=metrics)
    follower = BotScheduler(settings, sqlite_store, clock=clock, holder="b", metrics=metrics)
    assert await leader.check_lease()

    assert await follower.run_prune() is None
    report = await leader.run_prune()

    assert report is not None and report.total == 2
    assert total(await _page(metrics), "hanbot_pruned_turns_total") == 2


async def test_the_local_engine_reports_its_queue_and_slots(demo_model_dir):
    from bot.ops.probes import engine_load
    from bot.settings import EngineSettings, ModelSettings
    from inference.loading import load_model
    from inference.local_engine import LocalEngine

    loaded = load_model(ModelSettings(name_or_path=str(demo_model_dir), dtype="float32", device_map=None))
    engine = LocalEngine(
        loaded.model, loaded.tokenizer, engine=EngineSettings(decoder="hf", max_batch_size=4)
    )
    try:
        load = engine_load(engine)
        assert (load.waiting, load.running, load.slots, load.kv_used_ratio) == (0, 0, 4, 0.0)
    finally:
        await engine.aclose()
    assert engine_load(ScriptedEngine()) == EngineLoad()  # an engine without a queue reports nothing
