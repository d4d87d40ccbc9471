"""One pass over a message: the stored history's token counts are read from the store (never re-tokenised), the new
message is counted once (as the model sees it) and the prompt rendered once, the reply counted once at its end, the
language detected once. Counted through the model's real tokenizer, wrapped."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import pytest
from transformers import AutoTokenizer

import adapters.console
import bot.chat
import bot.domain
import bot.prompt
from adapters.console import ConsoleAdapter
from bot.chat import ChatService
from bot.commands import CommandRegistry
from bot.domain import Author, ChatTurn, ConversationKey, IncomingMessage
from bot.permissions import AdminPolicy
from bot.settings import Settings, load_settings
from bot.store.conversations import ConversationStore
from bot.texts import Lang, language_of
from inference.tokenizer import HFChatTokenizer
from tests.fakes import RecordingSink, ScriptedEngine

KEY = ConversationKey("discord", "g1", "c1")


class CountingTokenizer:
    """The real chat tokenizer, recording every render it is asked for."""

    def __init__(self, real: HFChatTokenizer) -> None:
        self._real = real
        self.calls: list[tuple[ChatTurn, ...]] = []

    @property
    def context_length(self) -> int:
        return self._real.context_length

    def count_tokens(self, turns: Sequence[ChatTurn], *, add_generation_prompt: bool = True) -> int:
        self.calls.append(tuple(turns))
        return self._real.count_tokens(turns, add_generation_prompt=add_generation_prompt)


@pytest.fixture
def tokenizer(demo_model_dir: Path) -> CountingTokenizer:
    return CountingTokenizer(HFChatTokenizer(AutoTokenizer.from_pretrained(demo_model_dir), 2048))


@pytest.fixture
def core_settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path, generation={"max_new_tokens": 64}, scheduler={"enabled": False})


async def test_history_is_read_from_the_store_and_each_text_counted_once(
    core_settings: Settings, sqlite_store: ConversationStore, tokenizer: CountingTokenizer
) -> None:
    engine = ScriptedEngine(reply=lambda r: f"답장 {len(r.turns)}번째 turn 🙂", tokenizer=tokenizer)  # type: ignore[arg-type]
    chat = ChatService(settings=core_settings, store=sqlite_store, engine=engine)
    per_message = []
    for i in range(8):
        bot.prompt._count.cache_clear()  # a fresh process: nothing remembered but the store
        tokenizer.calls.clear()
        text = f"메시지 {i}: 안녕하세요, hello {i}"
        msg = IncomingMessage("discord", KEY, f"m{i}", Author("u1", "Alice"), text)
        await chat.handle(msg, RecordingSink())
        singles = [call[0].content for call in tokenizer.calls if len(call) == 1]
        assert [c for c in singles if text in c] == [f"Alice: {text}"]  # the message, as the model sees it
        assert len([c for c in singles if c.startswith("답장")]) == 1  # the reply, at its end
        per_message.append(len(tokenizer.calls))
    # the new message, the system prompt (once per process), the prompt, the reply: however long the history
    assert per_message == [4] * 8
    history = sqlite_store.history(KEY)
    assert len(history) == 16 and all(m.token_count > 0 for m in history)
    assert engine.requests[-1].turns[-1].content.endswith("hello 7")


async def test_the_prompt_is_the_same_as_when_every_turn_was_counted(
    core_settings: Settings, sqlite_store: ConversationStore, tokenizer: CountingTokenizer
) -> None:
    """Stored counts are the counts of the turns as the prompt shows them: the budget decides the same."""
    engine = ScriptedEngine(reply="짧은 답장입니다. " * 20, tokenizer=tokenizer)  # type: ignore[arg-type]
    settings = load_settings(
        data_dir=core_settings.data_dir, generation={"max_new_tokens": 1900}, scheduler={"enabled": False}
    )
    chat = ChatService(settings=settings, store=sqlite_store, engine=engine)
    for i in range(6):
        await chat.handle(
            IncomingMessage("discord", KEY, f"m{i}", Author("u1", "Alice"), f"질문 {i} " * 10),
            RecordingSink(),
        )
    stored = sqlite_store.history(KEY)
    recounted = [
        bot.prompt.turn_cost(bot.prompt.speaker_turn(m, show_names=True), tokenizer)  # type: ignore[arg-type]
        for m in stored
    ]
    assert [m.token_count for m in stored] == recounted
    assert len(engine.requests[-1].turns) < 1 + len(stored)  # the budget (148 tokens) did trim the history


async def test_the_language_is_detected_once_per_message(
    core_settings: Settings, sqlite_store: ConversationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts: list[str] = []

    def counted(text: str) -> Lang:
        texts.append(text)
        return language_of(text)

    for module in (bot.domain, bot.chat, adapters.console):
        monkeypatch.setattr(module, "language_of", counted)
    chat = ChatService(settings=core_settings, store=sqlite_store, engine=ScriptedEngine())
    out = io.StringIO()
    console = ConsoleAdapter(stdin=io.StringIO("안녕하세요\nhello there\n"), stdout=out)
    await console.start(chat.handle, CommandRegistry(AdminPolicy(core_settings)))
    await console.wait_closed()
    assert texts == ["안녕하세요", "hello there"]
    assert out.getvalue().count("안녕하세요! Hello!") == 2
