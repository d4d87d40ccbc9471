"""Posting a message with a file into a conversation (the end of a fine-tune run): ``files_upload_v2`` (Slack's
``files.getUploadURLExternal``, the upload, ``files.completeUploadExternal``), which needs the ``files:write`` scope;
without a file, ``chat.postMessage``. In a thread when the conversation is one."""

from __future__ import annotations

import logging
from pathlib import Path

from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient

from bot.domain import ConversationKey

_log = logging.getLogger(__name__)

SCOPE = "files:write"  # in adapters/slack/manifest.yaml (tests/slack/test_manifest.py checks it)


async def post_file(
    client: AsyncWebClient, conversation: ConversationKey, text: str, path: Path | None
) -> bool:
    """True when Slack took the message (and the file)."""
    thread = conversation.thread or None
    try:
        if path is None:
            await client.chat_postMessage(channel=conversation.channel, thread_ts=thread, text=text)
        else:
            await client.files_upload_v2(
                channel=conversation.channel,
                thread_ts=thread,
                file=str(path),
                filename=path.name,
                title=path.name,
                initial_comment=text,
            )
    except (SlackApiError, SlackClientError, OSError) as exc:
        error = exc.response.get("error") if isinstance(exc, SlackApiError) else type(exc).__name__
        _log.warning("could not post in channel=%s: %s", conversation.channel, error)
        return False
    return True
