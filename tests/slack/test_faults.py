"""Faults, each named after what breaks, through the real Slack adapter (HTTP events or Socket Mode) and the real
chat service and store. Each test states what the user sees.

Elsewhere: platform 5xx/429 bursts and the gateway dropped mid-reply on Discord (tests/discord/test_faults.py); the
stuck engine turning /ready red (tests/ops/test_health.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from typing import Any

import pytest
from pydantic import SecretStr

from bot.app import readiness_checks
from bot.domain import ConversationKey, MessageStatus
from bot.errors import EngineUnhealthy, GenerationFailed
from bot.settings import EngineSettings, ModelSettings
from bot.texts import say
from inference.decoders import make_decoder
from inference.loading import load_model
from inference.local_engine import LocalEngine
from inference.remote_engine import EstimatingTokenizer, RemoteEngine
from tests.fakes import ScriptedEngine
from tests.inference.remote_server import FakeOpenAI, Reply
from tests.slack.fake_slack import TEAM
from tests.slack.harness import envelope, mention_event

INCOMPLETE = say("chat.incomplete", "en")


def thread_key(ts: str) -> ConversationKey:
    return ConversationKey("slack", TEAM, "C1", ts)


async def test_engine_raising_mid_reply__the_user_sees_the_partial_reply_marked_incomplete_and_one_sentence(
    start_bot, fake_slack
):
    engine = ScriptedEngine(
        reply="The first part arrives, then the engine breaks.",
        chunk_size=10,
        fail_after=2,
        error=GenerationFailed("CUDA error: an illegal memory access"),
    )
    bot = await start_bot(engine=engine, native_streaming=False)
    ts = "1700000100.000100"

    await bot.post_event(envelope(mention_event("tell me", ts), "EvF1"))
    await fake_slack.wait_until(lambda: len(fake_slack.replies("C1", ts)) == 2)

    shown = [m.text for m in fake_slack.replies("C1", ts)]
    assert shown[0].startswith("The first part arr") and INCOMPLETE in shown[0]
    assert shown[1] == say("error.engine", "en")
    turns = bot.store.history(thread_key(ts))
    assert [(t.role.value, t.status) for t in turns] == [
        ("user", MessageStatus.COMPLETE),
        ("assistant", MessageStatus.INCOMPLETE),
    ]
    assert "CUDA" not in "".join(shown)  # the engine's own words stay in the logs


async def test_remote_inference_server_restarted_mid_stream__partial_reply_marked_incomplete_then_answers_again(
    start_bot, fake_slack
):
    slow = Reply(chunks=("Hello", ", ", "this ", "reply ", "is ", "cut ", "short", "."), delay_s=0.3)
    server = await FakeOpenAI([slow]).start()
    engine = RemoteEngine(
        base_url=server.base_url,
        model="test-model",
        tokenizer=EstimatingTokenizer(2048),
        api_key=SecretStr("k"),
        max_retries=2,
    )
    restarted: FakeOpenAI | None = None
    try:
        bot = await start_bot(engine=engine, native_streaming=False)
        first, second = "1700000110.000100", "1700000111.000100"
        await bot.post_event(envelope(mention_event("tell me", first), "EvF2"))
        await fake_slack.wait_until(
            lambda: any("Hello" in t for t in _texts(fake_slack, first))
        )  # text is out

        await server.crash()  # the server dies mid-stream...
        restarted = await FakeOpenAI(
            [Reply(chunks=("Back", " again"))], port=server.port
        ).start()  # ...and up

        await fake_slack.wait_until(lambda: len(fake_slack.replies("C1", first)) == 2, within_s=20)
        shown = [m.text for m in fake_slack.replies("C1", first)]
        assert shown[0].startswith("Hello") and INCOMPLETE in shown[0]
        assert shown[1] == say("error.engine", "en")
        assert len(server.chat_requests) == 1  # a reply half shown is not silently started again
        assert bot.store.history(thread_key(first))[1].status == MessageStatus.INCOMPLETE

        await bot.post_event(envelope(mention_event("again?", second), "EvF3"))
        await fake_slack.wait_until(lambda: len(bot.history(thread_key(second))) == 2)
        assert [m.text for m in fake_slack.replies("C1", second)] == ["Back again"]
    finally:
        await engine.aclose()
        if restarted is not None:
            await restarted.stop()


async def test_platform_429_burst__the_reply_completes_once_after_the_retries(start_bot, fake_slack):
    fake_slack.rate_limited_updates = 4
    fake_slack.retry_after_s = 0
    reply = "A reply that is edited into place several times while it streams. " * 3
    bot = await start_bot(
        engine=ScriptedEngine(reply=reply, chunk_size=20, delay_s=0.1), native_streaming=False
    )
    ts = "1700000120.000100"

    await bot.post_event(envelope(mention_event("tell me", ts), "EvF4"))
    await fake_slack.wait_until(lambda: len(bot.history(thread_key(ts))) == 2, within_s=20)

    assert len([c for c in fake_slack.calls if c.status == 429]) == 4
    assert [m.text.strip() for m in fake_slack.replies("C1", ts)] == [reply.strip()]  # complete, once
    assert bot.history(thread_key(ts))[1] == ("assistant", reply)


async def test_platform_5xx_burst__the_reply_completes_once_with_the_edits_that_failed_made_later(
    start_bot, fake_slack
):
    fake_slack.failing_updates = 3
    reply = "A reply that is edited into place several times while it streams. " * 3
    bot = await start_bot(
        engine=ScriptedEngine(reply=reply, chunk_size=20, delay_s=0.25), native_streaming=False
    )
    ts = "1700000125.000100"

    await bot.post_event(envelope(mention_event("tell me", ts), "EvF4b"))
    await fake_slack.wait_until(lambda: len(bot.history(thread_key(ts))) == 2, within_s=20)

    assert len([c for c in fake_slack.calls if c.status == 503]) == 3
    assert [m.text.strip() for m in fake_slack.replies("C1", ts)] == [reply.strip()]  # complete, once
    assert bot.store.history(thread_key(ts))[1].status == MessageStatus.COMPLETE


async def test_socket_mode_websocket_dropped_mid_reply__the_reply_completes_once_and_a_redelivery_is_ignored(
    start_bot, fake_slack
):
    engine = ScriptedEngine(reply="Streaming on through a reconnect. " * 3, chunk_size=12, delay_s=0.15)
    bot = await start_bot(engine=engine, mode="socket", native_streaming=False)
    ts = "1700000130.000100"
    event = envelope(mention_event("tell me", ts), "EvF5")

    await fake_slack.push(event)
    await fake_slack.wait_until(lambda: len(engine.requests) == 1)
    opened = len(fake_slack.called("apps.connections.open"))
    for ws in list(fake_slack._sockets):  # Slack drops the connection mid-reply
        await ws.close()
    await fake_slack.wait_until(lambda: len(fake_slack.called("apps.connections.open")) > opened)
    await fake_slack.push(event)  # and delivers the event again on the new connection

    await fake_slack.wait_until(lambda: len(bot.history(thread_key(ts))) == 2, within_s=20)
    await asyncio.sleep(0.5)
    assert [m.text.strip() for m in fake_slack.replies("C1", ts)] == [engine.reply.strip()]  # type: ignore[union-attr]
    assert len(engine.requests) == 1


async def test_database_locked_longer_than_the_busy_timeout__slack_delivers_again_and_the_user_gets_one_answer(
    start_bot, fake_slack, monkeypatch
):
    """The event cannot be recorded, so the bot does not acknowledge it (HTTP 500): Slack delivers it again, and
    once the lock is gone it is answered, once."""
    monkeypatch.setattr("bot.store.db.SQLITE_BUSY_TIMEOUT_MS", 200)
    engine = ScriptedEngine(reply="answered after the lock")
    bot = await start_bot(engine=engine, native_streaming=False)
    ts = "1700000140.000100"
    event = envelope(mention_event("tell me", ts), "EvF6")
    with _locked(bot.settings.database_url.removeprefix("sqlite:///"), seconds=1.5):
        status, _ = await bot.post_event(event)
    assert status >= 500
    assert engine.requests == [] and fake_slack.replies("C1", ts) == []

    status, _ = await bot.post_event(
        event, headers={"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_error"}
    )
    assert status == 200
    await fake_slack.wait_until(lambda: len(bot.history(thread_key(ts))) == 2)
    status, _ = await bot.post_event(
        event, headers={"X-Slack-Retry-Num": "2", "X-Slack-Retry-Reason": "timeout"}
    )
    await asyncio.sleep(0.5)
    assert [m.text for m in fake_slack.replies("C1", ts)] == ["answered after the lock"]
    assert len(engine.requests) == 1


async def test_database_locked_longer_than_the_busy_timeout__nothing_is_answered_twice_and_the_bot_recovers(
    start_bot, fake_slack, monkeypatch
):
    monkeypatch.setattr("bot.store.db.SQLITE_BUSY_TIMEOUT_MS", 200)
    engine = ScriptedEngine(reply="answered")
    bot = await start_bot(engine=engine, native_streaming=False)
    locked_ts, later_ts = "1700000150.000100", "1700000151.000100"
    with _locked(bot.settings.database_url.removeprefix("sqlite:///"), seconds=1.5):
        await bot.post_event(envelope(mention_event("tell me", locked_ts), "EvF7"))
        await asyncio.sleep(1.0)
        assert engine.requests == []  # no model work before the message is stored

    await bot.post_event(envelope(mention_event("and now?", later_ts), "EvF8"))
    await fake_slack.wait_until(lambda: len(bot.history(thread_key(later_ts))) == 2)
    assert [m.text for m in fake_slack.replies("C1", later_ts)] == ["answered"]
    assert len(engine.requests) == 1


class _locked:
    """Another process holds the SQLite write lock for ``seconds``."""

    def __init__(self, path: str, seconds: float) -> None:
        self._path, self._seconds = path, seconds
        self._thread: threading.Thread | None = None
        self._held = threading.Event()

    def __enter__(self) -> None:
        def hold() -> None:
            conn = sqlite3.connect(self._path, isolation_level=None)
            conn.execute("BEGIN EXCLUSIVE")
            self._held.set()
            threading.Event().wait(self._seconds)
            conn.execute("ROLLBACK")
            conn.close()

        self._thread = threading.Thread(target=hold, daemon=True)
        self._thread.start()
        self._held.wait(5)

    def __exit__(self, *exc: object) -> None:
        assert self._thread is not None
        self._thread.join(10)


class _HangingDecoder:
    """The real decoder, except that ``step`` blocks until released: a GPU kernel that never returns."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.unblock = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def step(self) -> dict[int, int]:
        self.unblock.wait(60)
        return self._inner.step()


