"""The Discord adapter: a discord.py client whose messages and slash commands go to the core.

``start`` logs in, publishes the slash commands, connects to the gateway and returns once the bot is ready; the
connection then runs in a background task until ``stop``. Each message for the bot gets a ``DiscordReplySink`` and
goes to the core's handler; every sink shares one ``ChannelPacer``, so the edit budget is counted per channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import discord
from discord import app_commands

from adapters.api_metrics import api_trace
from adapters.discord.commands import build_tree, sync_tree
from adapters.discord.events import to_incoming, to_reaction
from adapters.discord.files import read_attachments
from adapters.discord.history import recent_messages
from adapters.discord.pacing import ChannelPacer
from adapters.discord.replies import reply_chain
from adapters.discord.sink import MESSAGE_LIMIT, DiscordReplySink
from bot.commands import CommandRegistry
from bot.domain import ConversationKey, QuotedMessage
from bot.errors import ConfigError
from bot.metrics import Metrics, NullMetrics
from bot.ports import FeedbackRecorder, HistoryError, MessageHandler, ReplySink
from bot.settings import Settings
from bot.texts import Lang
from bot.textsplit import split_message

_log = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0


def intents() -> discord.Intents:
    """Guilds (the channel cache), guild and DM messages, message content (privileged: enable it in the
    developer portal, see docs/discord.md), and guild and DM reactions (👍/👎 on the bot's replies)."""
    wanted = discord.Intents.none()
    wanted.guilds = True
    wanted.guild_messages = True
    wanted.dm_messages = True
    wanted.message_content = True
    wanted.guild_reactions = True
    wanted.dm_reactions = True
    return wanted


class _Client(discord.Client):
    def __init__(self, adapter: DiscordAdapter, **options: Any) -> None:
        super().__init__(**options)
        self._adapter = adapter

    async def setup_hook(self) -> None:
        await self._adapter._setup()

    async def on_message(self, message: discord.Message) -> None:
        await self._adapter._on_message(message)

    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        await self._adapter._on_reaction(payload, added=True)

    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        await self._adapter._on_reaction(payload, added=False)


class DiscordAdapter:
    name = "discord"

    def __init__(
        self,
        settings: Settings,
        feedback: FeedbackRecorder | None = None,
        *,
        guild_ready_timeout: float = 2.0,
        metrics: Metrics | None = None,
    ) -> None:
        """``feedback``: where 👍/👎 on the bot's replies are recorded (``bot.feedback.FeedbackBook``); without it they
        are ignored. The adapter has no store: the core stores every turn.

        ``guild_ready_timeout``: how long discord.py waits for guilds after READY (tests shorten it).
        """
        if settings.discord_token is None or not settings.discord_token.get_secret_value():
            raise ConfigError(
                "DISCORD_TOKEN is not set: create a bot in the Discord developer portal and export its token as "
                "DISCORD_TOKEN (see docs/discord.md)"
            )
        self._settings = settings
        self._token = settings.discord_token.get_secret_value()
        self._pacer = ChannelPacer(settings.discord.edit_interval_s)
        self._guild_ready_timeout = guild_ready_timeout
        self._metrics = metrics or NullMetrics()
        self._client: _Client | None = None
        self._tree: app_commands.CommandTree | None = None
        self._handler: MessageHandler | None = None
        self._connection: asyncio.Task[None] | None = None
        self._replies: set[asyncio.Task[Any]] = set()
        self._feedback = feedback

    @property
    def client(self) -> discord.Client:
        if self._client is None:
            raise RuntimeError("the Discord adapter is not started")
        return self._client

    async def start(self, on_message: MessageHandler, commands: CommandRegistry) -> None:
        self._handler = on_message
        client = _Client(
            self,
            intents=intents(),
            allowed_mentions=discord.AllowedMentions.none(),  # model output never pings anyone
            chunk_guilds_at_startup=False,
            guild_ready_timeout=self._guild_ready_timeout,
            http_trace=api_trace(self._metrics, "discord"),
        )
        self._client = client
        self._tree = build_tree(client, commands, self._settings.discord, history=self)
        try:
            await client.login(self._token)
        except discord.LoginFailure as exc:
            await client.close()
            raise ConfigError(
                f"Discord refused DISCORD_TOKEN ({exc}): check the token in the developer portal"
            ) from None
        self._connection = asyncio.create_task(self._connect(client), name="discord-gateway")
        await self._wait_ready(client, self._connection)
        _log.info(
            "discord ready as user=%s guilds=%d", client.user.id if client.user else "-", len(client.guilds)
        )

    async def stop(self) -> None:
        """Let replies in progress finish (a few seconds), then disconnect."""
        if self._replies:
            _, late = await asyncio.wait(set(self._replies), timeout=STOP_GRACE_S)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=STOP_GRACE_S)
        if self._client is not None:
            await self._client.close()
        if self._connection is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._connection, timeout=STOP_GRACE_S)
        _log.info("discord stopped")

    async def recent_messages(self, conversation: ConversationKey, limit: int) -> list[QuotedMessage]:
        """The channel's (a thread is a channel) last ``limit`` messages, oldest first (bot.ports.ConversationHistory)."""
        if self._client is None:
            raise HistoryError("not connected")
        return await recent_messages(self._client, int(conversation.channel), limit)

    async def sink_for(
        self, conversation: ConversationKey, *, author_id: str, message_id: str | None, lang: Lang
    ) -> ReplySink | None:
        """A reply into a stored conversation (after a restart), as a reply to ``message_id`` when there is one."""
        channel = await self._channel(conversation)
        if channel is None:
            return None
        channel_id = int(conversation.channel)
        reply_to = None
        if message_id and message_id.isdigit() and hasattr(channel, "get_partial_message"):
            reply_to = channel.get_partial_message(int(message_id))
        return DiscordReplySink(
            channel, channel_id=channel_id, pacer=self._pacer, lang=lang, reply_to=reply_to
        )

    async def post_file(self, conversation: ConversationKey, text: str, path: Path | None = None) -> bool:
        """A message in the conversation's channel (the end of a fine-tune run), the file attached to its first
        piece."""
        channel = await self._channel(conversation)
        if channel is None:
            return False
        pieces = split_message(text, MESSAGE_LIMIT) or [""]
        try:
            for n, piece in enumerate(pieces):
                if n == 0 and path is not None:
                    await channel.send(content=piece, file=discord.File(path, filename=path.name))
                else:
                    await channel.send(content=piece)
        except (discord.HTTPException, OSError) as exc:
            _log.warning("could not post in channel=%s: %s", conversation.channel, type(exc).__name__)
            return False
        return True

    async def _channel(self, conversation: ConversationKey) -> discord.abc.Messageable | None:
        client = self._client
        if client is None or not conversation.channel.isdigit():
            return None
        channel_id = int(conversation.channel)
        channel = client.get_channel(channel_id)
        if channel is None:
            try:
                channel = await client.fetch_channel(channel_id)
            except (discord.HTTPException, discord.InvalidData) as exc:
                _log.warning("channel %s unreachable: %s", channel_id, type(exc).__name__)
                return None
        return channel if isinstance(channel, discord.abc.Messageable) else None

    async def connected(self) -> bool:
        """Whether the gateway connection is up and the bot ready (false while discord.py reconnects)."""
        client = self._client
        if client is None or client.is_closed() or not client.is_ready():
            return False
        return client.ws is not None and client.ws.open

    async def wait_closed(self) -> None:
        """Wait until the gateway connection ends (stopped, or failed for good)."""
        if self._connection is not None:
            await asyncio.shield(self._connection)

    # internals

    async def _setup(self) -> None:
        if self._tree is not None:
            await sync_tree(self._tree, self._settings.discord)

    async def _connect(self, client: discord.Client) -> None:
        try:
            await client.connect(reconnect=True)
        except discord.PrivilegedIntentsRequired:
            _log.error(
                "Discord refused the message content intent: enable 'Message Content Intent' for the bot in the "
                "developer portal (Bot tab), see docs/discord.md"
            )
            raise
        except Exception:
            _log.exception("the Discord gateway connection ended")
            raise

    async def _wait_ready(self, client: discord.Client, connection: asyncio.Task[None]) -> None:
        ready = asyncio.create_task(client.wait_until_ready())
        done, _ = await asyncio.wait(
            {ready, connection}, timeout=READY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        if ready in done:
            return
        ready.cancel()
        await client.close()
        if connection in done and connection.exception() is not None:
            raise ConfigError(
                f"could not connect to Discord: {connection.exception()}"
            ) from connection.exception()
        raise ConfigError(f"Discord did not get ready within {READY_TIMEOUT_S:.0f}s")

    async def _on_reaction(self, payload: discord.RawReactionActionEvent, *, added: bool) -> None:
        client, feedback = self._client, self._feedback
        if client is None or client.user is None or feedback is None:
            return
        reaction = to_reaction(payload, client.user, added=added)
        if reaction is None:
            return
        try:
            await feedback.take(reaction)
        except Exception:
            _log.exception(
                "reaction failed channel=%s message=%s user=%s",
                payload.channel_id,
                payload.message_id,
                payload.user_id,
            )

    async def _on_message(self, message: discord.Message) -> None:
        client, handler = self._client, self._handler
        if client is None or client.user is None or handler is None:
            return
        incoming = to_incoming(message, client.user)
        if incoming is None:
            return
        if message.reference is not None:
            incoming = replace(incoming, quoted=await reply_chain(message, client.user))
        if message.attachments:
            files = await read_attachments(message.attachments, self._settings.chat.max_file_bytes)
            incoming = replace(incoming, files=files)
        sink = DiscordReplySink(
            message.channel,
            channel_id=message.channel.id,
            pacer=self._pacer,
            lang=incoming.lang,  # detected once: the chat service reads the same
            reply_to=message,
        )
        task = asyncio.current_task()
        if task is not None:
            self._replies.add(task)
        try:
            await handler(incoming, sink)
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.exception("reply failed channel=%s message=%s", message.channel.id, message.id)
        finally:
            if task is not None:
                self._replies.discard(task)
