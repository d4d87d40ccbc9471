"""Who a Slack user is (``users.info``): the name the model sees, whether they are a bot, a workspace admin or owner,
and their language. Cached for a while; a lookup that fails falls back to the id and to "not an admin".
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient

from bot.domain import Author
from bot.texts import Lang

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlackUser:
    id: str
    display_name: str
    is_bot: bool = False
    is_workspace_admin: bool = False  # admin, owner or primary owner of the workspace
    locale: str = ""

    @property
    def lang(self) -> Lang | None:
        if not self.locale:
            return None
        return "ko" if self.locale.lower().startswith("ko") else "en"

    def author(self) -> Author:
        return Author(
            id=self.id,
            display_name=self.display_name,
            is_bot=self.is_bot,
            platform_admin=self.is_workspace_admin,
        )


class UserDirectory:
    def __init__(self, client: AsyncWebClient, *, ttl_s: float = 600.0) -> None:
        self._client = client
        self._ttl_s = ttl_s
        self._cache: dict[str, tuple[float, SlackUser]] = {}

    async def get(self, user_id: str, *, fresh: bool = False) -> SlackUser:
        """The user, from the cache unless ``fresh`` (admin checks ask Slack every time)."""
        now = time.monotonic()
        cached = self._cache.get(user_id)
        if cached and not fresh and now - cached[0] < self._ttl_s:
            return cached[1]
        try:
            response = await self._client.users_info(user=user_id, include_locale=True)
        except (SlackApiError, SlackClientError, OSError) as exc:
            _log.warning("users.info failed user=%s: %s", user_id, type(exc).__name__)
            return cached[1] if cached else SlackUser(id=user_id, display_name=user_id)
        user = parse_user(user_id, response.get("user") or {})
        self._cache[user_id] = (now, user)
        return user


def parse_user(user_id: str, data: dict[str, Any]) -> SlackUser:
    profile = data.get("profile") or {}
    name = (
        profile.get("display_name")
        or profile.get("real_name")
        or data.get("real_name")
        or data.get("name")
        or user_id
    )
    return SlackUser(
        id=user_id,
        display_name=str(name),
        is_bot=bool(data.get("is_bot")),
        is_workspace_admin=bool(data.get("is_admin") or data.get("is_owner") or data.get("is_primary_owner")),
        locale=str(data.get("locale") or ""),
    )