async def test_engine_hanging__the_user_sees_the_reply_so_far_marked_incomplete_and_the_timeout_sentence(
    start_bot, fake_slack, demo_model_dir, monkeypatch
):
    monkeypatch.setattr("inference.local_engine.STUCK_AFTER_S", 0.5)
    loaded = load_model(ModelSettings(name_or_path=str(demo_model_dir), dtype="float32", device_map=None))
    hanging: list[_HangingDecoder] = []

    def factory(model: Any, settings: EngineSettings) -> Any:
        hanging.append(_HangingDecoder(make_decoder(model, settings)))
        return hanging[-1]

    engine = LocalEngine(
        loaded.model, loaded.tokenizer, engine=EngineSettings(decoder="hf"), decoder_factory=factory
    )
    try:
        bot = await start_bot(engine=engine, native_streaming=False)
        bot.settings.generation.timeout_s = 1.5
        checks = {c.name: c for c in readiness_checks(bot.store, engine, [bot.adapter])}
        ts = "1700000160.000100"

        await bot.post_event(envelope(mention_event("What does /reset do?", ts), "EvF9"))
        await fake_slack.wait_until(lambda: say("error.timeout", "en") in _texts(fake_slack, ts), within_s=20)

        assert await checks["database"].run()
        with pytest.raises(EngineUnhealthy):
            await checks["engine"].run()  # /ready is red while the worker is stuck
        # the first token came with the prefill: it is shown marked incomplete, and kept as an incomplete turn
        shown = _texts(fake_slack, ts)
        assert len(shown) == 2 and INCOMPLETE in shown[0]
        turns = bot.store.history(thread_key(ts))
        assert [(t.role.value, t.status) for t in turns] == [
            ("user", MessageStatus.COMPLETE),
            ("assistant", MessageStatus.INCOMPLETE),
        ]
    finally:
        for decoder in hanging:
            decoder.unblock.set()
        await engine.aclose()


def _texts(fake_slack: Any, ts: str) -> list[str]:
    return [m.text for m in fake_slack.replies("C1", ts)]
