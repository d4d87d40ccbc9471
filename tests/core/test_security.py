"""Issue 14 in the core: replies saved while they stream, restarts, store errors, odd characters, secrets, the console.

Real parts: the chat service on SQLite and PostgreSQL, the console adapter, the CLI in a subprocess. The engine is
scripted where the test is about what happens around a reply.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from adapters.console import ConsoleAdapter, ConsoleReplySink
from bot.app import build_commands, shutdown
from bot.chat import ChatService
from bot.cli import EXIT_CONFIG
from bot.domain import Author, ChatTurn, ConversationKey, IncomingMessage, MessageStatus, QueuePosition, Role
from bot.errors import GenerationFailed
from bot.prompt import INCOMPLETE_MARK
from bot.recovery import recover_unanswered
from bot.settings import Settings, load_settings
from bot.store.conversations import REPLACEMENT, ConversationStore, StoredMessage
from bot.store.db import create_db_engine
from bot.texts import say
from tests.conftest import PG_ADMIN_URL
from tests.fakes import CharTokenizer, RecordingSink, ScriptedEngine
from tests.inference.engine_helpers import wait_until

REPO = Path(__file__).resolve().parents[2]
KEY = ConversationKey("discord", "g1", "c1")


@pytest.fixture
def core_settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path, generation={"max_new_tokens": 64}, scheduler={"enabled": False})


def message(text_: str, mid: str, *, key: ConversationKey = KEY, author: str = "u1") -> IncomingMessage:
    return IncomingMessage(
        platform=key.platform, conversation=key, message_id=mid, author=Author(author, "Alice"), text=text_
    )


def every_turn(store: ConversationStore) -> list[StoredMessage]:
    """All turns of KEY, whatever their status (history() leaves failed and streaming ones out)."""
    from sqlalchemy import select

    from bot.store.models import Message

    with store.session() as session:
        return [StoredMessage.of(r) for r in session.scalars(select(Message).order_by(Message.id)).all()]


# fault 2: no lost reply


async def test_fault_02_cancelled_reply_is_kept_incomplete_and_the_next_prompt_alternates(
    core_settings: Settings, sqlite_store: ConversationStore
) -> None:
    engine = ScriptedEngine(reply="part one, part two, part three " * 10, chunk_size=6, delay_s=0.03)
    chat = ChatService(settings=core_settings, store=sqlite_store, engine=engine)
    task = asyncio.create_task(chat.handle(message("tell me", "m1"), RecordingSink()))
    await wait_until(lambda: any(m.role is Role.ASSISTANT for m in every_turn(sqlite_store)))
    streaming = [m for m in every_turn(sqlite_store) if m.role is Role.ASSISTANT]
    assert streaming[0].status is MessageStatus.STREAMING, "saved while it streams, before it ends"

    await asyncio.sleep(0.2)  # a few more chunks: shown, not yet saved (saves are paced)
    await chat.cancel(KEY)  # what /reset, a shutdown or a stop does
    assert task.cancelled()
    reply = every_turn(sqlite_store)[1]
    assert reply.status is MessageStatus.INCOMPLETE and reply.content.startswith("part one, part")
    assert reply.reply_to_id == every_turn(sqlite_store)[0].id

    engine.reply, engine.delay_s = "ok", 0.0
    await chat.handle(message("and then?", "m2"), RecordingSink())
    turns = engine.requests[-1].turns
    assert [t.role for t in turns] == [Role.SYSTEM, Role.USER, Role.ASSISTANT, Role.USER]
    assert turns[2].content == reply.content + INCOMPLETE_MARK


async def test_fault_02_a_message_without_an_answer_never_makes_two_user_turns_in_a_row(
    core_settings: Settings, sqlite_store: ConversationStore
) -> None:
    engine = ScriptedEngine(reply="fine")
    chat = ChatService(settings=core_settings, store=sqlite_store, engine=engine)
    sqlite_store.add_message(KEY, Role.USER, "left unanswered", author=Author("u1", "Alice"))
    await chat.handle(message("hello?", "m2"), RecordingSink())
    roles = [t.role for t in engine.requests[-1].turns]
    assert roles == [Role.SYSTEM, Role.USER]
    assert "left unanswered" in engine.requests[-1].turns[1].content


@pytest.mark.parametrize("mode", ["notice", "answer"])
async def test_fault_02_message_left_unanswered_by_a_restart_is_answered_or_told(
    tmp_path: Path, sqlite_store: ConversationStore, mode: str
) -> None:
    settings = load_settings(data_dir=tmp_path, scheduler={"enabled": False}, chat={"recovery": mode})
    old = ConversationKey("discord", "g1", "old")
    sqlite_store.add_message(
        KEY, Role.USER, "안녕하세요?", author=Author("u1", "민수"), platform_message_id="5"
    )
    answered = sqlite_store.add_message(KEY, Role.USER, "answered", author=Author("u1", "민수"))
    assert answered is not None
    sqlite_store.add_message(KEY, Role.ASSISTANT, "yes", reply_to=answered.id)
    late = sqlite_store.add_message(old, Role.USER, "too old", author=Author("u2", "Bo"))
    assert late is not None
    with sqlite_store.session() as session, session.begin():  # stored before the recovery window
        session.execute(
            text("update messages set created_at = '2020-01-01 00:00:00' where id = :id"), {"id": late.id}
        )
    engine = ScriptedEngine(reply="다시 안녕하세요")
    chat = ChatService(settings=settings, store=sqlite_store, engine=engine)
    sinks: dict[ConversationKey, RecordingSink] = {}

    async def sink_for(key: ConversationKey, turn: StoredMessage) -> RecordingSink:
        return sinks.setdefault(key, RecordingSink())

    assert await recover_unanswered(chat, settings, sink_for, platforms=["discord"]) == 1
    assert await recover_unanswered(chat, settings, sink_for, platforms=["discord"]) == 0, "once only"

    assert set(sinks) == {KEY}
    if mode == "notice":
        assert sinks[KEY].sent == [say("chat.restarted", "ko")] and engine.requests == []
    else:
        assert sinks[KEY].streamed == ["다시 안녕하세요"]
        assert sqlite_store.history(KEY)[-1].content == "다시 안녕하세요"


# fault 5: store errors


async def test_fault_05_nul_character_is_stored_escaped_answered_and_kept_out_of_the_logs(
    core_settings: Settings, store: ConversationStore, caplog: pytest.LogCaptureFixture
) -> None:
    engine = ScriptedEngine(reply="got it\x00")
    chat = ChatService(settings=core_settings, store=store, engine=engine)
    sink = RecordingSink()
    with caplog.at_level(logging.DEBUG):
        await chat.handle(message("secret-words\x00here", "m1"), sink)
    assert sink.streamed == ["got it\x00"] and sink.sent == []
    history = store.history(KEY)
    assert [m.content for m in history] == [f"secret-words{REPLACEMENT}here", f"got it{REPLACEMENT}"]
    assert all("secret-words" not in r.getMessage() for r in caplog.records)


async def test_fault_05_a_store_error_ends_in_a_polite_sentence_without_sql_parameters(
    core_settings: Settings, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    db = create_db_engine(sqlite_url)
    from bot.store.db import migrate

    migrate(db)
    store = ConversationStore(db)
    with db.begin() as conn:
        conn.execute(text("drop table messages"))  # the disk went bad, a migration was lost...
    chat = ChatService(settings=core_settings, store=store, engine=ScriptedEngine())
    sink = RecordingSink()
    with caplog.at_level(logging.DEBUG):
        await chat.handle(message("private words", "m1"), sink)
    assert sink.sent == [say("error.store", "en")]
    assert all(
        "private words" not in r.getMessage() and "private words" not in (r.exc_text or "")
        for r in caplog.records
    )
    assert db.hide_parameters, "SQL errors and echo never show the parameters (message text)"
    db.dispose()


# fault 8: text the tokenizer refuses


class StrictTokenizer(CharTokenizer):
    """Refuses lone surrogates, as Hugging Face's Rust tokenizers do; and any text holding ``refuse``."""

    def count_tokens(self, turns: Sequence[ChatTurn], *, add_generation_prompt: bool = True) -> int:
        for turn in turns:
            turn.content.encode("utf-8")  # UnicodeEncodeError on a lone surrogate
            if "refuse" in turn.content:
                raise ValueError("tokenizer refused the text")
        return super().count_tokens(turns, add_generation_prompt=add_generation_prompt)


