"""Discord messages and interactions → the core's neutral types.

Which messages are for the bot: a mention in a guild channel or thread, any message in a DM, and a reply to one of the
bot's own messages. Never the bot's own messages, other bots' or webhooks'. Conversation key: the channel (a thread
and a DM are channels of their own).
"""

from __future__ import annotations

import re

import discord

from bot.domain import Author, ConversationKey, IncomingMessage
from bot.feedback import THUMBS_DOWN, THUMBS_UP, Reaction
from bot.texts import Lang

PLATFORM = "discord"
_CHAT_TYPES = (discord.MessageType.default, discord.MessageType.reply)
_THUMBS = {"\N{THUMBS UP SIGN}": THUMBS_UP, "\N{THUMBS DOWN SIGN}": THUMBS_DOWN}
_SKIN_TONES = re.compile("[\U0001f3fb-\U0001f3ff]")


def to_incoming(message: discord.Message, me: discord.abc.User) -> IncomingMessage | None:
    """The message as the core sees it, or None when the bot should not answer it."""
    if message.author.bot or message.webhook_id is not None or message.author.id == me.id:
        return None
    if message.type not in _CHAT_TYPES:
        return None
    is_direct = message.guild is None
    if not (is_direct or mentions_me(message, me) or replies_to_me(message, me)):
        return None
    return IncomingMessage(
        platform=PLATFORM,
        conversation=conversation_key(message.guild.id if message.guild else None, message.channel.id),
        message_id=str(message.id),
        author=author_of(message.author),
        text=clean_text(message, me),
        is_direct=is_direct,
        reply_to=str(message.reference.message_id)
        if message.reference and message.reference.message_id
        else None,
    )


def to_reaction(
    payload: discord.RawReactionActionEvent, me: discord.abc.User, *, added: bool
) -> Reaction | None:
    """A 👍/👎 (any skin tone) by someone else on one of the bot's messages, or None for any other reaction."""
    value = (
        _THUMBS.get(_SKIN_TONES.sub("", payload.emoji.name or ""))
        if payload.emoji.is_unicode_emoji()
        else None
    )
    if value is None or payload.user_id == me.id:
        return None
    author = payload.message_author_id  # Discord sends it with additions only
    if author is not None and author != me.id:
        return None
    return Reaction(
        platform=PLATFORM,
        workspace=str(payload.guild_id or ""),
        post_id=str(payload.message_id),
        user_id=str(payload.user_id),
        value=value,
        added=added,
    )


def mentions_me(message: discord.Message, me: discord.abc.User) -> bool:
    """A direct mention of the bot (not @everyone, not a reply ping: a reply is checked by ``replies_to_me``)."""
    return me.id in message.raw_mentions


def replies_to_me(message: discord.Message, me: discord.abc.User) -> bool:
    reference = message.reference
    if reference is None:
        return False
    replied = reference.resolved or reference.cached_message
    return isinstance(replied, discord.Message) and replied.author.id == me.id


def conversation_key(guild_id: int | None, channel_id: int) -> ConversationKey:
    return ConversationKey(platform=PLATFORM, workspace=str(guild_id or ""), channel=str(channel_id))


def author_of(user: discord.User | discord.Member, *, manage_guild: bool | None = None) -> Author:
    """Who wrote; ``manage_guild`` overrides the cached guild permissions (an interaction carries its own)."""
    if isinstance(user, discord.Member):
        admin = user.guild_permissions.manage_guild if manage_guild is None else manage_guild
        roles = tuple(str(role.id) for role in user.roles if not role.is_default())
    else:
        admin, roles = False, ()
    return Author(
        id=str(user.id),
        display_name=user.display_name,
        is_bot=user.bot,
        platform_admin=admin,
        role_ids=roles,
    )


def clean_text(message: discord.Message, me: discord.abc.User) -> str:
    """The text with the bot's mentions removed and other mentions shown as names, as people read them."""
    text = re.sub(rf"[ \t]*<@!?{me.id}>[ \t]*", " ", message.content)
    for user in message.mentions:
        if user.id != me.id:
            text = re.sub(rf"<@!?{user.id}>", f"@{user.display_name}", text)
    for role in message.role_mentions:
        text = text.replace(f"<@&{role.id}>", f"@{role.name}")
    for channel in message.channel_mentions:
        text = text.replace(f"<#{channel.id}>", f"#{getattr(channel, 'name', channel.id)}")
    return text.strip()


def lang_of_locale(locale: discord.Locale | None) -> Lang:
    return "ko" if locale == discord.Locale.korean else "en"
