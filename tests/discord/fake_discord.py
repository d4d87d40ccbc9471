"""A loopback Discord: the REST routes the bot uses under /api/v10, and a gateway websocket. Real discord.py talks to it.

Everything the bot asks for is kept in ``requests`` (arrival time, method, path, JSON body, status), so tests measure
behaviour the way Discord would see it. ``fail(...)`` makes the next matching requests fail (a 429 with ``Via`` and
``retry_after``, a 500, a 403...). Tests act as users with ``post_message`` and ``run_command``, which dispatch
MESSAGE_CREATE and INTERACTION_CREATE through the gateway, as Discord does.

Pitfalls handled here (see shared/design/platforms.md): JSON content type exactly ``application/json``; members carry
``flags``; READY's ``resume_gateway_url`` is loopback; messages over 2000 characters get Discord's 50035 error.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import itertools
import json
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

API = "/api/v10"
MAX_CONTENT = 2000
MANAGE_GUILD = 1 << 5
BASE_PERMISSIONS = (
    (1 << 10) | (1 << 11) | (1 << 14) | (1 << 16)
)  # view channel, send, embed links, read history

_ids = itertools.count(1_300_000_000_000_000_000)


GUILD_REACTIONS_INTENT = 1 << 10
DM_REACTIONS_INTENT = 1 << 13


def snowflake() -> str:
    return str(next(_ids))


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000+00:00", time.gmtime())


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # exactly "application/json": discord.py parses JSON only then (aiohttp's json_response adds a charset)
    return web.Response(
        body=json.dumps(payload).encode(),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


@dataclass
class LoggedRequest:
    t: float  # time.monotonic() when it arrived
    method: str
    path: str
    body: Any
    status: int = 0


ENTRY = web.RequestKey("entry", LoggedRequest)


@dataclass
class Failure:
    method: str
    path: re.Pattern[str]
    status: int
    payload: dict[str, Any]
    headers: dict[str, str]
    times: int


@dataclass
class FakeUser:
    id: str
    username: str
    global_name: str | None = None
    bot: bool = False

    def payload(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "username": self.username,
            "global_name": self.global_name,
            "discriminator": "0",
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
        }


@dataclass
class FakeMember:
    user: FakeUser
    nick: str | None = None
    roles: list[str] = field(default_factory=list)

    def payload(self) -> dict[str, Any]:
        return {
            "user": self.user.payload(),
            "nick": self.nick,
            "roles": list(self.roles),
            "joined_at": "2024-01-01T00:00:00.000000+00:00",
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "avatar": None,
        }


class FakeDiscord:
    def __init__(self) -> None:
        self.app_id = snowflake()
        self.bot = FakeUser(snowflake(), "hanbot", bot=True)
        self.owner = FakeUser(snowflake(), "owner")
        self.guild_id = snowflake()
        self.admin_role = snowflake()
        self.helper_role = snowflake()  # no permissions; tests list it as an admin role in the settings
        self.channels: dict[str, dict[str, Any]] = {}
        self.members: dict[str, FakeMember] = {}
        self.messages: dict[str, dict[str, Any]] = {}
        self.files: dict[str, bytes] = {}  # attachment id → contents, served as Discord's CDN serves them
        self.requests: list[LoggedRequest] = []
        self.commands: list[dict[str, Any]] = []
        self.interaction_responses: dict[str, list[LoggedRequest]] = {}
        self._failures: list[Failure] = []
        self._sockets: list[web.WebSocketResponse] = []
        self._seq = 0
        self.intents = 0  # what the client's IDENTIFY asked for: reactions go out only with their intent
        self._identified = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.general = self.add_channel("general")
        self.random = self.add_channel("random")
        self.bot_member = self.add_member(self.bot)

    # the world

    def add_channel(self, name: str, *, thread_of: str | None = None) -> str:
        channel_id = snowflake()
        payload: dict[str, Any] = {
            "id": channel_id,
            "type": 0,
            "guild_id": self.guild_id,
            "name": name,
            "position": len(self.channels),
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
            "topic": None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "flags": 0,
        }
        if thread_of is not None:
            payload.update(
                type=11,
                parent_id=thread_of,
                owner_id=self.owner.id,
                member_count=2,
                message_count=0,
                thread_metadata={
                    "archived": False,
                    "auto_archive_duration": 1440,
                    "archive_timestamp": _now_iso(),
                    "locked": False,
                },
            )
        self.channels[channel_id] = payload
        return channel_id

    def add_member(
        self, user: FakeUser, *, nick: str | None = None, roles: list[str] | None = None
    ) -> FakeMember:
        member = FakeMember(user, nick, roles or [])
        self.members[user.id] = member
        return member

    def new_user(
        self, name: str, *, nick: str | None = None, roles: list[str] | None = None, bot: bool = False
    ) -> FakeUser:
        user = FakeUser(snowflake(), name.lower(), global_name=name, bot=bot)
        self.add_member(user, nick=nick, roles=roles)
        return user

    def guild_payload(self) -> dict[str, Any]:
        roles = [
            _role(self.guild_id, "@everyone", BASE_PERMISSIONS, 0),
            _role(self.admin_role, "Admins", BASE_PERMISSIONS | MANAGE_GUILD, 2),
            _role(self.helper_role, "Helpers", BASE_PERMISSIONS, 1),
        ]
        channels = [c for c in self.channels.values() if c["type"] != 11]
        threads = [c for c in self.channels.values() if c["type"] == 11]
        return {
            "id": self.guild_id,
            "name": "Test Guild",
            "icon": None,
            "owner_id": self.owner.id,
            "roles": roles,
            "emojis": [],
            "stickers": [],
            "features": [],
            "channels": channels,
            "threads": threads,
            "members": [m.payload() for m in self.members.values()],
            "member_count": len(self.members),
            "large": False,
            "unavailable": False,
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "preferred_locale": "ko",
            "system_channel_flags": 0,
            "afk_timeout": 300,
            "joined_at": "2024-01-01T00:00:00.000000+00:00",
        }

    # the request log, seen as Discord sees it

    def log(self, method: str | None = None, pattern: str | None = None) -> list[LoggedRequest]:
        return [
            r
            for r in self.requests
            if (method is None or r.method == method) and (pattern is None or re.search(pattern, r.path))
        ]

    def bot_messages(self, channel_id: str) -> list[dict[str, Any]]:
        """The bot's messages in a channel, in posting order, as they are now (after every edit)."""
        return [
            m
            for m in self.messages.values()
            if m["channel_id"] == channel_id and m["author"]["id"] == self.bot.id
        ]

    def edits_of(self, message_id: str) -> list[LoggedRequest]:
        return [r for r in self.log("PATCH", rf"/messages/{message_id}$") if r.status == 200]

    def fail(
        self,
        method: str,
        path: str,
        *,
        status: int = 429,
        retry_after: float = 0.5,
        times: int = 1,
        via: bool = True,
        payload: dict[str, Any] | None = None,
    ) -> None:
        """Answer the next ``times`` requests matching ``method`` and the ``path`` regex with an error."""
        headers: dict[str, str] = {}
        if status == 429:
            payload = payload or {
                "message": "You are being rate limited.",
                "retry_after": retry_after,
                "global": False,
            }
            headers = {"Retry-After": str(retry_after), "X-RateLimit-Scope": "user"}
            if via:
                headers["Via"] = "1.1 google"
        payload = payload or {"message": "Internal Server Error", "code": 0}
        self._failures.append(Failure(method, re.compile(path), status, payload, headers, times))

    # acting as users

    def post_message(
        self,
        channel_id: str,
        author: FakeUser,
        content: str,
        *,
        mention_bot: bool = False,
        reply_to: str | None = None,
        dm: bool = False,
        files: Sequence[tuple[str, bytes, str | None]] = (),
    ) -> str:
        """A user writes in a channel: MESSAGE_CREATE goes out through the gateway. Returns the message id.

        ``files``: attachments as (file name, contents, content type or None), downloadable from the fake CDN."""
        if mention_bot:
            content = f"<@{self.bot.id}> {content}"
        message_id = snowflake()
        mentions = []
        if f"<@{self.bot.id}>" in content or f"<@!{self.bot.id}>" in content:
            mentions.append({**self.bot.payload(), "member": _member_fragment(self.bot_member)})
        payload = self._message_payload(message_id, channel_id, author, content, mentions=mentions)
        payload["attachments"] = [self._attachment_payload(*file) for file in files]
        if reply_to is not None:
            payload["type"] = 19
            payload["message_reference"] = {"message_id": reply_to, "channel_id": channel_id, "type": 0}
            payload["referenced_message"] = _as_referenced(self.messages.get(reply_to))
        if dm:
            payload.pop("guild_id")
            payload.pop("member")
        else:
            self.messages[message_id] = payload
        self.dispatch("MESSAGE_CREATE", payload)
        return message_id

    def react(
        self,
        channel_id: str,
        message_id: str,
        user: FakeUser,
        emoji: str,
        *,
        removed: bool = False,
        dm: bool = False,
    ) -> None:
        """A user adds (or removes) a unicode emoji reaction: MESSAGE_REACTION_ADD / _REMOVE through the gateway."""
        data: dict[str, Any] = {
            "user_id": user.id,
            "channel_id": channel_id,
            "message_id": message_id,
            "emoji": {"id": None, "name": emoji},
            "burst": False,
            "type": 0,
        }
        if not dm:
            data["guild_id"] = self.guild_id
        if not removed:
            message = self.messages.get(message_id)
            if message is not None:
                data["message_author_id"] = message["author"]["id"]
            if not dm:
                data["member"] = self.members[user.id].payload()
        if self.intents & (DM_REACTIONS_INTENT if dm else GUILD_REACTIONS_INTENT):
            self.dispatch("MESSAGE_REACTION_REMOVE" if removed else "MESSAGE_REACTION_ADD", data)

    def open_dm(self, user: FakeUser) -> str:
        channel_id = snowflake()
        self.channels[channel_id] = {
            "id": channel_id,
            "type": 1,
            "recipients": [user.payload()],
            "last_message_id": None,
        }
        return channel_id

    def run_command(
        self,
        name: str,
        user: FakeUser,
        channel_id: str,
        *,
        options: dict[str, str] | None = None,
        permissions: int | None = None,
        locale: str = "en-US",
    ) -> str:
        """A user runs a slash command: INTERACTION_CREATE through the gateway. Returns the interaction token."""
        member = self.members[user.id]
        if permissions is None:
            permissions = BASE_PERMISSIONS | (MANAGE_GUILD if self.admin_role in member.roles else 0)
        command = next(c for c in self.commands if c["name"] == name)
        interaction_id, token = snowflake(), f"token-{snowflake()}"
        data = {
            "id": interaction_id,
            "application_id": self.app_id,
            "type": 2,
            "token": token,
            "version": 1,
            "guild_id": self.guild_id,
            "channel_id": channel_id,
            "channel": self.channels[channel_id],
            "member": {**member.payload(), "permissions": str(permissions)},
            "app_permissions": str(BASE_PERMISSIONS),
            "locale": locale,
            "guild_locale": "ko",
            "entitlements": [],
            "authorizing_integration_owners": {"0": self.guild_id},
            "context": 0,
            "attachment_size_limit": 10 * 1024 * 1024,
            "data": {
                "id": command["id"],
                "name": name,
                "type": 1,
                "guild_id": self.guild_id,
                "options": [{"name": k, "type": 3, "value": v} for k, v in (options or {}).items()],
            },
        }
        self.interaction_responses[token] = []
        self.dispatch("INTERACTION_CREATE", data)
        return token

    async def wait_for(self, predicate: Any, within_s: float = 10.0) -> None:
        """Poll until ``predicate()`` is true (the bot works in its own tasks)."""
        deadline = time.monotonic() + within_s
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {within_s}s waiting for {predicate}")
            await asyncio.sleep(0.02)

    # server

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{API}"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/gateway", self._gateway)
        r = app.router
        r.add_get(f"{API}/users/@me", self._me)
        r.add_get(f"{API}/oauth2/applications/@me", self._application)
        r.add_get(f"{API}/gateway", self._gateway_info)
        r.add_put(f"{API}/applications/{{app}}/commands", self._sync_commands)
        r.add_put(f"{API}/applications/{{app}}/guilds/{{guild}}/commands", self._sync_commands)
        r.add_post(f"{API}/channels/{{channel}}/typing", self._no_content)
        r.add_post(f"{API}/channels/{{channel}}/messages", self._create_message)
        r.add_get(f"{API}/channels/{{channel}}/messages", self._channel_history)
        r.add_get(f"{API}/channels/{{channel}}/messages/{{message}}", self._get_message)
        r.add_patch(f"{API}/channels/{{channel}}/messages/{{message}}", self._edit_message)
        r.add_delete(f"{API}/channels/{{channel}}/messages/{{message}}", self._delete_message)
        r.add_post(f"{API}/interactions/{{id}}/{{token}}/callback", self._interaction_callback)
        r.add_post(f"{API}/webhooks/{{app}}/{{token}}", self._followup)
        r.add_patch(f"{API}/webhooks/{{app}}/{{token}}/messages/{{message}}", self._followup)
        r.add_get("/attachments/{id}/{name}", self._attachment)  # Discord's CDN
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def drop_gateway(self, *, code: int = 4000) -> None:
        """Close every gateway connection as Discord does when it drops one (4000: unknown error, reconnect)."""
        for ws in list(self._sockets):
            await ws.close(code=code)

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/gateway":
            return await handler(request)
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            try:
                if request.content_type == "multipart/form-data":
                    body = _multipart(raw, request.headers["Content-Type"])
                else:
                    body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
        entry = LoggedRequest(time.monotonic(), request.method, request.path, body)
        self.requests.append(entry)
        request[ENTRY] = entry
        failure = self._matching_failure(request.method, request.path)
        if failure is not None:
            response: web.StreamResponse = json_response(failure.payload, failure.status, failure.headers)
        else:
            response = await handler(request)
        entry.status = response.status
        return response

    def _matching_failure(self, method: str, path: str) -> Failure | None:
        for failure in self._failures:
            if failure.times > 0 and failure.method == method and failure.path.search(path):
                failure.times -= 1
                return failure
        return None

    async def _me(self, _: web.Request) -> web.Response:
        return json_response(self.bot.payload())

    async def _gateway_info(self, _: web.Request) -> web.Response:
        return json_response({"url": self.gateway_url})

    async def _no_content(self, _: web.Request) -> web.Response:
        return web.Response(status=204)

    async def _application(self, _: web.Request) -> web.Response:
        return json_response(
            {
                "id": self.app_id,
                "name": "hanbot",
                "icon": None,
                "description": "",
                "rpc_origins": [],
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": self.owner.payload(),
                "verify_key": "0" * 64,
                "team": None,
                "flags": 1 << 19,  # GATEWAY_MESSAGE_CONTENT_LIMITED
                "summary": "",
            }
        )

    async def _sync_commands(self, request: web.Request) -> web.Response:
        body = request[ENTRY].body or []
        self.commands = [
            {**c, "id": snowflake(), "application_id": self.app_id, "version": "1"} for c in body
        ]
        return json_response(self.commands)

    async def _create_message(self, request: web.Request) -> web.Response:
        channel_id = request.match_info["channel"]
        body = request[ENTRY].body or {}
        problem = _check_content(body.get("content"))
        if problem is not None:
            return problem
        message_id = snowflake()
        payload = self._message_payload(message_id, channel_id, self.bot, (body.get("content") or "").strip())
        payload["attachments"] = [self._attachment_payload(*file) for file in body.get("_files", [])]
        reference = body.get("message_reference")
        if reference:
            payload["type"] = 19
            payload["message_reference"] = {
                **reference,
                "message_id": str(reference.get("message_id")),
                "channel_id": channel_id,
            }
            payload["referenced_message"] = _as_referenced(
                self.messages.get(str(reference.get("message_id")))
            )
        self.messages[message_id] = payload
        return json_response(payload)

    def _attachment_payload(self, name: str, data: bytes, content_type: str | None) -> dict[str, Any]:
        attachment_id = snowflake()
        self.files[attachment_id] = data
        url = f"http://127.0.0.1:{self.port}/attachments/{attachment_id}/{name}"
        payload: dict[str, Any] = {
            "id": attachment_id,
            "filename": name,
            "size": len(data),
            "url": url,
            "proxy_url": url,
        }
        if content_type is not None:
            payload["content_type"] = content_type
        return payload

    async def _attachment(self, request: web.Request) -> web.Response:
        data = self.files.get(request.match_info["id"])
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="application/octet-stream")

    async def _channel_history(self, request: web.Request) -> web.Response:
        """A channel's messages, newest first, ``limit`` of them (at most 100), older than ``before`` if given."""
        channel_id = request.match_info["channel"]
        limit = min(int(request.query.get("limit", "50")), 100)
        before = int(request.query.get("before", "0") or 0)
        found = [
            m
            for m in self.messages.values()
            if m["channel_id"] == channel_id and (not before or int(m["id"]) < before)
        ]
        found.sort(key=lambda m: int(m["id"]), reverse=True)
        return json_response(found[:limit])

    async def _get_message(self, request: web.Request) -> web.Response:
        message = self.messages.get(request.match_info["message"])
        if message is None or message["channel_id"] != request.match_info["channel"]:
            return json_response({"message": "Unknown Message", "code": 10008}, 404)
        return json_response(message)

    async def _edit_message(self, request: web.Request) -> web.Response:
        message = self.messages.get(request.match_info["message"])
        if message is None:
            return json_response({"message": "Unknown Message", "code": 10008}, 404)
        body = request[ENTRY].body or {}
        if "content" in body:
            problem = _check_content(body["content"])
            if problem is not None:
                return problem
            message["content"] = body["content"].strip()  # Discord trims what it stores
        message["edited_timestamp"] = _now_iso()
        return json_response(message)

    async def _delete_message(self, request: web.Request) -> web.Response:
        self.messages.pop(request.match_info["message"], None)
        return web.Response(status=204)

    async def _interaction_callback(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        responses = self.interaction_responses.setdefault(token, [])
        if responses:  # a second acknowledgement
            return json_response(
                {"message": "Interaction has already been acknowledged.", "code": 40060}, 400
            )
        responses.append(request[ENTRY])
        body = request[ENTRY].body or {}
        flags = (body.get("data") or {}).get("flags", 0)
        return json_response(
            {
                "interaction": {
                    "id": request.match_info["id"],
                    "type": 2,
                    "response_message_id": None,
                    "response_message_loading": body.get("type") == 5,
                    "response_message_ephemeral": bool(flags & 64),
                }
            }
        )

    async def _followup(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        if token not in self.interaction_responses or not self.interaction_responses[token]:
            return json_response({"message": "Unknown Webhook", "code": 10015}, 404)
        self.interaction_responses[token].append(request[ENTRY])
        body = request[ENTRY].body or {}
        problem = _check_content(body.get("content"))
        if problem is not None:
            return problem
        payload = self._message_payload(snowflake(), "0", self.bot, body.get("content") or "")
        payload["flags"] = body.get("flags", 0)
        payload["webhook_id"] = self.app_id
        return json_response(payload)

    def _message_payload(
        self,
        message_id: str,
        channel_id: str,
        author: FakeUser,
        content: str,
        *,
        mentions: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": message_id,
            "channel_id": channel_id,
            "guild_id": self.guild_id,
            "author": author.payload(),
            "content": content,
            "timestamp": _now_iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": mentions or [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "type": 0,
            "flags": 0,
            "components": [],
        }
        member = self.members.get(author.id)
        if member is not None:
            payload["member"] = _member_fragment(member)
        return payload

    # gateway

    def dispatch(self, event: str, data: dict[str, Any]) -> None:
        for ws in list(self._sockets):
            self._seq += 1
            asyncio.get_running_loop().create_task(
                ws.send_str(json.dumps({"op": 0, "t": event, "s": self._seq, "d": data}))
            )

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}}))
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                break
            frame = json.loads(msg.data)
            if frame["op"] == 1:
                await ws.send_str(json.dumps({"op": 11}))
            elif frame["op"] == 2:
                self.intents = int(frame["d"].get("intents", 0))
                self._sockets.append(ws)
                await self._send_ready(ws)
                self._identified.set()
            elif frame["op"] == 6:  # RESUME after a dropped connection (missed events are not replayed here)
                self._sockets.append(ws)
                self._seq += 1
                await ws.send_str(json.dumps({"op": 0, "t": "RESUMED", "s": self._seq, "d": {}}))
        if ws in self._sockets:
            self._sockets.remove(ws)
        return ws

    async def _send_ready(self, ws: web.WebSocketResponse) -> None:
        ready = {
            "v": 10,
            "user": {**self.bot.payload(), "verified": True, "mfa_enabled": False, "flags": 0},
            "guilds": [{"id": self.guild_id, "unavailable": True}],
            "session_id": "fake-session",
            "resume_gateway_url": self.gateway_url,
            "shard": [0, 1],
            "application": {"id": self.app_id, "flags": 1 << 19},
            "private_channels": [],
            "relationships": [],
        }
        self._seq += 1
        await ws.send_str(json.dumps({"op": 0, "t": "READY", "s": self._seq, "d": ready}))
        self._seq += 1
        await ws.send_str(
            json.dumps({"op": 0, "t": "GUILD_CREATE", "s": self._seq, "d": self.guild_payload()})
        )


