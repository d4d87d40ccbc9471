"""Who may run admin commands. Checked in the core, whatever the platform's UI permissions say."""

from __future__ import annotations

import logging

from bot.domain import Author
from bot.settings import Settings

_log = logging.getLogger(__name__)


class AdminPolicy:
    def __init__(self, settings: Settings) -> None:
        self._user_ids = {
            "discord": set(settings.discord.admin_user_ids),
            "slack": set(settings.slack.admin_user_ids),
        }
        self._role_ids = {"discord": set(settings.discord.admin_role_ids)}

    def is_admin(self, platform: str, author: Author) -> bool:
        if author.is_bot:
            return False
        if platform == "console":
            return True  # whoever runs the console owns the bot
        if author.platform_admin:
            return True
        if author.id in self._user_ids.get(platform, set()):
            return True
        return bool(self._role_ids.get(platform, set()).intersection(author.role_ids))
