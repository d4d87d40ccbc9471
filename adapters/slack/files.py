"""Slack files shared with a message (``file_share``) → ``SharedFile``: text files within the size limit are
downloaded from ``url_private`` with the bot token (the ``files:read`` scope) and read (``bot.files``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import aiohttp

from bot.domain import SharedFile
from bot.files import decode_text, is_image, worth_reading

_log = logging.getLogger(__name__)

SCOPE = "files:read"  # asked for in manifest.yaml (tests/slack/test_manifest.py)
DOWNLOAD_TIMEOUT_S = 30.0


async def read_files(
    session: aiohttp.ClientSession, token: str, files: Sequence[dict[str, Any]], limit: int
) -> tuple[SharedFile, ...]:
    return tuple([await _read(session, token, file, limit) for file in files])


async def _read(session: aiohttp.ClientSession, token: str, file: dict[str, Any], limit: int) -> SharedFile:
    name = str(file.get("name") or file.get("title") or file.get("id") or "file")
    mimetype, size = str(file.get("mimetype") or ""), int(file.get("size") or 0)
    if is_image(name, mimetype):
        return SharedFile(name, size, image=True)
    url = file.get("url_private_download") or file.get("url_private")
    if not url or not worth_reading(name, mimetype, size, limit):
        return SharedFile(name, size)
    try:
        async with session.get(
            str(url),
            headers={"Authorization": f"Bearer {token}"},
            timeout=aiohttp.ClientTimeout(total=DOWNLOAD_TIMEOUT_S),
            allow_redirects=False,  # without files:read Slack redirects to a login page
        ) as response:
            if response.status != 200:
                _log.warning("could not download file=%s status=%d", file.get("id"), response.status)
                return SharedFile(name, size)
            data = await response.content.read(limit + 1)
    except (aiohttp.ClientError, TimeoutError) as exc:
        _log.warning("could not download file=%s: %s", file.get("id"), type(exc).__name__)
        return SharedFile(name, size)
    return SharedFile(name, size, text=decode_text(data) if len(data) <= limit else None)
