"""SlackAdapter: Slack events ⇄ the core, on slack_bolt's AsyncApp.

Socket Mode by default (an app-level token; no public URL needed), or HTTP (the signing secret; an aiohttp server on
``slack.http_host:http_port`` answering at ``slack.http_path``, plus ``GET /healthz``). Every event is acknowledged at
once and answered in a task; ``stop()`` waits a moment for replies in progress, then cancels them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.api_metrics import api_trace
from adapters.slack.client import build_web_client, ensure_rate_limit_retries
from adapters.slack.commands import SlashCommands
from adapters.slack.dedupe import DeliveryDedupe
from adapters.slack.events import (
    ReplyTarget,
    SlackMessage,
    direct_message,
    is_thread_reply,
    is_user_text,
    mentions,
    thread_message,
    to_reaction,
)
from adapters.slack.files import read_files
from adapters.slack.history import recent_messages
from adapters.slack.native import NativeSupport
from adapters.slack.pacing import UpdatePacer
from adapters.slack.sink import SlackReplySink
from adapters.slack.uploads import post_file
from adapters.slack.users import UserDirectory
from bot.commands import CommandRegistry
from bot.domain import ConversationKey, QuotedMessage, SharedFile
from bot.errors import ConfigError
from bot.metrics import Metrics, NullMetrics
from bot.ports import ConversationPresence, DeliveryLog, FeedbackRecorder, MessageHandler, ReplySink
from bot.settings import Settings
from bot.texts import Lang

_log = logging.getLogger(__name__)

STOP_GRACE_S = 10.0

# The events the adapter listens to, as the app manifest subscribes to them (a ``message`` listener gets
# message.im, message.channels and message.groups), and the bot scope each one needs (tests/slack/test_manifest.py).
BOT_EVENTS = {
    "app_mention": "app_mentions:read",
    "message.im": "im:history",
    "message.channels": "channels:history",
    "message.groups": "groups:history",
    "reaction_added": "reactions:read",
    "reaction_removed": "reactions:read",
}


class SlackAdapter:
    name = "slack"

    def __init__(
        self,
        settings: Settings,
        *,
        deliveries: DeliveryLog,
        presence: ConversationPresence,
        feedback: FeedbackRecorder,
        client: AsyncWebClient | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """``deliveries``: the delivery ids taken (exactly once across retries and processes); ``presence``: whether
        the bot is in a thread already; ``feedback``: where 👍/👎 on its replies go. The core stores every turn."""
        self._settings = settings.slack
        self._presence = presence
        self._app_token, self._signing_secret = _check_tokens(settings)
        if client is None:
            token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else ""
            client = build_web_client(token, base_url=self._settings.api_base_url)
        ensure_rate_limit_retries(client)
        self._client = client
        self._metrics = metrics or NullMetrics()
        self._session: aiohttp.ClientSession | None = None  # ours, with the API-call trace
        self._users = UserDirectory(client)
        self._dedupe = DeliveryDedupe(deliveries)
        self._feedback = feedback
        self._max_file_bytes = settings.chat.max_file_bytes
        self._pacer = UpdatePacer(
            min_interval_s=self._settings.update_interval_s,
            budget_per_min=self._settings.update_budget_per_min,
        )
        self._native = NativeSupport(enabled=self._settings.native_streaming)
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_message: MessageHandler | None = None
        self._bot_user_id = ""
        self._socket: AsyncSocketModeHandler | None = None
        self._runner: web.AppRunner | None = None

    @property
    def client(self) -> AsyncWebClient:
        return self._client

    @property
    def http_port(self) -> int | None:
        """The port the HTTP server listens on (useful with ``http_port = 0``); None in Socket Mode."""
        if self._runner is None or not self._runner.addresses:
            return None
        return int(self._runner.addresses[0][1])

    async def start(self, on_message: MessageHandler, commands: CommandRegistry) -> None:
        """Connect (Socket Mode) or listen (HTTP), and return; events are then answered until ``stop()``."""
        self._on_message = on_message
        if self._client.session is None:
            self._session = aiohttp.ClientSession(trace_configs=[api_trace(self._metrics, "slack")])
            self._client.session = self._session
        try:
            self._bot_user_id = await self._who_am_i()
            app = self._build_app(commands)
            if self._settings.mode == "socket":
                await self._check_app_token()
                self._socket = AsyncSocketModeHandler(app, app_token=self._app_token, web_client=self._client)
                await self._socket.connect_async()
                _log.info("slack connected in socket mode bot_user=%s", self._bot_user_id)
            else:
                await self._serve_http(app)
        except BaseException:
            await self._close_session()
            raise

    async def stop(self) -> None:
        if self._socket is not None:
            await self._socket.close_async()
            self._socket = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self._drain()
        await self._close_session()
        _log.info("slack adapter stopped")

    async def recent_messages(self, conversation: ConversationKey, limit: int) -> list[QuotedMessage]:
        """The thread's (or the channel's) last ``limit`` messages, oldest first (bot.ports.ConversationHistory)."""
        return await recent_messages(self._client, self._users, conversation, limit, self._bot_user_id)

    async def sink_for(
        self, conversation: ConversationKey, *, author_id: str, message_id: str | None, lang: Lang
    ) -> ReplySink | None:
        """A reply into a stored conversation (after a restart): its thread, or the DM."""
        target = ReplyTarget(
            conversation.workspace, conversation.channel, conversation.thread or None, author_id
        )
        return SlackReplySink(self._client, target, pacer=self._pacer, native=self._native, lang=lang)

    async def post_file(self, conversation: ConversationKey, text: str, path: Path | None = None) -> bool:
        """A message in the conversation (its thread, or the channel), with the file uploaded to it."""
        return await post_file(self._client, conversation, text, path)

    async def connected(self) -> bool:
        """Socket Mode: the websocket is up (false while it reconnects); HTTP: the server listens."""
        if self._socket is not None:
            return bool(await self._socket.client.is_connected())
        return self._runner is not None

    # setup

    async def _close_session(self) -> None:
        if self._session is not None:
            self._client.session = None
            await self._session.close()
            self._session = None

    async def _who_am_i(self) -> str:
        """The bot's own user id (to ignore its own messages and strip its mention); fails early on a bad token."""
        try:
            response = await self._client.auth_test()
        except SlackApiError as exc:
            raise ConfigError(
                f"Slack refused the bot token (auth.test: {exc.response.get('error')}): check SLACK_BOT_TOKEN"
            ) from None
        except (SlackClientError, OSError) as exc:
            raise ConfigError(
                f"could not reach Slack to check SLACK_BOT_TOKEN (auth.test: {type(exc).__name__}); "
                "check the network or slack.api_base_url"
            ) from None
        _log.info("slack auth ok team=%s bot_user=%s", response.get("team_id"), response.get("user_id"))
        return str(response.get("user_id") or "")

    async def _check_app_token(self) -> None:
        """Socket Mode's client retries a refused token forever: ask once first, and fail with a clear error."""
        try:
            await self._client.apps_connections_open(app_token=self._app_token)
        except SlackApiError as exc:
            raise ConfigError(
                f"Slack refused the app-level token (apps.connections.open: {exc.response.get('error')}): "
                "check SLACK_APP_TOKEN and its connections:write scope"
            ) from None

    def _build_app(self, commands: CommandRegistry) -> AsyncApp:
        http = self._settings.mode == "http"
        app = AsyncApp(
            name="hanbot",
            client=self._client,
            signing_secret=self._signing_secret or None,
            request_verification_enabled=http,
            logger=logging.getLogger("slack_bolt"),
        )
        app.middleware(self._dedupe.middleware)
        for event, listener in self.listeners().items():
            app.event(event)(listener)
        SlashCommands(commands, self._users, self._spawn, history=self).register(app)
        return app

    def listeners(self) -> dict[str, Callable[[dict[str, Any], dict[str, Any]], Awaitable[None]]]:
        """The Events API event types the adapter listens to (``BOT_EVENTS`` names their subscriptions)."""
        return {
            "app_mention": self.on_app_mention,
            "message": self.on_message_event,
            "reaction_added": self.on_reaction,
            "reaction_removed": self.on_reaction,
        }

    async def _serve_http(self, app: AsyncApp) -> None:
        s = self._settings
        web_app = app.web_app(path=s.http_path, port=s.http_port)
        web_app.router.add_get("/healthz", _healthz)
        self._runner = web.AppRunner(web_app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, s.http_host, s.http_port)
        await site.start()
        _log.info("slack listening in http mode on %s:%s%s", s.http_host, self.http_port, s.http_path)

    # events (Bolt listeners: acknowledged by Bolt at once, the reply runs in a task)

    async def on_app_mention(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        if is_user_text(event, self._bot_user_id):
            await self._take(thread_message(body, event, self._bot_user_id))

    async def on_message_event(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        if not is_user_text(event, self._bot_user_id):
            return
        if event.get("channel_type") == "im":
            await self._take(direct_message(body, event, self._bot_user_id))
        elif is_thread_reply(event):
            message = thread_message(body, event, self._bot_user_id)
            if mentions(str(event.get("text") or ""), self._bot_user_id) or await self._takes_part(message):
                await self._take(message)

    async def _read_files(self, message: SlackMessage) -> tuple[SharedFile, ...]:
        session = self._client.session
        if session is None:  # start() gives the client one
            return ()
        return await read_files(session, self._client.token or "", message.files, self._max_file_bytes)

    async def on_reaction(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        """👍/👎 on one of the bot's replies: feedback (``bot.feedback``); every other reaction is ignored."""
        reaction = to_reaction(body, event, self._bot_user_id)
        if reaction is None:
            return
        try:
            await self._feedback.take(reaction)
        except Exception:
            _log.exception("reaction failed post=%s user=%s", reaction.post_id, reaction.user_id)

    async def _takes_part(self, message: SlackMessage) -> bool:
        """Whether the bot answers in this thread already (a conversation with turns in the store)."""
        return await self._presence.has_turns(message.conversation)

    async def _take(self, message: SlackMessage) -> None:
        if not await self._dedupe.first_time_message(message.message_id):
            _log.debug("message %s already taken", message.message_id)
            return
        self._spawn(self._answer(message), f"slack-reply-{message.message_id}")

    async def _answer(self, message: SlackMessage) -> None:
        assert self._on_message is not None, "start() sets the handler"
        try:
            user = await self._users.get(message.user_id)
            incoming = message.incoming(user.author())
            if message.files:
                incoming = replace(incoming, files=await self._read_files(message))
            sink = SlackReplySink(
                self._client,
                message.target,
                pacer=self._pacer,
                native=self._native,
                lang=incoming.lang,  # detected once: the chat service reads the same
            )
            await self._on_message(incoming, sink)
        except Exception:
            _log.exception(
                "slack reply failed conversation=%s message=%s", message.conversation, message.message_id
            )

    # tasks

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=STOP_GRACE_S)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=STOP_GRACE_S)
            _log.info("slack stop cancelled %d replies in progress", len(pending))


async def _healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


def _check_tokens(settings: Settings) -> tuple[str, str]:
    """The app token (Socket Mode) and the signing secret (HTTP), or a ConfigError that says what is missing."""
    mode = settings.slack.mode
    if settings.slack_bot_token is None:
        raise ConfigError("Slack needs SLACK_BOT_TOKEN (the bot token, xoxb-…)")
    app_token = settings.slack_app_token.get_secret_value() if settings.slack_app_token else ""
    secret = settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret else ""
    if mode == "socket" and not app_token.startswith("xapp-"):
        raise ConfigError(
            "Slack Socket Mode needs SLACK_APP_TOKEN (an app-level token, xapp-…, with connections:write); "
            "or set HANBOT_SLACK__MODE=http and SLACK_SIGNING_SECRET"
        )
    if mode == "http" and not secret:
        raise ConfigError("Slack HTTP mode needs SLACK_SIGNING_SECRET (Basic Information → App Credentials)")
    return app_token, secret
