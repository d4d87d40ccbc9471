"""Discord: mentions, DMs and replies to the bot answered with streamed messages; slash commands from the core."""

from adapters.discord.adapter import DiscordAdapter

__all__ = ["DiscordAdapter"]