async def test_fault_08_lone_surrogates_are_stored_before_counting_and_answered(
    core_settings: Settings, sqlite_store: ConversationStore
) -> None:
    engine = ScriptedEngine(reply="ok", tokenizer=StrictTokenizer())
    chat = ChatService(settings=core_settings, store=sqlite_store, engine=engine)
    sink = RecordingSink()
    await chat.handle(message("broken \ud83d emoji", "m1"), sink)
    assert sink.streamed == ["ok"]
    assert sqlite_store.history(KEY)[0].content == f"broken {REPLACEMENT} emoji"


async def test_fault_08_text_the_tokenizer_refuses_is_stored_first_and_gets_a_sentence(
    core_settings: Settings, sqlite_store: ConversationStore
) -> None:
    engine = ScriptedEngine(reply="ok", tokenizer=StrictTokenizer())
    chat = ChatService(settings=core_settings, store=sqlite_store, engine=engine)
    sink = RecordingSink()
    await chat.handle(message("please refuse this", "m1"), sink)
    assert sink.sent == [say("chat.unreadable", "en")] and engine.requests == []
    (stored,) = every_turn(sqlite_store)
    assert stored.content == "please refuse this" and stored.status is MessageStatus.FAILED


# faults 7 and 14: the console


async def test_fault_07_slash_alone_does_not_crash_the_console(
    core_settings: Settings, sqlite_store: ConversationStore
) -> None:
    engine = ScriptedEngine()
    chat = ChatService(settings=core_settings, store=sqlite_store, engine=engine)
    out = io.StringIO()
    console = ConsoleAdapter(stdin=io.StringIO("/\n/  \nhello\n"), stdout=out)
    await console.start(chat.handle, build_commands(core_settings, sqlite_store, engine, chat=chat))
    await console.wait_closed()
    assert out.getvalue().count(say("error.unknown_command", "en")) == 2
    assert "안녕하세요! Hello!" in out.getvalue(), "the console went on"


