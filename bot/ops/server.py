"""The operations endpoint: ``/metrics`` (Prometheus), ``/health`` (liveness) and ``/ready`` (readiness).

One small aiohttp server on ``ops.host:ops.port``, started in every mode (console, Discord, Slack in either mode).
``/health`` answers 200 while the event loop runs. ``/ready`` runs every readiness check at once, each within
``ops.check_timeout_s``: 200 when all pass, 503 otherwise, with a JSON body naming each check's result (an exception's
class name, never its text: a database error may name hosts and users). A check that does not answer in time fails, so
a stuck engine turns ``/ready`` red.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp import web

from bot.errors import ConfigError
from bot.ops.prometheus import PrometheusMetrics

_log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Check:
    """One readiness check: ``run`` returns True when ready (False or an exception: not ready)."""

    name: str
    run: Callable[[], Awaitable[bool]]


class OpsServer:
    def __init__(
        self,
        metrics: PrometheusMetrics,
        checks: Sequence[Check] = (),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        check_timeout_s: float = 5.0,
    ) -> None:
        self._metrics = metrics
        self._checks = list(checks)
        self._watching = bool(checks)  # until watch(), /ready says "starting"
        self._host = host
        self._port = port
        self._timeout_s = check_timeout_s
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int | None:
        """The port it listens on (useful with port 0); None before start."""
        if self._runner is None or not self._runner.addresses:
            return None
        return int(self._runner.addresses[0][1])

    def watch(self, checks: Sequence[Check]) -> None:
        """The bot is serving: from now on /ready runs these checks."""
        self._checks = list(checks)
        self._watching = True

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/metrics", self._metrics_page)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self._host, self._port).start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise ConfigError(
                f"the operations endpoint cannot listen on {self._host}:{self._port} ({exc.strerror}): "
                "set HANBOT_OPS__PORT to a free port (0: any), or HANBOT_OPS__ENABLED=false"
            ) from None
        _log.info("operations endpoint on %s:%s (/metrics /health /ready)", self._host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def readiness(self) -> dict[str, str]:
        """{check name: "ok" or why not}, every check run at once."""
        if not self._watching:
            return {"serving": "starting"}
        results = await asyncio.gather(*(self._run_check(c) for c in self._checks))
        return dict(zip((c.name for c in self._checks), results, strict=True))

    # handlers

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _ready(self, _request: web.Request) -> web.Response:
        checks = await self.readiness()
        ready = all(result == "ok" for result in checks.values())
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    async def _metrics_page(self, _request: web.Request) -> web.Response:
        await self.readiness()  # hanbot_ready follows the checks
        body = await self._metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def _run_check(self, check: Check) -> str:
        try:
            ok = await asyncio.wait_for(check.run(), self._timeout_s)
            result = "ok" if ok else "down"
        except TimeoutError:
            result = f"no answer within {self._timeout_s:g} s"
        except Exception as exc:
            result = type(exc).__name__
        if result != "ok":
            _log.warning("readiness check %s failed: %s", check.name, result)
        self._metrics.set_ready(check.name, result == "ok")
        return result
