"""Reading the Prometheus text format the way a scraper does, and fetching the operations endpoint."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bot.errors import EngineUnhealthy


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """{(sample name, labels): value} of a /metrics page."""
    found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def total(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples(text).items() if n == name and wanted <= set(ls))


async def get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        async with session.get(f"http://127.0.0.1:{port}{path}") as response:
            return response.status, await response.text()


async def ready(port: int) -> tuple[int, dict[str, Any]]:
    status, body = await get(port, "/ready")
    return status, json.loads(body)


class HealthSwitch:
    """Makes a ScriptedEngine's ``health()`` hang (a stuck engine) or raise, as a test says."""

    def __init__(self, engine: Any) -> None:
        self.mode = "ok"
        engine.health = self.health

    async def health(self) -> None:
        if self.mode == "stuck":
            await asyncio.Event().wait()  # never answers: the check's timeout must catch it
        if self.mode == "unhealthy":
            raise EngineUnhealthy("the model worker thread has stopped")


async def until_metric(port: int, name: str, value: float, within_s: float = 10.0, **labels: str) -> None:
    """Scrape until ``name`` (summed over samples with ``labels``) reaches ``value``."""
    deadline = time.monotonic() + within_s
    while total((await get(port, "/metrics"))[1], name, **labels) != value:
        assert time.monotonic() < deadline, f"{name}{labels} never reached {value}"
        await asyncio.sleep(0.05)


async def until_ready_status(port: int, status: int, within_s: float = 15.0) -> None:
    deadline = time.monotonic() + within_s
    while (await ready(port))[0] != status:
        assert time.monotonic() < deadline, f"/ready never answered {status}"
        await asyncio.sleep(0.1)
