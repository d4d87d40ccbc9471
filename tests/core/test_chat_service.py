"""The chat service's road: store first, prompt, stream, store the reply; failures end in one sentence."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from bot.chat import ChatService
from bot.domain import Author, ConversationKey, GenerationRequest, IncomingMessage, MessageStatus, Role
from bot.errors import QueueFull
from bot.settings import Settings, load_settings
from bot.store.conversations import ConversationStore
from bot.texts import say, say_both
from tests.fakes import CharTokenizer, RecordingSink, ScriptedEngine

KEY = ConversationKey("discord", "g1", "c1")


@pytest.fixture
def core_settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path, generation={"max_new_tokens": 64}, scheduler={"enabled": False})


def message(
    text: str, mid: str, *, author: Author | None = None, direct: bool = False, key: ConversationKey = KEY
) -> IncomingMessage:
    return IncomingMessage(
        platform=key.platform,
        conversation=key,
        message_id=mid,
        author=author or Author("u1", "Alice"),
        text=text,
        is_direct=direct,
    )


async def test_user_turn_is_stored_before_the_model_is_called(
    core_settings: Settings, sqlite_store: ConversationStore
) -> None:
    seen: list[list[str]] = []

    def reply(request: GenerationRequest) -> str:
        seen.append([m.content for m in sqlite_store.history(KEY)])
        return "Hello Alice!"

    chat = ChatService(settings=core_settings, store=sqlite_store, engine=ScriptedEngine(reply=reply))
    sink = RecordingSink()
    await chat.handle(message("hi there", "m1"), sink)
    assert seen == [["hi there"]]
    assert sink.streamed == ["Hello Alice!"]
    history = sqlite_store.history(KEY)
    assert [(m.role, m.content, m.status) for m in history] == [
        (Role.USER, "hi there", MessageStatus.COMPLETE),
        (Role.ASSISTANT, "Hello Alice!", MessageStatus.COMPLETE),
    ]
    assert history[0].author_name == "Alice" and history[0].token_count > 0


async def test_shared_channels_show_speaker_names_and_dms_do_not(
    core_settings: Settings, sqlite_store: ConversationStore
) -> None:
    engine = ScriptedEngine(reply="ok")
    chat = ChatService(settings=core_settings, store=sqlite_store, engine=engine)
    await chat.handle(message("first", "m1", author=Author("u1", "Alice")), RecordingSink())
    await chat.handle(message("second", "m2", author=Author("u2", "민수")), RecordingSink())
    turns = engine.requests[-1].turns
    assert turns[0].role is Role.SYSTEM and turns[0].content == core_settings.model.system_prompt
    assert [t.content for t in turns[1:]] == ["Alice: first", "ok", "민수: second"]
    dm = ConversationKey("discord", "", "dm-1")
    await chat.handle(message("private", "m3", direct=True, key=dm), RecordingSink())
    assert engine.requests[-1].turns[-1].content == "private"
    assert engine.requests[-1].channel == str(dm)


async def test_empty_message_gets_a_hint_and_no_model_call(
    core_settings: Settings, sqlite_store: ConversationStore
) -> None:
    engine = ScriptedEngine()
    chat = ChatService(settings=core_settings, store=sqlite_store, engine=engine)
    sink = RecordingSink()
    await chat.handle(message("   ", "m1"), sink)
    # no earlier turn tells the writer's language: both
    assert sink.sent == [say_both("chat.empty")] and engine.requests == []
    assert sqlite_store.count_messages(KEY) == 0


async def test_too_long_message_gets_a_clear_reply_and_nothing_half_stored(
    core_settings: Settings, sqlite_store: ConversationStore
) -> None:
    engine = ScriptedEngine(tokenizer=CharTokenizer(context_length=256))
    chat = ChatService(settings=core_settings, store=sqlite_store, engine=engine)
    sink = RecordingSink()
    long_text = "가나다라마바사 " * 200
    await chat.handle(message(long_text, "m1"), sink)
    assert engine.requests == []
    assert len(sink.sent) == 1 and "너무 길어요" in sink.sent[0]
    assert sqlite_store.history(KEY) == []  # the turn is kept (status failed), never shown to the model
    assert sqlite_store.count_messages(KEY) == 1


async def test_a_duplicate_delivery_is_answered_once(
    core_settings: Settings, sqlite_store: ConversationStore
) -> None:
    engine = ScriptedEngine(reply="once")
    chat = ChatService(settings=core_settings, store=sqlite_store, engine=engine)
    await chat.handle(message("hello", "same-id"), RecordingSink())
    await chat.handle(message("hello", "same-id"), RecordingSink())
    assert len(engine.requests) == 1
    assert sqlite_store.count_messages(KEY) == 2


async def test_failure_mid_stream_keeps_the_partial_reply_and_says_sorry_in_korean(
    core_settings: Settings, sqlite_store: ConversationStore, caplog: pytest.LogCaptureFixture
) -> None:
    engine = ScriptedEngine(reply="첫 부분입니다. 그리고 나머지", chunk_size=4, fail_after=2)
    chat = ChatService(settings=core_settings, store=sqlite_store, engine=engine)
    sink = RecordingSink()
    with caplog.at_level(logging.INFO):
        await chat.handle(message("질문이 있어요", "m-fail"), sink)
    assert sink.incomplete
    assert sink.sent == [say("error.engine", "ko")]
    history = sqlite_store.history(KEY)
    assert history[-1].role is Role.ASSISTANT and history[-1].status is MessageStatus.INCOMPLETE
    assert history[-1].content == "첫 부분입니다."
    failure_logs = [r.getMessage() for r in caplog.records if "reply failed" in r.getMessage()]
    assert failure_logs and "m-fail" in failure_logs[0] and "질문이 있어요" not in failure_logs[0]
    assert engine.closed_streams == 1


async def test_queue_full_before_any_text_stores_no_reply(
    core_settings: Settings, sqlite_store: ConversationStore
) -> None:
    engine = ScriptedEngine(reply="x", fail_after=0, error=QueueFull("full"))
    chat = ChatService(settings=core_settings, store=sqlite_store, engine=engine)
    sink = RecordingSink()
    await chat.handle(message("hello", "m1"), sink)
    assert sink.sent == [say("error.queue_full", "en")]
    # the turn is kept, marked failed (never answered): out of later prompts, not answered again after a restart
    assert sqlite_store.history(KEY) == [] and sqlite_store.count_messages(KEY) == 1


async def test_unexpected_exception_is_caught_at_the_boundary(
    core_settings: Settings, sqlite_store: ConversationStore
) -> None:
    engine = ScriptedEngine(reply="abc", fail_after=0, error=RuntimeError("boom"))
    chat = ChatService(settings=core_settings, store=sqlite_store, engine=engine)
    sink = RecordingSink()
    await chat.handle(message("hello", "m1"), sink)
    assert sink.sent == [say("error.generic", "en")]


async def test_long_history_is_trimmed_to_the_budget_and_the_user_is_told_once(
    core_settings: Settings, sqlite_store: ConversationStore
) -> None:
    engine = ScriptedEngine(reply="ok " * 20, tokenizer=CharTokenizer(context_length=400))
    chat = ChatService(settings=core_settings, store=sqlite_store, engine=engine)
    sinks = [RecordingSink() for _ in range(12)]
    for i, sink in enumerate(sinks):
        await chat.handle(message(f"question number {i} " * 3, f"m{i}"), sink)
    budget = 400 - core_settings.generation.max_new_tokens
    for request in engine.requests:
        assert engine.tokenizer.count_tokens(request.turns) <= budget
        assert request.turns[-1].content.startswith("Alice: question number")
    notices = [s for sink in sinks for s in sink.sent]
    assert len(notices) == 1 and "only the last" in notices[0]


async def test_forget_cancels_a_reply_in_progress_and_clears_history(
    core_settings: Settings, sqlite_store: ConversationStore
) -> None:
    engine = ScriptedEngine(reply="slow " * 100, chunk_size=5, delay_s=0.05)
    chat = ChatService(settings=core_settings, store=sqlite_store, engine=engine)
    sink = RecordingSink()
    task = asyncio.create_task(chat.handle(message("tell me a story", "m1"), sink))
    await asyncio.sleep(0.3)
    removed = await chat.forget(KEY, actor="discord:admin")
    assert removed == 2 and task.cancelled(), "the turn and the partial reply saved while it streamed"
    assert sqlite_store.count_messages(KEY) == 0
    assert engine.closed_streams == 1
