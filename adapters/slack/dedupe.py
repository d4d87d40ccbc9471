"""Exactly once: Slack retries deliveries it thinks were missed, and delivers a mention twice (as ``app_mention`` and
as a channel ``message``, with two event ids). A slash command is run once per ``trigger_id`` (each invocation has
its own), so a signed request replayed within its five minutes does nothing (a second rollback).

Each delivery's ``event_id`` is recorded in the delivery log (``bot.ports.DeliveryLog``: a unique key in the
store, so it holds across restarts and processes) before any work; a repeat is answered 200 so Slack stops retrying. A retry of a delivery that never arrived is not a repeat,
so it is taken. Messages are also taken once by ``(channel, ts)``, whichever event brings them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse

from adapters.slack.events import PLATFORM
from bot.ports import DeliveryLog

_log = logging.getLogger(__name__)


class DeliveryDedupe:
    def __init__(self, deliveries: DeliveryLog) -> None:
        self._deliveries = deliveries

    async def middleware(
        self,
        body: dict[str, Any],
        request: AsyncBoltRequest,
        response: BoltResponse,
        next: Callable[[], Awaitable[None]],
    ) -> BoltResponse:
        """A Bolt global middleware: a delivery already taken ends here, with 200 (a bare return would be 404)."""
        event_id = body.get("event_id") if body.get("type") == "event_callback" else None
        if event_id and not await self._first(f"event:{event_id}"):
            _log.info(
                "duplicate delivery event_id=%s retry=%s reason=%s: already taken",
                event_id,
                _header(request, "x-slack-retry-num"),
                _header(request, "x-slack-retry-reason"),
            )
            return BoltResponse(status=200, body="")
        trigger_id = body.get("trigger_id") if body.get("command") else None
        if trigger_id and not await self._first(f"command:{trigger_id}"):
            # a signed request replayed within the signature's five minutes: each invocation has its own trigger
            _log.warning(
                "replayed slash command %s trigger=%s user=%s team=%s: ignored",
                body.get("command"),
                trigger_id,
                body.get("user_id"),
                body.get("team_id"),
            )
            return BoltResponse(status=200, body="")
        await next()
        return response

    async def first_time_message(self, message_id: str) -> bool:
        """True the first time a message (``channel:ts``) is taken, whichever event brought it."""
        return await self._first(f"message:{message_id}")

    async def _first(self, key: str) -> bool:
        return await self._deliveries.first_delivery(PLATFORM, key)


def _header(request: AsyncBoltRequest, name: str) -> str:
    values = request.headers.get(name) or []
    return values[0] if values else "-"
