"""A fake Slack on 127.0.0.1: the Web API methods the bot calls, a Socket Mode websocket, and response URLs.

It behaves like Slack where the bot depends on it: ``auth.test`` names the bot, ``chat.update`` rejects text over
4,000 characters (``msg_too_long``), streams are started/appended/stopped, ``assistant.threads.setStatus`` can be
refused (an app that is not an AI app), and chosen ``chat.update`` calls answer 429 with ``Retry-After``. Every call is
logged (without tokens) for the tests to read. A token containing "revoked" is refused (``invalid_auth``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import WSMsgType, web

BOT_USER = "UBOT"
TEAM = "T1"
UPDATE_LIMIT = 4000

USERS: dict[str, dict[str, Any]] = {
    "UALICE": {"name": "alice", "profile": {"display_name": "Alice"}, "locale": "en-US"},
    "UMINSU": {"name": "minsu", "profile": {"display_name": "민수"}, "locale": "ko-KR"},
    "UADMIN": {"name": "ada", "profile": {"display_name": "Ada"}},  # listed in the settings
    "UOWNER": {"name": "olga", "profile": {"display_name": "Olga"}, "is_owner": True},
    BOT_USER: {"name": "hanbot", "is_bot": True, "profile": {"display_name": "hanbot"}},
}


@dataclass
class Call:
    method: str
    args: dict[str, Any]
    status: int = 200


@dataclass
class Message:
    channel: str
    ts: str
    thread_ts: str | None
    text: str
    streamed: bool = False
    stopped: bool = False
    edits: int = 0


@dataclass
class Upload:
    """A file the bot uploaded (``files.getUploadURLExternal``, its bytes, ``files.completeUploadExternal``)."""

    file_id: str
    filename: str
    length: int
    data: bytes = b""
    channel: str | None = None
    thread_ts: str | None = None
    comment: str = ""
    title: str = ""
    completed: bool = False


@dataclass
class FakeSlack:
    status_allowed: bool = True  # assistant.threads.setStatus; False: "not an AI app"
    rate_limited_updates: int = 0  # the next N chat.update calls answer 429
    failing_updates: int = 0  # the next N chat.update calls answer 503 (Slack having a bad minute)
    retry_after_s: int = 1
    calls: list[Call] = field(default_factory=list)
    messages: dict[str, Message] = field(default_factory=dict)
    responses: list[dict[str, Any]] = field(default_factory=list)  # posts to response URLs
    socket_acks: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # file id → contents (url_private)
    uploads: list[Upload] = field(default_factory=list)  # files the bot shared (files_upload_v2), in order
    downloads: list[str] = field(default_factory=list)  # file ids downloaded with the bot token
    said: list[dict[str, Any]] = field(default_factory=list)  # people's messages, served by conversations.*
    port: int = 0

    def __post_init__(self) -> None:
        self._counter = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._sockets: list[web.WebSocketResponse] = []
        self._socket_ready = asyncio.Event()

    # lifecycle

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/api/{method}", self._api)
        app.router.add_post("/response/{name}", self._response_url)
        app.router.add_get("/socket", self._socket)
        app.router.add_get("/files/{id}/{name}", self._file_download)
        app.router.add_post("/upload/{id}", self._file_upload)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        for ws in self._sockets:
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    def response_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/response/{name}"

    # what the tests read

    def called(self, method: str, *, ok_only: bool = False) -> list[Call]:
        return [c for c in self.calls if c.method == method and (c.status == 200 or not ok_only)]

    def replies(self, channel: str, thread_ts: str | None = None) -> list[Message]:
        """The bot's messages in a channel's top level (``thread_ts`` None) or in one thread, oldest first."""
        found = [m for m in self.messages.values() if m.channel == channel and m.thread_ts == thread_ts]
        return sorted(found, key=lambda m: float(m.ts))

    async def wait_until(self, condition: Callable[[], bool], within_s: float = 10.0) -> None:
        deadline = time.monotonic() + within_s
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; calls so far: {[c.method for c in self.calls]}")
            await asyncio.sleep(0.02)

    def say(self, channel: str, user: str, text: str, *, thread_ts: str | None = None) -> str:
        """Someone writes in a channel (or a thread): only the history methods see it. Returns its ts."""
        n = next(self._counter)
        ts = f"{1_700_000_000 + n}.{n:06d}"
        message = {"type": "message", "user": user, "text": text, "ts": ts}
        if thread_ts:
            message["thread_ts"] = thread_ts
        self.said.append({**message, "channel": channel})
        return ts

    def _conversations_history(self, args: dict[str, Any]) -> dict[str, Any]:
        """A channel's top-level messages, newest first (the bot's own included)."""
        channel = str(args.get("channel"))
        found = [m for m in self._channel_messages(channel) if m.get("thread_ts") in (None, m["ts"])]
        found.sort(key=lambda m: float(m["ts"]), reverse=True)
        return {"ok": True, "messages": found[: int(args.get("limit") or 100)], "has_more": False}

    def _conversations_replies(self, args: dict[str, Any]) -> dict[str, Any]:
        """A thread, its parent first then its replies oldest first, ``limit`` per page with a cursor."""
        channel, ts = str(args.get("channel")), str(args.get("ts"))
        found = [m for m in self._channel_messages(channel) if ts in (m["ts"], m.get("thread_ts"))]
        if not found:
            return {"ok": False, "error": "thread_not_found"}
        found.sort(key=lambda m: float(m["ts"]))
        start, limit = int(args.get("cursor") or 0), int(args.get("limit") or 100)
        page = found[start : start + limit]
        more = start + limit < len(found)
        return {
            "ok": True,
            "messages": page,
            "has_more": more,
            "response_metadata": {"next_cursor": str(start + limit) if more else ""},
        }

    def _channel_messages(self, channel: str) -> list[dict[str, Any]]:
        people = [
            {k: v for k, v in m.items() if k != "channel"} for m in self.said if m["channel"] == channel
        ]
        bot = [
            {"type": "message", "user": BOT_USER, "bot_id": "BBOT", "text": m.text, "ts": m.ts}
            | ({"thread_ts": m.thread_ts} if m.thread_ts else {})
            for m in self.messages.values()
            if m.channel == channel
        ]
        return people + bot

    def add_file(self, name: str, data: bytes, mimetype: str) -> dict[str, Any]:
        """A file a user shares: its file object as a ``file_share`` message event carries it."""
        file_id = f"F{next(self._counter):08d}"
        self.files[file_id] = data
        url = f"http://127.0.0.1:{self.port}/files/{file_id}/{name}"
        return {
            "id": file_id,
            "name": name,
            "title": name,
            "mimetype": mimetype,
            "filetype": name.rsplit(".", 1)[-1],
            "size": len(data),
            "url_private": url,
            "url_private_download": url + "?download=1",
        }

    async def _file_download(self, request: web.Request) -> web.Response:
        """``url_private``: only with the bot token; without it Slack redirects to its login page."""
        if request.headers.get("Authorization") != "Bearer xoxb-test-token":
            return web.Response(status=302, headers={"Location": "https://slack.com/signin"})
        data = self.files.get(request.match_info["id"])
        if data is None:
            return web.Response(status=404)
        self.downloads.append(request.match_info["id"])
        return web.Response(body=data, content_type="application/octet-stream")

    # files the bot shares: as Slack does, an upload URL per file, the bytes POSTed to it, then one call that shares
    # the files in a channel (or thread) with an initial comment

    def _files_getUploadURLExternal(self, args: dict[str, Any]) -> dict[str, Any]:
        filename, length = str(args.get("filename") or ""), int(args.get("length") or 0)
        if not filename or length <= 0:
            return {"ok": False, "error": "invalid_arguments"}
        file_id = f"F{next(self._counter):08d}"
        self.uploads.append(Upload(file_id, filename, length))
        return {
            "ok": True,
            "upload_url": f"http://127.0.0.1:{self.port}/upload/{file_id}",
            "file_id": file_id,
        }

    async def _file_upload(self, request: web.Request) -> web.Response:
        upload = next((u for u in self.uploads if u.file_id == request.match_info["id"]), None)
        if upload is None:
            return web.Response(status=404)
        upload.data = await request.read()
        if len(upload.data) != upload.length:
            return web.Response(status=400, text="length mismatch")
        return web.Response(text=f"OK - {len(upload.data)}")

    def _files_completeUploadExternal(self, args: dict[str, Any]) -> dict[str, Any]:
        listed = args.get("files") or "[]"
        files = json.loads(listed) if isinstance(listed, str) else listed
        done = []
        for entry in files:
            upload = next((u for u in self.uploads if u.file_id == entry.get("id")), None)
            if upload is None or len(upload.data) != upload.length:
                return {"ok": False, "error": "file_not_found"}
            upload.channel = args.get("channel_id") or None
            upload.thread_ts = args.get("thread_ts") or None
            upload.comment = str(args.get("initial_comment") or "")
            upload.title = str(entry.get("title") or upload.filename)
            upload.completed = True
            done.append({"id": upload.file_id, "title": upload.title, "name": upload.filename})
        return {"ok": True, "files": done}

    # Socket Mode

    async def push(self, payload: dict[str, Any], *, kind: str = "events_api") -> str:
        """Send an envelope over the connected socket; returns its envelope_id."""
        await asyncio.wait_for(self._socket_ready.wait(), 10)
        envelope_id = f"env-{next(self._counter)}"
        envelope = {
            "envelope_id": envelope_id,
            "type": kind,
            "accepts_response_payload": kind != "events_api",
            "retry_attempt": 0,
            "retry_reason": "",
            "payload": payload,
        }
        await self._sockets[-1].send_str(json.dumps(envelope))
        return envelope_id

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._sockets.append(ws)
        await ws.send_str(
            json.dumps({"type": "hello", "num_connections": 1, "connection_info": {"app_id": "A1"}})
        )
        self._socket_ready.set()
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                self.socket_acks.append(json.loads(msg.data))
        return ws

    # response URLs (slash commands)

    async def _response_url(self, request: web.Request) -> web.Response:
        body = await request.json()
        body["_name"] = request.match_info["name"]
        self.responses.append(body)
        return web.Response(text="ok")

    # the Web API

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args = await _arguments(request)
        token = str(args.pop("token", "") or request.headers.get("Authorization", ""))
        if "revoked" in token:
            self.calls.append(Call(method, args))
            return web.json_response({"ok": False, "error": "invalid_auth"})
        if method == "chat.update" and self.rate_limited_updates > 0:
            self.rate_limited_updates -= 1
            self.calls.append(Call(method, args, 429))
            return web.json_response(
                {"ok": False, "error": "ratelimited"},
                status=429,
                headers={"Retry-After": str(self.retry_after_s)},
            )
        if method == "chat.update" and self.failing_updates > 0:
            self.failing_updates -= 1
            self.calls.append(Call(method, args, 503))
            return web.json_response({"ok": False, "error": "service_unavailable"}, status=503)
        self.calls.append(Call(method, args))
        handler = getattr(self, "_" + method.replace(".", "_"), None)
        result = handler(args) if handler else {"ok": False, "error": "unknown_method"}
        return web.json_response(result)

    def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "user_id": BOT_USER,
            "bot_id": "BBOT",
            "team_id": TEAM,
            "user": "hanbot",
            "team": "Team",
        }

    def _apps_connections_open(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": f"ws://127.0.0.1:{self.port}/socket"}

    def _users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        user = USERS.get(str(args.get("user")))
        if user is None:
            return {"ok": False, "error": "user_not_found"}
        return {"ok": True, "user": {"id": args["user"], "team_id": TEAM, **user}}

    def _assistant_threads_setStatus(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True} if self.status_allowed else {"ok": False, "error": "not_allowed_token_type"}

    def _chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self._new_message(args, str(args.get("text", "")))
        return {"ok": True, "channel": message.channel, "ts": message.ts, "message": {"text": message.text}}

    def _chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self.messages.get(str(args.get("ts")))
        if message is None or message.channel != args.get("channel"):
            return {"ok": False, "error": "message_not_found"}
        text = str(args.get("text", ""))
        if len(text) > UPDATE_LIMIT:
            return {"ok": False, "error": "msg_too_long"}
        message.text = text
        message.edits += 1
        return {"ok": True, "channel": message.channel, "ts": message.ts, "text": text}

    def _chat_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        found = self.messages.pop(str(args.get("ts")), None)
        return {"ok": True} if found else {"ok": False, "error": "message_not_found"}

    def _chat_startStream(self, args: dict[str, Any]) -> dict[str, Any]:
        if not args.get("thread_ts"):
            return {"ok": False, "error": "invalid_arguments"}
        if not str(args.get("channel", "")).startswith("D") and not args.get("recipient_user_id"):
            return {"ok": False, "error": "missing_recipient_user_id"}
        message = self._new_message(args, _streamed_text(args), streamed=True)
        return {"ok": True, "channel": message.channel, "ts": message.ts}

    def _chat_appendStream(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self.messages.get(str(args.get("ts")))
        if message is None or message.stopped:
            return {"ok": False, "error": "message_not_in_streaming_state"}
        message.text += _streamed_text(args)
        return {"ok": True, "channel": message.channel, "ts": message.ts}

    def _chat_stopStream(self, args: dict[str, Any]) -> dict[str, Any]:
        result = self._chat_appendStream(args)
        if result["ok"]:
            self.messages[str(args["ts"])].stopped = True
        return result

    def _new_message(self, args: dict[str, Any], text: str, *, streamed: bool = False) -> Message:
        n = next(self._counter)
        ts = f"{1_800_000_000 + n}.{n:06d}"
        thread_ts = args.get("thread_ts") or None
        message = Message(str(args.get("channel")), ts, thread_ts, text, streamed=streamed)
        self.messages[ts] = message
        return message


def _streamed_text(args: dict[str, Any]) -> str:
    text = str(args.get("markdown_text") or "")
    chunks = args.get("chunks") or []
    if isinstance(chunks, str):
        chunks = json.loads(chunks)
    return text + "".join(str(c.get("text", "")) for c in chunks if c.get("type") == "markdown_text")


async def _arguments(request: web.Request) -> dict[str, Any]:
    args: dict[str, Any] = dict(request.query)
    raw = await request.read()
    if not raw:
        return args
    if request.content_type == "application/json":
        args.update(json.loads(raw))
    else:
        args.update(dict(parse_qsl(raw.decode())))
    return args