async def test_fault_14_console_says_nothing_about_an_incomplete_reply_when_nothing_was_said() -> None:
    async def fails_at_once():  # type: ignore[no-untyped-def]
        yield QueuePosition(1)
        raise GenerationFailed("before any text")

    async def fails_midway():  # type: ignore[no-untyped-def]
        yield "half"
        raise GenerationFailed("midway")

    for events, expected in ((fails_at_once(), False), (fails_midway(), True)):
        out = io.StringIO()
        with pytest.raises(GenerationFailed):
            await ConsoleReplySink(out).stream(events)
        assert (say("chat.incomplete", "en") in out.getvalue()) is expected, out.getvalue()


# fault 9: an unusable data directory


def run_cli(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=environment,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_fault_09_unusable_data_directory_gives_one_clear_message(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "data"
    not_a_dir.write_text("a file where the data directory should be")
    result = run_cli(["migrate"], tmp_path, HANBOT_DATA_DIR=str(not_a_dir))
    assert result.returncode == EXIT_CONFIG
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the database") and "HANBOT_DATA_DIR" in last


async def test_fault_09_shutdown_closes_everything_even_when_a_step_fails(
    core_settings: Settings, sqlite_store: ConversationStore
) -> None:
    from bot.app import build_core

    class ClosingEngine(ScriptedEngine):
        closed = False

        async def aclose(self) -> None:
            self.closed = True

    class BrokenAdapter:
        name = "broken"

        async def stop(self) -> None:
            raise OSError("No space left on device")

    engine = ClosingEngine()
    core = build_core(core_settings, engine=engine, store=sqlite_store)

    async def broken_finetune_close() -> None:
        raise OSError("Read-only file system")

    core.finetune.aclose = broken_finetune_close  # type: ignore[method-assign]
    await shutdown(core, [BrokenAdapter()])  # type: ignore[list-item]
    assert engine.closed, "the engine is closed after the failing steps"
    assert sqlite_store.engine.pool.checkedout() == 0


# fault 6: secrets


def test_fault_06_check_config_masks_credentials(tmp_path: Path) -> None:
    result = run_cli(
        ["check-config"],
        tmp_path,
        HANBOT_STORE__DATABASE_URL="postgresql://bob:db-secret-1@db/hanbot?password=db-secret-2",
        HANBOT_ENGINE__KIND="remote",
        HANBOT_ENGINE__REMOTE_BASE_URL="http://user:remote-secret@vllm:8000/v1",
    )
    assert result.returncode == 0, result.stderr
    for secret in ("db-secret-1", "db-secret-2", "remote-secret"):
        assert secret not in result.stdout + result.stderr
    assert (
        "postgresql://bob:***@db/hanbot" in result.stdout and "http://user:***@vllm:8000/v1" in result.stdout
    )


def test_fault_06_remote_base_url_is_logged_without_its_password(
    tmp_path: Path, demo_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from inference.remote_engine import RemoteEngine

    settings = load_settings(
        data_dir=tmp_path,
        engine={"kind": "remote", "remote_base_url": "http://user:remote-secret@127.0.0.1:9/v1"},
        model={"name_or_path": str(demo_model_dir)},
    )
    with caplog.at_level(logging.DEBUG):
        engine = RemoteEngine.from_settings(settings)
    assert "remote-secret" not in caplog.text + repr(engine)
    assert "user:***@127.0.0.1:9" in caplog.text


@pytest.mark.postgres
def test_fault_06_a_database_password_with_percent_at_and_slash_works_and_stays_hidden(
    tmp_path: Path, postgres_url: str
) -> None:
    password = "p%w@d/x:y"
    role = f"hanbot_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    database = postgres_url.rsplit("/", 1)[1]
    with admin.connect() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
        conn.execute(text(f'ALTER DATABASE "{database}" OWNER TO {role}'))
    try:
        from urllib.parse import quote

        host = PG_ADMIN_URL.split("@", 1)[1].rsplit("/", 1)[0]
        url = f"postgresql+psycopg://{role}:{quote(password, safe='')}@{host}/{database}"
        result = run_cli(["migrate"], tmp_path, HANBOT_STORE__DATABASE_URL=url)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "database up to date" in result.stdout
        for secret in (password, quote(password, safe="")):
            assert secret not in result.stdout + result.stderr
    finally:
        with admin.connect() as conn:  # the role owns the tables: the database goes first
            conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
            conn.execute(text(f"DROP ROLE IF EXISTS {role}"))
        admin.dispose()


def test_fault_06_log_lines_and_tracebacks_never_show_url_credentials() -> None:
    from bot.masking import MaskCredentials, mask_url

    record = logging.LogRecord(
        "x",
        logging.ERROR,
        __file__,
        1,
        "cannot reach %s",
        ("http://u:pw-secret@vllm:8000/v1?api_key=k-secret",),
        None,
    )
    try:
        raise ConnectionError("postgresql://bob:tb-secret@db/hanbot refused")
    except ConnectionError:
        record.exc_info = sys.exc_info()
    assert MaskCredentials().filter(record)
    shown = logging.Formatter().format(record)
    assert "secret" not in shown and "u:***@vllm:8000" in shown and "bob:***@db" in shown
    assert mask_url("sqlite:///data/hanbot.db") == "sqlite:///data/hanbot.db"
