"""Load test: the real bot against a loopback Discord and a loopback Slack at once.

The real adapters (discord.py on the gateway, slack_bolt over Socket Mode), the real store (SQLite, or the database
in HANBOT_STORE__DATABASE_URL), the real chat service and the metrics endpoint, built by the composition root; the
engine is the tiny demo model through LocalEngine (``--engine demo``, the default: real queue, batching, refusals)
or the scripted engine (``--engine scripted``). 500 messages across 50 channels (25 Discord channels, 25 Slack
channels, one thread per mention), sent in bursts.

Each message is then accounted for from both sides: the store (its turn, and a complete reply linked to it) and the
platform (the bot's messages that answer it: Discord replies that reference it, Slack messages in its thread).
answered: a complete reply stored and shown; refused: no reply and a polite refusal shown; lost: neither;
duplicates: a reply stored or shown more than once. Times are measured from the moment the user's message is sent:
first and last token as the engine hands them over. The /metrics totals are scraped during the run and at the end.

    .venv/bin/python -m bench.load                    # writes bench/results/load.json
    .venv/bin/python -m bench.load --engine scripted  # the same around a scripted engine
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import discord
import yarl
from sqlalchemy import select
from sqlalchemy.engine import make_url

from bot.app import (
    build_adapters,
    build_core,
    build_engine,
    build_store,
    readiness_checks,
    shutdown,
    start_ops,
)
from bot.domain import GenerationRequest, MessageStatus, Role, StreamEvent
from bot.errors import ChannelQueueFull, EnginePaused, QueueFull, UserQueueFull
from bot.ops.prometheus import PrometheusMetrics
from bot.ports import Engine
from bot.settings import Settings, load_settings
from bot.store.conversations import StoredMessage
from bot.store.models import Message
from bot.texts import say
from tests.discord.fake_discord import FakeDiscord
from tests.fakes import ScriptedEngine
from tests.ops.helpers import get, total
from tests.slack.fake_slack import USERS, FakeSlack
from tests.slack.harness import ENV, envelope, mention_event

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "load.json"
REFUSALS = (
    QueueFull,
    UserQueueFull,
    ChannelQueueFull,
    EnginePaused,
)  # one polite sentence instead of a reply
PEOPLE = 50  # distinct writers on each platform (the engine caps the waiting requests of one person)


@dataclass
class Sent:
    platform: str
    channel: str
    message_id: str  # as the bot stores it: the Discord message id, or "<channel>:<ts>" on Slack
    at: float
    thread: str = ""  # Slack: the mention's ts, where the bot answers
    first_token: float | None = None
    last_token: float | None = None


@dataclass
class TimedEngine:
    """Passes requests to the real engine and notes when each request's first and last text arrive."""

    inner: Engine
    sent: dict[str, Sent] = field(default_factory=dict)  # request id -> Sent

    @property
    def tokenizer(self) -> Any:
        return self.inner.tokenizer

    async def generate(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        entry = self.sent.get(request.request_id)
        stream = self.inner.generate(request)
        try:
            async for event in stream:
                if isinstance(event, str) and entry is not None:
                    now = time.monotonic()
                    entry.first_token = entry.first_token or now
                    entry.last_token = now
                yield event
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:  # health, pause, resume, LoRA, aclose, counts, decoder
        return getattr(self.inner, name)


def settings_for(data_dir: Path, fake_slack: FakeSlack, args: argparse.Namespace) -> Settings:
    from inference.demo_model import ensure_demo_model

    for name, value in ENV.items():
        os.environ[name] = value
    model_dir = ensure_demo_model(REPO / ".cache" / "demo-model")
    return load_settings(
        data_dir=data_dir,
        model={"name_or_path": str(model_dir), "dtype": "float32", "device_map": None, "is_demo": True},
        generation={"max_new_tokens": args.max_new_tokens, "temperature": 0.0, "repetition_penalty": 1.0},
        engine={
            "kind": "local",
            "decoder": "hf",
            "max_batch_size": args.batch,
            "queue_limit": args.queue_limit,
        },
        scheduler={"enabled": False},
        ops={"port": 0},
        discord={"edit_interval_s": 0.5},
        slack={
            "mode": "socket",
            "api_base_url": fake_slack.base_url,
            "update_interval_s": 0.5,
            "update_budget_per_min": 100_000,
        },
        DISCORD_TOKEN="fake-token",
    )


def questions() -> list[str]:
    from inference.demo_model import FAQ

    return [q for q, _a in FAQ]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    fake_discord, fake_slack = FakeDiscord(), FakeSlack()
    await fake_discord.start()
    await fake_slack.start()
    discord.http.Route.BASE = fake_discord.base_url
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake_discord.gateway_url)
    workdir = Path(tempfile.mkdtemp(prefix="hanbot-load-"))
    settings = settings_for(workdir / "data", fake_slack, args)

    metrics = PrometheusMetrics()
    ops = await start_ops(settings, metrics)
    assert ops is not None and ops.port
    store = build_store(settings)
    real_engine: Engine = (
        ScriptedEngine(reply=lambda r: f"reply to {r.request_id}", chunk_size=4, delay_s=0.02)
        if args.engine == "scripted"
        else build_engine(settings)
    )
    engine = TimedEngine(real_engine)
    adapters = build_adapters(settings, store, ["discord", "slack"], metrics)
    core = build_core(settings, engine=engine, store=store, metrics=metrics)  # type: ignore[arg-type]
    for adapter in adapters:
        await adapter.start(core.chat.handle, core.commands)
    ops.watch(readiness_checks(store, engine, adapters))  # type: ignore[arg-type]

    discord_channels = [fake_discord.general, fake_discord.random]
    discord_channels += [fake_discord.add_channel(f"load-{i}") for i in range(args.channels // 2 - 2)]
    slack_channels = [f"C{i:03d}" for i in range(args.channels - len(discord_channels))]
    discord_people = [fake_discord.new_user(f"person{i}") for i in range(PEOPLE)]
    slack_people = [f"ULOAD{i:03d}" for i in range(PEOPLE)]
    for user_id in slack_people:  # the fake's users.info knows them
        USERS[user_id] = {"name": user_id.lower(), "profile": {"display_name": user_id}}
    texts = questions()
    sent: list[Sent] = []
    scrapes: list[dict[str, float]] = []
    started = time.monotonic()
    ready_during_run = (await get(ops.port, "/ready"))[0]

    async def scrape() -> dict[str, float]:
        page = (await get(ops.port, "/metrics"))[1]
        found = {
            f"messages_{o}": total(page, "hanbot_messages_total", outcome=o)
            for o in ("answered", "refused", "failed", "cancelled", "duplicate")
        }
        found["generation_errors"] = total(page, "hanbot_generation_errors_total")
        for error in REFUSALS:
            found[f"generation_errors_{error.__name__}"] = total(
                page, "hanbot_generation_errors_total", kind=error.__name__
            )
        found["platform_api_calls"] = total(page, "hanbot_platform_api_calls_total")
        found["platform_api_retries"] = total(page, "hanbot_platform_api_calls_total", result="retry")
        found["first_token_count"] = total(page, "hanbot_first_token_seconds_count")
        found["replies_waiting"] = total(page, "hanbot_replies_waiting")
        return found

    per_burst = args.messages // args.bursts
    n = 0
    for burst in range(args.bursts):
        for i in range(per_burst):
            text = texts[n % len(texts)]
            if i % 2 == 0:
                channel = discord_channels[(i // 2) % len(discord_channels)]
                person = discord_people[(n // 2) % PEOPLE]
                message_id = fake_discord.post_message(channel, person, text, mention_bot=True)
                entry = Sent("discord", channel, message_id, time.monotonic())
            else:
                channel = slack_channels[(i // 2) % len(slack_channels)]
                ts = f"{1_700_000_000 + n}.{n:06d}"
                entry = Sent("slack", channel, f"{channel}:{ts}", time.monotonic(), thread=ts)
                user = slack_people[(n // 2) % PEOPLE]
                await fake_slack.push(envelope(mention_event(text, ts, channel=channel, user=user), f"Ev{n}"))
            engine.sent[f"{entry.platform}:{entry.message_id}"] = entry
            sent.append(entry)
            n += 1
        scrapes.append(await scrape())
        print(f"burst {burst + 1}/{args.bursts}: {n} sent, {scrapes[-1]}", flush=True)
        await asyncio.sleep(args.gap_s)

    await settle(metrics_ops_port=ops.port, expected=len(sent), within_s=args.settle_s)
    final = await scrape()
    accounts = account(sent, store, fake_discord, fake_slack)
    elapsed = time.monotonic() - started

    await shutdown(core, adapters, ops)
    await fake_discord.stop()
    await fake_slack.stop()

    firsts = [s.first_token - s.at for s in sent if s.first_token is not None]
    lasts = [s.last_token - s.at for s in sent if s.last_token is not None]
    return {
        "benchmark": "load: real Discord and Slack adapters against loopback fakes at once",
        "command": _command(),
        "engine": (
            "scripted (tests.fakes.ScriptedEngine, 4-character chunks every 20 ms)"
            if args.engine == "scripted"
            else f"demo model through LocalEngine (hf decoder, CPU, batch {args.batch}, "
            f"queue_limit {args.queue_limit}, max_new_tokens {args.max_new_tokens}, greedy)"
        ),
        "store": settings.database_url.split("://")[0],
        "messages": args.messages,
        "channels": {"discord": len(discord_channels), "slack": len(slack_channels)},
        "bursts": args.bursts,
        "gap_s": args.gap_s,
        **accounts,
        "p50_first_token_s": _pct(firsts, 50),
        "p95_first_token_s": _pct(firsts, 95),
        "p95_last_token_s": _pct(lasts, 95),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_rss_note": "the whole process: the bot, the demo model and both fake platforms",
        "note": (
            "refusals are the engine's queue limits at work (engine.queue_limit, and the per-person and "
            "per-channel caps: QueueFull and its kinds in metrics_final; the user gets one polite sentence). "
            "Within a burst the Discord messages reach the bot first (the fake gateway dispatches them at once, "
            "Slack envelopes go over one socket one by one), so the Slack ones find the queue full more often"
        ),
        "elapsed_s": round(elapsed, 1),
        "ready_status_during_run": ready_during_run,
        "metrics_during_run": scrapes,
        "metrics_final": final,
        "metrics_agree": (
            final["messages_answered"] == accounts["answered"]
            and final["messages_refused"] == accounts["refused"]
            and final["messages_failed"] + final["messages_cancelled"] == 0
        ),
        "cpu": os.cpu_count(),
    }


async def settle(*, metrics_ops_port: int, expected: int, within_s: float) -> None:
    """Wait until every message has an outcome in the metrics (and nothing waits for a first token)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        page = (await get(metrics_ops_port, "/metrics"))[1]
        if total(page, "hanbot_messages_total") >= expected and total(page, "hanbot_replies_waiting") == 0:
            await asyncio.sleep(2.0)  # the last edits reach the platform
            return
        await asyncio.sleep(0.5)


def account(sent: list[Sent], store: Any, fake_discord: FakeDiscord, fake_slack: FakeSlack) -> dict[str, Any]:
    """Each message: answered, refused or lost, seen from the store and from the platform; and duplicates."""
    refusals = {say(error.user_text_key, lang).strip() for error in REFUSALS for lang in ("ko", "en")}
    answered = refused = lost = duplicates = 0
    lost_ids: list[str] = []
    by_platform: dict[str, dict[str, int]] = {}
    for entry in sent:
        counts = by_platform.setdefault(entry.platform, {"sent": 0, "answered": 0, "refused": 0})
        counts["sent"] += 1
        replies = _stored_replies(store, entry)
        shown = _shown(entry, fake_discord, fake_slack)
        complete = [r for r in replies if r.status == MessageStatus.COMPLETE]
        duplicates += max(len(replies) - 1, 0)
        if complete:
            showing = [t for t in shown if t.strip() == complete[0].content.strip()]
            duplicates += max(len(showing) - 1, 0)
            if showing:
                answered += 1
                counts["answered"] += 1
                continue
        elif any(t.strip() in refusals for t in shown):
            refused += 1
            counts["refused"] += 1
            continue
        lost += 1
        lost_ids.append(f"{entry.platform}:{entry.message_id}")
        if os.environ.get("LOAD_DEBUG"):
            print("lost", entry, [r.content for r in replies], shown, file=sys.stderr)
    return {
        "sent": len(sent),
        "answered": answered,
        "refused": refused,
        "duplicates": duplicates,
        "lost": lost,
        "lost_ids": lost_ids[:20],
        "by_platform": by_platform,
    }


def _stored_replies(store: Any, entry: Sent) -> list[StoredMessage]:
    turn = store.find_message(entry.platform, entry.message_id)
    if turn is None:
        return []
    with store.session() as session:
        rows = session.scalars(select(Message).where(Message.reply_to_id == turn.id)).all()
        return [StoredMessage.of(row) for row in rows if row.role == Role.ASSISTANT.value]


def _shown(entry: Sent, fake_discord: FakeDiscord, fake_slack: FakeSlack) -> list[str]:
    if entry.platform == "discord":
        return [
            m["content"]
            for m in fake_discord.bot_messages(entry.channel)
            if (m.get("message_reference") or {}).get("message_id") == entry.message_id
        ]
    return [m.text for m in fake_slack.replies(entry.channel, entry.thread)]


def _command() -> str:
    """The command line, with the database URL it ran on when that came from the environment (password hidden)."""
    url = os.environ.get("HANBOT_STORE__DATABASE_URL")
    prefix = (
        f"HANBOT_STORE__DATABASE_URL={make_url(url).render_as_string(hide_password=True)} " if url else ""
    )
    return prefix + " ".join([".venv/bin/python -m bench.load", *sys.argv[1:]])


def _pct(values: list[float], q: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 3)
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 3)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engine", choices=["demo", "scripted"], default="demo")
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--channels", type=int, default=50)
    parser.add_argument("--bursts", type=int, default=10)
    parser.add_argument("--gap-s", type=float, default=3.0, help="pause between bursts")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--queue-limit", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--settle-s", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(
        json.dumps(
            {k: v for k, v in result.items() if k != "metrics_during_run"}, indent=2, ensure_ascii=False
        )
    )


if __name__ == "__main__":
    main()
