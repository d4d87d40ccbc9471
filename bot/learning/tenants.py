"""Tenants: which team a conversation belongs to, and which fine-tuned version (learning scope) serves and learns
from it.

A tenant is a Discord guild (``discord:GUILD_ID``) or a Slack workspace (``slack:TEAM_ID``). A Slack DM belongs to its
workspace (the conversation key carries the team id). A Discord DM belongs to no tenant, unless
``tenants.discord_dm_users`` maps its user to a guild. The console belongs to none.

Each tenant is served in one of three modes (``tenants.versions``, else ``tenants.default``):

- ``shared``: the one shared version (the learning scope ``SHARED``), trained on the conversations of every shared
  tenant and of conversations that belong to no tenant. This is the default: one version, as before tenants existed.
- ``own``: a version of its own (the learning scope is the tenant id), trained only on its conversations and on
  ``tenants.extra_datasets[tenant]``; served to it alone. Until it has one, it gets the base model.
- ``base``: the base model, and its conversations are never trained on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from bot.domain import BASE_MODEL, ConversationKey
from bot.learning.dataset import DatasetOptions
from bot.learning.routing import scope_matches
from bot.settings import Settings, TenantSettings

SHARED = "shared"  # the learning scope of the shared version (and of every row recorded before tenants)
Mode = Literal["shared", "own", "base"]
_PLATFORMS = ("discord", "slack")


@dataclass(frozen=True)
class TenantPolicy:
    settings: TenantSettings

    @classmethod
    def from_settings(cls, settings: Settings) -> TenantPolicy:
        return cls(settings.tenants)

    def tenant_of(self, key: ConversationKey, user_id: str | None = None) -> str | None:
        """The tenant a conversation belongs to (``user_id``: who speaks, for Discord DMs), or None."""
        if key.platform not in _PLATFORMS:
            return None
        if key.workspace:
            return f"{key.platform}:{key.workspace}"
        if key.platform == "discord" and user_id:
            guild = self.settings.discord_dm_users.get(user_id)
            return f"discord:{guild}" if guild else None
        return None

    def mode_of(self, tenant: str | None) -> Mode:
        """How a tenant is served; conversations of no tenant go with the shared version."""
        if tenant is None:
            return "shared"
        return self.settings.versions.get(tenant, self.settings.default)

    def scope_of(self, tenant: str | None) -> str | None:
        """The learning scope (whose versions serve it and learn from it): SHARED, the tenant id, or None (base)."""
        mode = self.mode_of(tenant)
        if mode == "base":
            return None
        return SHARED if mode == "shared" or tenant is None else tenant

    def scope_for(self, key: ConversationKey, user_id: str | None = None) -> str | None:
        return self.scope_of(self.tenant_of(key, user_id))

    def own_tenants(self, seen: Iterable[str] = ()) -> list[str]:
        """Tenants with a version of their own: those listed as ``own``, and with ``default = "own"`` every tenant
        in ``seen`` (the tenants with stored conversations) not listed otherwise."""
        listed = {t for t, mode in self.settings.versions.items() if mode == "own"}
        if self.settings.default == "own":
            listed |= {t for t in seen if t not in self.settings.versions}
        return sorted(listed)

    def extra_datasets(self, scope: str, shared: Iterable[str]) -> tuple[str, ...]:
        """The extra JSONL files of a scope's runs: ``finetune.extra_datasets`` for the shared version, the tenant's
        own list for an own version (never the shared files: they may hold other teams' text)."""
        if scope == SHARED:
            return tuple(shared)
        return tuple(self.settings.extra_datasets.get(scope, ()))


def scope_dataset_options(settings: Settings, scope: str, *, opted_out: Iterable[str] = ()) -> DatasetOptions:
    """The dataset rules of a run of ``scope``: only the conversations that scope learns from, and its extra files."""
    policy = TenantPolicy.from_settings(settings)
    options = DatasetOptions.from_settings(settings, opted_out=opted_out)

    def belongs(key: ConversationKey, first_speaker: str | None) -> bool:
        return policy.scope_for(key, first_speaker) == scope

    extra = policy.extra_datasets(scope, settings.finetune.extra_datasets)
    return replace(options, extra_datasets=tuple(Path(p) for p in extra), belongs=belongs)


class TenantRoutes:
    """What each team with its own version is served: its active version (None until it has one: the base model)
    and its open trial. The shared version's are the engine's default and ``LoraRoutes``."""

    def __init__(self) -> None:
        self._active: dict[str, str | None] = {}
        self._trials: dict[str, tuple[str, tuple[str, ...]]] = {}

    def active(self, scope: str) -> str | None:
        return self._active.get(scope)

    def set_active(self, scope: str, version: str | None) -> None:
        self._active[scope] = version

    def trial(self, scope: str) -> tuple[str, tuple[str, ...]] | None:
        return self._trials.get(scope)

    def set_trial(self, scope: str, version: str | None, scopes: Iterable[str] = ()) -> None:
        if version is None:
            self._trials.pop(scope, None)
        else:
            self._trials[scope] = (version, tuple(scopes))

    def names(self) -> set[str]:
        """Every version some team is served now (they must stay loadable in the engine)."""
        return {v for v in self._active.values() if v} | {t[0] for t in self._trials.values()}

    def lora_for(self, scope: str, key: ConversationKey) -> str:
        """The version a conversation of ``scope`` gets: its trial in the trial's channels, else its active version,
        else the base model (never the shared version: a team with its own version learns and answers alone)."""
        trial = self._trials.get(scope)
        if trial is not None and any(scope_matches(s, key) for s in trial[1]):
            return trial[0]
        return self._active.get(scope) or BASE_MODEL
