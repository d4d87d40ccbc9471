"""Slack message events → what the core needs: is this new user text, which conversation, where the reply goes.

- A DM (``message`` with ``channel_type: im``): the DM channel is the conversation; the reply goes where the user
  wrote (top level, or the thread they wrote in).
- A mention (``app_mention``): answered in a thread; that thread (``thread_ts``, or the mention's own ``ts`` when it
  starts one) is the conversation.
- A reply in such a thread (``message`` in a channel, with ``thread_ts``): continues that conversation when the bot
  already takes part in it (the adapter checks the store).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bot.domain import Author, ConversationKey, IncomingMessage
from bot.feedback import THUMBS_DOWN, THUMBS_UP, Reaction

PLATFORM = "slack"

# Subtypes that still are a person's new text. Everything else (message_changed, message_deleted, channel_join,
# bot_message, ...) is ignored.
USER_TEXT_SUBTYPES = frozenset({"", "file_share", "thread_broadcast"})

_THUMBS = {"+1": THUMBS_UP, "thumbsup": THUMBS_UP, "-1": THUMBS_DOWN, "thumbsdown": THUMBS_DOWN}

_LINK = re.compile(r"<([^<>|]+)(?:\|([^<>]*))?>")


@dataclass(frozen=True)
class ReplyTarget:
    """Where a reply goes: ``thread_ts`` None means a top-level message (a DM)."""

    workspace: str
    channel: str
    thread_ts: str | None
    user_id: str  # whom the reply answers (native streams outside DMs need it)


@dataclass(frozen=True)
class SlackMessage:
    """One piece of new user text, placed: its conversation and where the answer goes."""

    conversation: ConversationKey
    target: ReplyTarget
    message_id: str  # f"{channel}:{ts}": the same for a mention delivered as app_mention and as message
    user_id: str
    text: str
    is_direct: bool
    files: tuple[dict[str, Any], ...] = ()  # Slack's file objects (file_share), read by adapters.slack.files

    def incoming(self, author: Author) -> IncomingMessage:
        return IncomingMessage(
            platform=PLATFORM,
            conversation=self.conversation,
            message_id=self.message_id,
            author=author,
            text=self.text,
            is_direct=self.is_direct,
            reply_to=self.target.thread_ts,
        )


def is_user_text(event: dict[str, Any], bot_user_id: str) -> bool:
    """New text written by a person (not the bot itself, not another bot, not an edit or a join)."""
    if str(event.get("subtype") or "") not in USER_TEXT_SUBTYPES:
        return False
    if event.get("bot_id") or event.get("bot_profile"):
        return False
    user = event.get("user")
    return bool(user) and user != bot_user_id and bool(event.get("channel")) and bool(event.get("ts"))


def workspace_of(body: dict[str, Any], event: dict[str, Any]) -> str:
    return str(body.get("team_id") or event.get("team") or "")


def direct_message(body: dict[str, Any], event: dict[str, Any], bot_user_id: str) -> SlackMessage:
    """A DM: the DM channel is the conversation."""
    workspace = workspace_of(body, event)
    channel = str(event["channel"])
    thread_ts = event.get("thread_ts")
    return SlackMessage(
        conversation=ConversationKey(PLATFORM, workspace, channel),
        target=ReplyTarget(workspace, channel, str(thread_ts) if thread_ts else None, str(event["user"])),
        message_id=post_id(channel, str(event["ts"])),
        user_id=str(event["user"]),
        text=clean_text(str(event.get("text") or ""), bot_user_id),
        is_direct=True,
        files=shared_files(event),
    )


def thread_message(body: dict[str, Any], event: dict[str, Any], bot_user_id: str) -> SlackMessage:
    """A mention, or a reply in a thread: the thread is the conversation (a mention outside one starts it)."""
    workspace = workspace_of(body, event)
    channel = str(event["channel"])
    thread = str(event.get("thread_ts") or event["ts"])
    return SlackMessage(
        conversation=ConversationKey(PLATFORM, workspace, channel, thread),
        target=ReplyTarget(workspace, channel, thread, str(event["user"])),
        message_id=post_id(channel, str(event["ts"])),
        user_id=str(event["user"]),
        text=clean_text(str(event.get("text") or ""), bot_user_id),
        is_direct=False,
        files=shared_files(event),
    )


def post_id(channel: str, ts: str) -> str:
    """A Slack message's id for the store: ``ts`` is unique only within its channel."""
    return f"{channel}:{ts}"


def to_reaction(body: dict[str, Any], event: dict[str, Any], bot_user_id: str) -> Reaction | None:
    """A ``reaction_added`` / ``reaction_removed`` of :+1: / :-1: (any skin tone) by someone else on one of the
    bot's messages, or None for any other reaction."""
    value = _THUMBS.get(str(event.get("reaction") or "").split("::")[0])
    item = event.get("item") or {}
    user = str(event.get("user") or "")
    if value is None or item.get("type") != "message" or not user or user == bot_user_id:
        return None
    if event.get("item_user") and event.get("item_user") != bot_user_id:
        return None
    return Reaction(
        platform=PLATFORM,
        workspace=workspace_of(body, event),
        post_id=post_id(str(item.get("channel")), str(item.get("ts"))),
        user_id=user,
        value=value,
        added=event.get("type") == "reaction_added",
    )


def shared_files(event: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    return tuple(f for f in event.get("files") or () if isinstance(f, dict))


def is_thread_reply(event: dict[str, Any]) -> bool:
    thread_ts = event.get("thread_ts")
    return bool(thread_ts) and thread_ts != event.get("ts")


def mentions(text: str, user_id: str) -> bool:
    return f"<@{user_id}>" in text or f"<@{user_id}|" in text


def clean_text(text: str, bot_user_id: str) -> str:
    """Slack's markup to plain text: the bot's mention removed, links and mentions readable, entities decoded."""
    if bot_user_id:
        text = re.sub(rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>", "", text)
    text = _LINK.sub(_readable_link, text)
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return re.sub(r"[ \t]{2,}", " ", text).strip()


def _readable_link(match: re.Match[str]) -> str:
    target, label = match.group(1), match.group(2)
    if target.startswith("@"):  # a user mention: <@U123> or <@U123|name>
        return f"@{label or target[1:]}"
    if target.startswith("#"):  # a channel: <#C123|general>
        return f"#{label or target[1:]}"
    if target.startswith("!"):  # <!here>, <!channel>, <!subteam^S123|@team>
        return label or f"@{target[1:].split('^')[0]}"
    if label and label != target:
        return f"{label} ({target})"
    return target
