"""The messages a user replies to, as context for the model.

When someone replies to a message the bot never stored (another person's message, or one from before a /reset), the
model sees it above the user's words, so "what does this mean?" has a *this*. Messages already in the conversation's
history are left out (they are there). Bounded: the nearest ``QUOTE_DEPTH`` messages of the chain, each cut at
``QUOTE_CHARS`` characters. The block is stored with the user's turn, so the history shows it again after a restart.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from bot.domain import QuotedMessage, Role
from bot.store.conversations import StoredMessage

QUOTE_DEPTH = 3  # messages of a reply chain, nearest first
QUOTE_CHARS = 500  # per quoted message


def quote_block(quoted: Sequence[QuotedMessage], history: Sequence[StoredMessage]) -> str | None:
    """The quoted messages the history lacks, oldest first, as a "> name: text" block; None when there are none."""
    fresh = [q for q in quoted[:QUOTE_DEPTH] if not _in_history(q, history)]
    if not fresh:
        return None
    return "\n".join(_render(q) for q in reversed(fresh))


def with_quote(quote: str | None, text: str) -> str:
    """A user turn's text with its quote block above it."""
    return f"{quote}\n{text}" if quote else text


def _in_history(quoted: QuotedMessage, history: Sequence[StoredMessage]) -> bool:
    if any(m.platform_message_id == quoted.message_id for m in history):
        return True
    if not quoted.from_bot:
        return False
    # the bot's messages are parts of stored replies (a long reply is split over several messages)
    said = _squeeze(quoted.text)
    return bool(said) and any(m.role is Role.ASSISTANT and said in _squeeze(m.content) for m in history)


def _render(quoted: QuotedMessage) -> str:
    text = quoted.text.strip()
    if len(text) > QUOTE_CHARS:
        text = text[:QUOTE_CHARS].rstrip() + "…"
    lines = f"{quoted.author_name}: {text}".splitlines()
    return "\n".join(f"> {line}" for line in lines)


def _squeeze(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()
