"""A conversation's recent messages read from Slack, for commands that read a conversation (/summarize): a thread's
``conversations.replies`` (paged, the last ``limit`` kept), else the channel's ``conversations.history``. Needs the
channels:history, groups:history, im:history and mpim:history scopes (the manifest)."""

from __future__ import annotations

from typing import Any

from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.users import UserDirectory
from bot.domain import ConversationKey, QuotedMessage
from bot.ports import HistoryError

SCOPES = ("channels:history", "groups:history", "im:history", "mpim:history")  # manifest.yaml (tests compare)
PAGE = 200  # conversations.replies' largest page
MOST_PAGES = 10  # a longer thread is summarised from its last pages only
SKIPPED_SUBTYPES = frozenset({"channel_join", "channel_leave", "channel_topic", "channel_purpose", "bot_add"})


async def recent_messages(
    client: AsyncWebClient, users: UserDirectory, conversation: ConversationKey, limit: int, bot_user_id: str
) -> list[QuotedMessage]:
    """The thread's (or the channel's) last ``limit`` messages, oldest first, with the people's display names."""
    try:
        raw = (
            await _thread(client, conversation, limit)
            if conversation.thread
            else await _channel(client, conversation.channel, limit)
        )
    except SlackApiError as exc:
        raise HistoryError(f"channel {conversation.channel}: {exc.response.get('error')}") from exc
    except SlackClientError as exc:
        raise HistoryError(f"channel {conversation.channel}: {type(exc).__name__}") from exc
    said = [m for m in raw if m.get("subtype") not in SKIPPED_SUBTYPES and str(m.get("text") or "").strip()]
    return [await _quoted(users, message, bot_user_id) for message in said]


async def _thread(client: AsyncWebClient, conversation: ConversationKey, limit: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor = ""
    for _ in range(MOST_PAGES):
        response = await client.conversations_replies(
            channel=conversation.channel, ts=conversation.thread, limit=PAGE, cursor=cursor or None
        )
        found += list(response.get("messages") or [])
        cursor = str((response.get("response_metadata") or {}).get("next_cursor") or "")
        if not cursor:
            break
    return found[-limit:]


async def _channel(client: AsyncWebClient, channel: str, limit: int) -> list[dict[str, Any]]:
    response = await client.conversations_history(channel=channel, limit=limit)
    return list(reversed(list(response.get("messages") or [])))  # Slack gives the newest first


async def _quoted(users: UserDirectory, message: dict[str, Any], bot_user_id: str) -> QuotedMessage:
    user_id = str(message.get("user") or "")
    from_bot = bool(user_id == bot_user_id or (message.get("bot_id") and not user_id))
    name = (await users.get(user_id)).display_name if user_id else str(message.get("username") or "bot")
    return QuotedMessage(
        message_id=str(message.get("ts", "")), author_name=name, text=str(message["text"]), from_bot=from_bot
    )
