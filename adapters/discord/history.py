"""A channel's recent messages, read through discord.py's channel history (``GET /channels/{id}/messages``), for
commands that read a conversation (/summarize). Needs the Read Message History permission (docs/discord.md)."""

from __future__ import annotations

import discord

from bot.domain import QuotedMessage
from bot.ports import HistoryError


async def recent_messages(client: discord.Client, channel_id: int, limit: int) -> list[QuotedMessage]:
    """The channel's last ``limit`` messages, oldest first."""
    me = client.user.id if client.user else None
    try:
        channel = client.get_channel(channel_id) or await client.fetch_channel(channel_id)
        if not isinstance(channel, discord.abc.Messageable):
            raise HistoryError(f"channel {channel_id} has no messages")
        found = [message async for message in channel.history(limit=limit)]  # newest first
    except (discord.HTTPException, discord.InvalidData) as exc:
        raise HistoryError(f"channel {channel_id}: {type(exc).__name__}") from exc
    return [
        QuotedMessage(
            message_id=str(message.id),
            author_name=message.author.display_name,
            text=message.content,
            from_bot=message.author.id == me,
        )
        for message in reversed(found)
    ]
