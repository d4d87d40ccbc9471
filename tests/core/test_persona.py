"""/persona in the console: the session's system prompt is set, shown with its cost in tokens, and cleared; the
next prompt's system turn follows it. A Slack thread with no prompt of its own takes its channel's."""

from __future__ import annotations

import io

from adapters.console import ConsoleAdapter
from bot.app import build_commands
from bot.chat import ChatService
from bot.domain import ChatTurn, ConversationKey, Role
from bot.settings import Settings
from bot.store.conversations import ConversationStore
from bot.texts import say
from tests.fakes import ScriptedEngine

PIRATE = "너는 해적이야. 해적처럼 답해."


async def test_console_persona_set_show_clear(settings: Settings, sqlite_store: ConversationStore) -> None:
    engine = ScriptedEngine(reply="ok")
    chat = ChatService(settings=settings, store=sqlite_store, engine=engine)
    lines = ["/persona show", f"/persona set {PIRATE}", "안녕", "/persona show", "/persona clear", "again"]
    out = io.StringIO()
    console = ConsoleAdapter(stdin=io.StringIO("".join(f"{line}\n" for line in lines)), stdout=out)

    await console.start(chat.handle, build_commands(settings, sqlite_store, engine, chat=chat))
    await console.wait_closed()

    tokens = engine.tokenizer.count_tokens([ChatTurn(Role.SYSTEM, PIRATE)], add_generation_prompt=False)
    default = settings.model.system_prompt
    default_tokens = engine.tokenizer.count_tokens(
        [ChatTurn(Role.SYSTEM, default)], add_generation_prompt=False
    )
    budget = engine.tokenizer.context_length - settings.generation.max_new_tokens
    shown = out.getvalue()
    assert (
        say("cmd.persona.show_default", "en", tokens=default_tokens, budget=budget, prompt=default) in shown
    )
    assert say("cmd.persona.set", "ko", tokens=tokens, budget=budget) in shown  # Korean prompt, Korean answer
    assert say("cmd.persona.show", "ko", tokens=tokens, budget=budget, prompt=PIRATE) in shown
    assert say("cmd.persona.cleared", "ko", tokens=default_tokens) in shown
    assert [request.turns[0].content for request in engine.requests] == [PIRATE, default]


async def test_persona_set_without_text_gets_one_sentence(
    settings: Settings, sqlite_store: ConversationStore
) -> None:
    engine = ScriptedEngine(reply="ok")
    out = io.StringIO()
    console = ConsoleAdapter(stdin=io.StringIO("/persona set\n/persona dance\n"), stdout=out)

    await console.start(
        ChatService(settings=settings, store=sqlite_store, engine=engine).handle,
        build_commands(settings, sqlite_store, engine),
    )
    await console.wait_closed()

    assert say("cmd.persona.empty", "en") in out.getvalue()
    assert say("cmd.persona.usage", "en") in out.getvalue()


def test_a_thread_without_its_own_prompt_takes_its_channels(sqlite_store: ConversationStore) -> None:
    channel = ConversationKey("slack", "T1", "C1")
    thread = ConversationKey("slack", "T1", "C1", "1700000000.000100")
    sqlite_store.set_system_prompt(channel, "channel prompt")
    assert sqlite_store.channel_system_prompt(thread) == "channel prompt"
    sqlite_store.set_system_prompt(thread, "thread prompt")
    assert sqlite_store.channel_system_prompt(thread) == "thread prompt"
    assert sqlite_store.channel_system_prompt(ConversationKey("slack", "T1", "C2", "1")) is None
