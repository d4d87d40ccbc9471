"""Who may do what, and where the bot serves at all. Checked in the core, whatever the platform's UI permissions say.

- Reach: with ``discord.allowed_guild_ids`` / ``slack.allowed_team_ids`` set, messages and commands from any other
  guild or workspace are refused (DMs, which belong to no guild, stay open). With the list empty, every guild and
  workspace is served.
- Admins: the user (and Discord role) ids in the settings, anywhere; a platform admin (Discord Manage Server, Slack
  workspace admin or owner) only where the bot is allowed.
- Commands that act on the model every team shares (``/finetune``): a platform admin may run them only inside an
  allowlisted guild or workspace; with no allowlist, only the admin ids from the settings may.
- The console is the bot's owner.
"""

from __future__ import annotations

import logging
from enum import StrEnum

from bot.domain import Author
from bot.settings import Settings

_log = logging.getLogger(__name__)


class Refusal(StrEnum):
    """Why a command or message is refused; each value names a sentence in bot.texts."""

    NOT_ALLOWED_HERE = "error.not_allowed_here"
    NOT_ADMIN = "error.not_admin"
    SHARED_NEEDS_ALLOWLIST = "error.shared_model_admin"


# The settings an operator fills to let a platform's admins act on the shared model (named in the refusal).
ALLOWLIST_SETTING = {
    "discord": "HANBOT_DISCORD__ALLOWED_GUILD_IDS",
    "slack": "HANBOT_SLACK__ALLOWED_TEAM_IDS",
}
ADMIN_IDS_SETTING = {
    "discord": "HANBOT_DISCORD__ADMIN_USER_IDS",
    "slack": "HANBOT_SLACK__ADMIN_USER_IDS",
}


class AdminPolicy:
    def __init__(self, settings: Settings) -> None:
        self._user_ids = {
            "discord": set(settings.discord.admin_user_ids),
            "slack": set(settings.slack.admin_user_ids),
        }
        self._role_ids = {"discord": set(settings.discord.admin_role_ids)}
        self._allowed = {
            "discord": set(settings.discord.allowed_guild_ids),
            "slack": set(settings.slack.allowed_team_ids),
        }

    # reach

    def has_allowlist(self, platform: str) -> bool:
        return bool(self._allowed.get(platform))

    def serves(self, platform: str, workspace: str) -> bool:
        """Whether the bot answers in this guild / workspace ("" is a DM or the console: always)."""
        if not workspace or not self.has_allowlist(platform):
            return True
        return workspace in self._allowed[platform]

    def allowlisted(self, platform: str, workspace: str) -> bool:
        """Listed by name in the allowlist (an empty allowlist lists nothing)."""
        return bool(workspace) and workspace in self._allowed.get(platform, set())

    # rights

    def is_listed_admin(self, platform: str, author: Author) -> bool:
        """Named as an admin in the settings (by user id, or on Discord by role id)."""
        if author.id in self._user_ids.get(platform, set()):
            return True
        return bool(self._role_ids.get(platform, set()).intersection(author.role_ids))

    def is_admin(self, platform: str, author: Author, workspace: str = "") -> bool:
        """An admin of this workspace: listed in the settings, or a platform admin where the bot is served."""
        if author.is_bot:
            return False
        if platform == "console":
            return True  # whoever runs the console owns the bot
        if self.is_listed_admin(platform, author):
            return True
        return author.platform_admin and bool(workspace) and self.serves(platform, workspace)

    def may_change_shared_model(self, platform: str, author: Author, workspace: str) -> bool:
        """Commands on the model every team shares: listed admins, or platform admins of an allowlisted place."""
        if author.is_bot:
            return False
        if platform == "console" or self.is_listed_admin(platform, author):
            return True
        return author.platform_admin and self.allowlisted(platform, workspace)

    def refusal(
        self, platform: str, author: Author, workspace: str, *, admin_only: bool, shared_model: bool
    ) -> Refusal | None:
        """Why ``author`` may not run such a command here, or None when they may."""
        if not self.serves(platform, workspace):
            return Refusal.NOT_ALLOWED_HERE
        if shared_model and not self.may_change_shared_model(platform, author, workspace):
            if author.platform_admin and not self.has_allowlist(platform):
                return Refusal.SHARED_NEEDS_ALLOWLIST
            return Refusal.NOT_ADMIN
        if admin_only and not self.is_admin(platform, author, workspace):
            return Refusal.NOT_ADMIN
        return None
