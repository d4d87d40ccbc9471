"""The bot as it runs: the real ChatService, commands and SlackAdapter (Bolt's AsyncApp over HTTP or Socket Mode),
on a SQLite database, with a ScriptedEngine; plus signed Slack requests to send it.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
from slack_sdk.signature import SignatureVerifier

from adapters.slack import SlackAdapter
from bot.app import announce_runs, build_commands, build_core, slack_adapter
from bot.chat import ChatService
from bot.domain import ConversationKey
from bot.learning.service import FinetuneService
from bot.metrics import Metrics
from bot.settings import Settings, load_settings
from bot.store.conversations import ConversationStore
from bot.store.db import create_db_engine, migrate
from tests.fakes import ScriptedEngine
from tests.slack.fake_slack import BOT_USER, TEAM, FakeSlack

SECRET = "test-signing-secret"
ENV = {
    "SLACK_BOT_TOKEN": "xoxb-test-token",
    "SLACK_APP_TOKEN": "xapp-test-token",
    "SLACK_SIGNING_SECRET": SECRET,
}


def make_settings(
    tmp_path: Path, fake: FakeSlack, *, overrides: dict[str, Any] | None = None, **slack: Any
) -> Settings:
    """``overrides``: other sections of the settings (model, finetune...)."""
    options = {
        "mode": "http",
        "http_host": "127.0.0.1",
        "http_port": 0,
        "api_base_url": fake.base_url,
        "update_interval_s": 0.2,
        "update_budget_per_min": 6000,
        "admin_user_ids": ["UADMIN"],
        **slack,
    }
    return load_settings(
        data_dir=tmp_path / "data", scheduler={"enabled": False}, slack=options, **(overrides or {})
    )


@dataclass
class SlackBot:
    settings: Settings
    fake: FakeSlack
    engine: ScriptedEngine = field(default_factory=ScriptedEngine)
    store: ConversationStore | None = None
    adapter: SlackAdapter | None = None
    learning: bool = False  # the whole core as bot.app builds it, the learning loop's commands included
    finetune: FinetuneService | None = None
    metrics: Metrics | None = None

    async def start(self) -> SlackBot:
        db = create_db_engine(self.settings.database_url)
        migrate(db)
        self.store = ConversationStore(db)
        core = None
        if self.learning:
            core = build_core(self.settings, engine=self.engine, store=self.store, metrics=self.metrics)
            chat, commands, self.finetune = core.chat, core.commands, core.finetune
            await self.finetune.restore()
        else:
            chat = ChatService(
                settings=self.settings, store=self.store, engine=self.engine, metrics=self.metrics
            )
            commands = build_commands(self.settings, self.store, self.engine, chat=chat)
        self.adapter = slack_adapter(self.settings, self.store, metrics=self.metrics)
        if core is not None:
            announce_runs(core, [self.adapter])  # as bot.app.serve does
        await self.adapter.start(chat.handle, commands)
        return self

    async def stop(self) -> None:
        if self.adapter is not None:
            await self.adapter.stop()
        if self.store is not None:
            self.store.engine.dispose()

    async def restart(self) -> None:
        """A new process on the same database: new store, chat service and adapter."""
        await self.stop()
        await self.start()

    @property
    def url(self) -> str:
        assert self.adapter is not None and self.adapter.http_port
        return f"http://127.0.0.1:{self.adapter.http_port}{self.settings.slack.http_path}"

    def history(self, key: ConversationKey) -> list[tuple[str, str]]:
        assert self.store is not None
        return [(m.role.value, m.content) for m in self.store.history(key)]

    async def post(
        self,
        body: bytes,
        content_type: str,
        *,
        timestamp: int | None = None,
        signature: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, str]:
        """POST ``body`` signed as Slack signs it (or with the given timestamp/signature); status and text back."""
        ts = str(int(time.time()) if timestamp is None else timestamp)
        sig = signature or SignatureVerifier(SECRET).generate_signature(timestamp=ts, body=body)
        all_headers = {
            "Content-Type": content_type,
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": sig,
            **(headers or {}),
        }
        timeout = aiohttp.ClientTimeout(total=3)  # Slack gives up after 3 s
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.post(self.url, data=body, headers=all_headers) as response:
                return response.status, await response.text()

    async def post_event(self, envelope: dict[str, Any], **kwargs: Any) -> tuple[int, str]:
        return await self.post(json.dumps(envelope).encode(), "application/json", **kwargs)

    async def post_command(self, form: dict[str, str], **kwargs: Any) -> tuple[int, str]:
        return await self.post(urlencode(form).encode(), "application/x-www-form-urlencoded", **kwargs)


# payloads, shaped as Slack sends them


def envelope(event: dict[str, Any], event_id: str) -> dict[str, Any]:
    return {
        "token": "legacy-verification-token",
        "team_id": TEAM,
        "api_app_id": "A1",
        "type": "event_callback",
        "event_id": event_id,
        "event_time": int(time.time()),
        "authorizations": [{"team_id": TEAM, "user_id": BOT_USER, "is_bot": True}],
        "event": {"event_ts": event.get("ts"), "team": TEAM, **event},
    }


def dm_event(text: str, ts: str, *, user: str = "UALICE", channel: str = "D1") -> dict[str, Any]:
    return {"type": "message", "channel_type": "im", "channel": channel, "user": user, "text": text, "ts": ts}


def mention_event(
    text: str, ts: str, *, user: str = "UALICE", channel: str = "C1", thread_ts: str | None = None
):
    event = {
        "type": "app_mention",
        "channel": channel,
        "user": user,
        "text": f"<@{BOT_USER}> {text}",
        "ts": ts,
    }
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


def channel_message(text: str, ts: str, *, thread_ts: str, user: str = "UALICE", channel: str = "C1"):
    return {
        "type": "message",
        "channel_type": "channel",
        "channel": channel,
        "user": user,
        "text": text,
        "ts": ts,
        "thread_ts": thread_ts,
    }


def command_form(
    fake: FakeSlack, command: str, *, user: str, channel: str = "D1", text: str = ""
) -> dict[str, str]:
    return {
        "token": "legacy-verification-token",
        "team_id": TEAM,
        "channel_id": channel,
        "user_id": user,
        "command": command,
        "text": text,
        "response_url": fake.response_url(f"{command.lstrip('/')}-{user}"),
        "trigger_id": f"trigger-{uuid.uuid4().hex}",  # one per invocation, as Slack gives
        "api_app_id": "A1",
    }


def reaction_event(
    reaction: str,
    channel: str,
    ts: str,
    *,
    user: str = "UALICE",
    removed: bool = False,
    item_user: str = BOT_USER,
) -> dict[str, Any]:
    """``reaction_added`` (or ``reaction_removed``) of ``reaction`` (Slack's name: "+1", "-1::skin-tone-3") on the
    message ``ts``; ``item_user`` wrote that message."""
    return {
        "type": "reaction_removed" if removed else "reaction_added",
        "user": user,
        "reaction": reaction,
        "item_user": item_user,
        "item": {"type": "message", "channel": channel, "ts": ts},
        "ts": f"{time.time():.6f}",
    }
