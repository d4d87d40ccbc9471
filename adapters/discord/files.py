"""Discord attachments → ``SharedFile``: text files within the size limit are downloaded and read (``bot.files``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import discord

from adapters.discord.sink import WRITE_ERRORS
from bot.domain import SharedFile
from bot.files import decode_text, is_image, worth_reading

_log = logging.getLogger(__name__)


async def read_attachments(attachments: Sequence[discord.Attachment], limit: int) -> tuple[SharedFile, ...]:
    return tuple([await _read(attachment, limit) for attachment in attachments])


async def _read(attachment: discord.Attachment, limit: int) -> SharedFile:
    mimetype = attachment.content_type or ""
    name, size = attachment.filename, attachment.size
    if is_image(name, mimetype):
        return SharedFile(name, size, image=True)
    if not worth_reading(name, mimetype, size, limit):
        return SharedFile(name, size)
    try:
        data = await attachment.read()
    except (*WRITE_ERRORS, discord.DiscordException) as exc:
        _log.warning("could not download attachment=%s size=%d: %s", attachment.id, size, type(exc).__name__)
        return SharedFile(name, size)
    return SharedFile(name, size, text=decode_text(data) if len(data) <= limit else None)
