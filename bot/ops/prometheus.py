"""``Metrics`` on prometheus-client: every series the bot exports, in one registry per process.

The names here are the contract with the Grafana dashboard (``deploy/grafana/hanbot.json``; a test checks that every
expression in it names a series exported here). Gauges that describe state (the engine's load, the fine-tune and the
LoRA in service) are set just before each scrape by the refreshers the composition root registers.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.process_collector import ProcessCollector

from bot.metrics import ApiResult, EngineLoad, Outcome

_log = logging.getLogger(__name__)

Refresher = Callable[[], Awaitable[None]]

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
RATE_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 200.0, 500.0)


class PrometheusMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        self.messages = Counter(
            "hanbot_messages",
            "Incoming messages by platform and outcome",
            ["platform", "outcome"],
            registry=r,
        )
        self.replies_waiting = Gauge(
            "hanbot_replies_waiting", "Replies sent to the engine that have no token yet", registry=r
        )
        self.queue_wait_seconds = Histogram(
            "hanbot_queue_wait_seconds",
            "Time a request waited in the engine's queue (0 when it never queued)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.first_token_seconds = Histogram(
            "hanbot_first_token_seconds",
            "From the message's arrival at the core to the reply's first token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens_rate = Histogram(
            "hanbot_tokens_per_second",
            "Decoding speed of each finished reply",
            buckets=RATE_BUCKETS,
            registry=r,
        )
        self.generation_errors = Counter(
            "hanbot_generation_errors",
            "Generations that ended with an error, by error kind",
            ["kind"],
            registry=r,
        )
        self.api_calls = Counter(
            "hanbot_platform_api_calls",
            "Platform API attempts by platform and result (ok, error, retry)",
            ["platform", "result"],
            registry=r,
        )
        self.engine_waiting = Gauge(
            "hanbot_engine_waiting", "Requests waiting in the engine's queue", registry=r
        )
        self.engine_running = Gauge("hanbot_engine_running", "Requests decoding in the engine", registry=r)
        self.engine_slots = Gauge("hanbot_engine_slots", "Replies the engine can decode at once", registry=r)
        self.engine_kv_used = Gauge(
            "hanbot_engine_kv_used_ratio", "Share of the engine's KV memory (or slots) in use", registry=r
        )
        self.finetune_running = Gauge("hanbot_finetune_running", "1 while a fine-tune runs", registry=r)
        self.finetune_last_run = Gauge(
            "hanbot_finetune_last_run",
            "1 for the status of the last finished fine-tune run (succeeded, rejected, failed, cancelled)",
            ["status"],
            registry=r,
        )
        self.lora_in_service = Gauge(
            "hanbot_lora_in_service",
            '1 for the LoRA version this process serves (version="base": the base model)',
            ["version"],
            registry=r,
        )
        self.pruned_turns = Counter("hanbot_pruned_turns", "Turns removed by the prune job", registry=r)
        self.ready = Gauge(
            "hanbot_ready", "1 when the readiness check passes, by check", ["check"], registry=r
        )
        self._refreshers: list[Refresher] = []

    # the Metrics port

    def message(self, platform: str, outcome: Outcome) -> None:
        self.messages.labels(platform=platform, outcome=outcome.value).inc()

    def reply_waiting(self, delta: int) -> None:
        self.replies_waiting.inc(delta)

    def queue_wait(self, seconds: float) -> None:
        self.queue_wait_seconds.observe(seconds)

    def first_token(self, seconds: float) -> None:
        self.first_token_seconds.observe(seconds)

    def tokens_per_second(self, rate: float) -> None:
        self.tokens_rate.observe(rate)

    def generation_error(self, kind: str) -> None:
        self.generation_errors.labels(kind=kind).inc()

    def api_call(self, platform: str, result: ApiResult) -> None:
        self.api_calls.labels(platform=platform, result=result.value).inc()

    def pruned(self, turns: int) -> None:
        self.pruned_turns.inc(turns)

    # state, set before each scrape

    def add_refresher(self, refresh: Refresher) -> None:
        self._refreshers.append(refresh)

    def set_engine_load(self, load: EngineLoad) -> None:
        for gauge, value in (
            (self.engine_waiting, load.waiting),
            (self.engine_running, load.running),
            (self.engine_slots, load.slots),
            (self.engine_kv_used, load.kv_used_ratio),
        ):
            if value is not None:
                gauge.set(value)

    def set_finetune(self, *, running: bool, last_status: str | None, serving: str | None) -> None:
        self.finetune_running.set(1 if running else 0)
        self.finetune_last_run.clear()
        if last_status is not None:
            self.finetune_last_run.labels(status=last_status).set(1)
        self.lora_in_service.clear()
        self.lora_in_service.labels(version=serving or "base").set(1)

    def set_ready(self, check: str, ok: bool) -> None:
        self.ready.labels(check=check).set(1 if ok else 0)

    async def exposition(self) -> bytes:
        """The text format, after every refresher ran (one that fails leaves its gauges as they were)."""
        for refresh in self._refreshers:
            try:
                await refresh()
            except Exception:
                _log.warning(
                    "metrics refresher %s failed", getattr(refresh, "__name__", refresh), exc_info=True
                )
        return generate_latest(self.registry)
