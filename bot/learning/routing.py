"""Which LoRA version answers in a conversation: the value of ``GenerationRequest.lora``.

In order: an open trial (``/finetune try``) in its channels; then ``finetune.version_routes``, the most specific
scope first (a thread before its channel, a channel before its workspace); else None, the engine's default (the
active version, set by ``Engine.use_lora``). A scope is a conversation key as ``str(ConversationKey)`` writes it
(``platform:workspace:channel[:thread]``, ``-`` for no workspace) or a prefix of one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from bot.domain import BASE_MODEL, ConversationKey

BASE_ROUTE = "base"  # in finetune.version_routes: the base model, whatever is active
_CHANNEL_REF = re.compile(r"<#([A-Za-z0-9_.-]+)(?:\|[^>]*)?>|#?([A-Za-z0-9_.-]+)")


class BadChannelList(ValueError):
    """``/finetune try`` was given something that names no channel."""


def scope_matches(scope: str, key: ConversationKey) -> bool:
    label = str(key)
    return label == scope or label.startswith(scope + ":")


def channel_scope(key: ConversationKey) -> str:
    """The channel a conversation is in, as a scope: a Slack channel's threads all match it."""
    return str(ConversationKey(key.platform, key.workspace, key.channel))


def parse_channels(text: str, where: ConversationKey) -> tuple[str, ...]:
    """Scopes for the channels listed in a command, in ``where``'s platform and workspace.

    Takes channel mentions as Discord and Slack send them (``<#123>``, ``<#C0123|general>``), ``#id`` or bare ids
    (console session names), separated by spaces or commas. Raises BadChannelList on anything else."""
    scopes: list[str] = []
    for word in filter(None, re.split(r"[\s,]+", text.strip())):
        match = _CHANNEL_REF.fullmatch(word)
        if match is None:
            raise BadChannelList(word)
        channel = match.group(1) or match.group(2)
        scope = channel_scope(ConversationKey(where.platform, where.workspace, channel))
        if scope not in scopes:
            scopes.append(scope)
    return tuple(scopes)


class LoraRoutes:
    def __init__(self, configured: Mapping[str, str] | None = None) -> None:
        # most specific first: a longer scope is a key, or a longer prefix, of the same conversations
        self._configured = sorted((configured or {}).items(), key=lambda item: -len(item[0]))
        self._ready: set[str] = set()  # configured versions the engine has loaded
        self._trial: tuple[str, tuple[str, ...]] | None = None

    @property
    def configured_versions(self) -> set[str]:
        return {version for _, version in self._configured if version != BASE_ROUTE}

    @property
    def ready_versions(self) -> set[str]:
        return set(self._ready)

    @property
    def trial(self) -> tuple[str, tuple[str, ...]] | None:
        """(version, scopes) of the trial served now, or None."""
        return self._trial

    def mark_ready(self, versions: Iterable[str]) -> None:
        """These configured versions are loaded in the engine: requests may name them."""
        self._ready.update(versions)

    def set_trial(self, version: str | None, scopes: Iterable[str] = ()) -> None:
        self._trial = (version, tuple(scopes)) if version is not None else None

    def lora_for(self, key: ConversationKey) -> str | None:
        """The version that serves ``key``: a name, BASE_MODEL, or None for the engine's default."""
        if self._trial is not None and any(scope_matches(s, key) for s in self._trial[1]):
            return self._trial[0]
        for scope, version in self._configured:
            if scope_matches(scope, key):
                if version == BASE_ROUTE:
                    return BASE_MODEL
                # a version that could not be loaded (logged at start) leaves its channels to the default
                return version if version in self._ready else None
        return None
