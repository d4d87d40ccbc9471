"""The reply chain above a Discord message (*Reply* → the message it answers → the one that answered...).

Nearest first, at most ``bot.quoting.QUOTE_DEPTH`` messages. The first is in the event (``referenced_message``) or
discord.py's cache; the ones above it are fetched (Read Message History). A deleted, unreadable or slow message ends
the chain where it is: the question is answered with what was found. Logs carry ids only.
"""

from __future__ import annotations

import asyncio
import logging

import discord

from adapters.discord.events import clean_text
from bot.domain import QuotedMessage
from bot.quoting import QUOTE_DEPTH

_log = logging.getLogger(__name__)

CHAIN_TIMEOUT_S = 3.0  # the whole walk; a reply does not wait longer for its context
_FETCH_ERRORS = (discord.HTTPException, asyncio.TimeoutError, OSError)


async def reply_chain(message: discord.Message, me: discord.abc.User) -> tuple[QuotedMessage, ...]:
    """The messages ``message`` replies to, nearest first, as people read them."""
    found: list[QuotedMessage] = []
    try:
        async with asyncio.timeout(CHAIN_TIMEOUT_S):
            await _walk(message, me, found)
    except TimeoutError:
        _log.info(
            "reply chain cut by time channel=%s message=%s found=%d",
            message.channel.id,
            message.id,
            len(found),
        )
    return tuple(found)


async def _walk(message: discord.Message, me: discord.abc.User, found: list[QuotedMessage]) -> None:
    current = message
    while len(found) < QUOTE_DEPTH:
        parent = await _referenced(current)
        if parent is None:
            return
        text = clean_text(parent, me)
        if text:  # an attachment alone has no words to show
            found.append(
                QuotedMessage(
                    message_id=str(parent.id),
                    author_name=parent.author.display_name,
                    text=text,
                    from_bot=parent.author.id == me.id,
                )
            )
        current = parent


async def _referenced(message: discord.Message) -> discord.Message | None:
    reference = message.reference
    if reference is None or reference.message_id is None:
        return None
    known = reference.resolved or reference.cached_message
    if isinstance(known, discord.Message):
        return known
    if isinstance(known, discord.DeletedReferencedMessage) or reference.channel_id != message.channel.id:
        return None
    try:
        return await message.channel.fetch_message(reference.message_id)
    except _FETCH_ERRORS as exc:
        _log.info(
            "reply chain ends channel=%s message=%s: %s",
            message.channel.id,
            reference.message_id,
            type(exc).__name__,
        )
        return None
