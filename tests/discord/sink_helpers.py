"""Small predicates over the fake's state, for ``FakeDiscord.wait_for``."""

from __future__ import annotations

from collections.abc import Callable

from tests.discord.fake_discord import FakeDiscord


def reply_done(fake: FakeDiscord, channel_id: str, text: str) -> Callable[[], bool]:
    """True once the bot's messages in the channel read ``text`` (and the streaming marker is gone)."""

    def check() -> bool:
        return "".join(m["content"] for m in fake.bot_messages(channel_id)) == text

    check.__qualname__ = f"reply_done({channel_id}, {text[:30]!r})"
    return check
