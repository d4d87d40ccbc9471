"""One exception tree. Each error carries the key of the sentence the user sees (bot.texts)."""

from __future__ import annotations


class BotError(Exception):
    """Base of every error the bot expects. ``user_text_key`` names a sentence in bot.texts."""

    user_text_key = "error.generic"


class ConfigError(BotError):
    """A setting is missing or wrong: raised at start, names the setting and what to do."""


class EngineError(BotError):
    user_text_key = "error.engine"


class QueueFull(EngineError):
    user_text_key = "error.queue_full"


class UserQueueFull(QueueFull):
    """One person has as many requests waiting as one person may."""

    user_text_key = "error.queue_user_full"


class ChannelQueueFull(QueueFull):
    """One channel has as many requests waiting as one channel may."""

    user_text_key = "error.queue_channel_full"


class EnginePaused(EngineError):
    user_text_key = "error.maintenance"


class GenerationTimeout(EngineError):
    user_text_key = "error.timeout"


class GenerationFailed(EngineError):
    user_text_key = "error.engine"


class GenerationCancelled(EngineError):
    user_text_key = "error.cancelled"


class EngineUnhealthy(EngineError):
    user_text_key = "error.engine"


class ModelLoadError(BotError):
    """The model could not be loaded. The message names the model and what to try."""

    user_text_key = "error.engine"


class PermissionDenied(BotError):
    user_text_key = "error.not_admin"