def _multipart(raw: bytes, content_type: str) -> dict[str, Any]:
    """A message with files, as discord.py sends it: ``payload_json`` (the message) and ``files[n]`` parts, which
    come back under ``_files`` as (file name, contents, content type)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + raw
    )
    body: dict[str, Any] = {"_files": []}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        if name == "payload_json":
            body.update(json.loads(data))
        elif isinstance(name, str) and name.startswith("files["):
            filename = part.get_filename() or "file"
            body["_files"].append((filename, data, part.get_content_type()))
    return body


def _role(role_id: str, name: str, permissions: int, position: int) -> dict[str, Any]:
    return {
        "id": role_id,
        "name": name,
        "permissions": str(permissions),
        "position": position,
        "color": 0,
        "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
        "hoist": False,
        "managed": False,
        "mentionable": False,
        "icon": None,
        "unicode_emoji": None,
        "flags": 0,
    }


def _as_referenced(message: dict[str, Any] | None) -> dict[str, Any] | None:
    """A message as Discord nests it in ``referenced_message``: one level, without its own referenced message."""
    if message is None:
        return None
    return {k: v for k, v in message.items() if k != "referenced_message"}


def _member_fragment(member: FakeMember) -> dict[str, Any]:
    payload = member.payload()
    payload.pop("user")
    return payload


def _check_content(content: Any) -> web.Response | None:
    if content is not None and len(content) > MAX_CONTENT:
        return json_response(
            {
                "message": "Invalid Form Body",
                "code": 50035,
                "errors": {
                    "content": {
                        "_errors": [
                            {"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer in length."}
                        ]
                    }
                },
            },
            400,
        )
    if content is not None and not content.strip():
        return json_response({"message": "Cannot send an empty message", "code": 50006}, 400)
    return None


def iter_bot_texts(fake: FakeDiscord, channel_id: str) -> Iterator[str]:
    for message in fake.bot_messages(channel_id):
        yield message["content"]
