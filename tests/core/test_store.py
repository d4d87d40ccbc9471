"""The conversation store on SQLite and PostgreSQL: migrations, concurrency, dedupe, reset."""

from __future__ import annotations

import threading

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from bot.domain import Author, ConversationKey, MessageStatus, Role
from bot.store.async_store import AsyncStore
from bot.store.conversations import ConversationStore
from bot.store.db import create_db_engine, migrate
from bot.store.models import Base

KEY = ConversationKey("discord", "guild-1", "chan-1")


def test_migrations_bring_a_blank_database_to_the_models(db_url: str) -> None:
    engine = create_db_engine(db_url)
    migrate(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    engine.dispose()
    assert diff == []


def test_migrate_twice_is_a_no_op(db_url: str) -> None:
    engine = create_db_engine(db_url)
    migrate(engine)
    migrate(engine)
    engine.dispose()


def test_migration_0002_links_existing_replies_to_the_user_turn_before_them(db_url: str) -> None:
    engine = create_db_engine(db_url)
    migrate(engine, "0001")
    rows = [("user", "q1"), ("assistant", "r1"), ("user", "q2"), ("user", "q3"), ("assistant", "r3")]
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO conversations (platform, workspace, channel, thread, created_at, updated_at) "
                "VALUES ('discord', 'g', 'c', '', :now, :now)"
            ),
            {"now": "2026-11-01 00:00:00"},
        )
        for role, content in rows:
            conn.execute(
                text(
                    "INSERT INTO messages (conversation_id, role, content, token_count, status, platform, "
                    "created_at) VALUES (1, :role, :content, 0, 'complete', 'discord', '2026-11-01 00:00:00')"
                ),
                {"role": role, "content": content},
            )
    migrate(engine)
    by_content = {
        m.content: m for m in ConversationStore(engine).history(ConversationKey("discord", "g", "c"))
    }
    engine.dispose()
    assert by_content["r1"].reply_to_id == by_content["q1"].id
    assert by_content["r3"].reply_to_id == by_content["q3"].id  # q2 went unanswered
    assert by_content["q1"].reply_to_id is None


def test_a_reply_keeps_the_id_of_the_turn_it_answers(store: ConversationStore) -> None:
    turn = store.add_message(KEY, Role.USER, "질문", author=Author("u1", "민수"), platform_message_id="m1")
    assert turn is not None
    reply = store.add_message(KEY, Role.ASSISTANT, "답", reply_to=turn.id)
    assert reply is not None and reply.reply_to_id == turn.id
    assert [m.reply_to_id for m in store.history(KEY)] == [None, turn.id]


def test_four_threads_appending_100_messages_each_leave_400_rows(store: ConversationStore) -> None:
    errors: list[BaseException] = []

    def append(worker: int) -> None:
        try:
            for i in range(100):
                store.add_message(KEY, Role.USER, f"w{worker} #{i}", platform_message_id=f"{worker}-{i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=append, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.count_messages(KEY) == 400
    ids = [m.id for m in store.history(KEY, limit=1000)]
    assert len(set(ids)) == 400


def test_a_second_delivery_of_the_same_platform_message_is_recognised(store: ConversationStore) -> None:
    first = store.add_message(KEY, Role.USER, "hi", author=Author("u1", "Alice"), platform_message_id="m1")
    again = store.add_message(KEY, Role.USER, "hi", author=Author("u1", "Alice"), platform_message_id="m1")
    assert first is not None and again is None
    assert store.count_messages(KEY) == 1
    # the same id on another platform is another message
    other = ConversationKey("slack", "T1", "C1")
    assert store.add_message(other, Role.USER, "hi", platform_message_id="m1") is not None


def test_history_is_oldest_first_keeps_names_and_leaves_failed_turns_out(store: ConversationStore) -> None:
    store.add_message(KEY, Role.USER, "안녕", author=Author("u1", "민수"))
    failed = store.add_message(KEY, Role.USER, "x" * 10, author=Author("u2", "Bob"))
    assert failed is not None
    store.update_message(failed.id, status=MessageStatus.FAILED)
    store.add_message(KEY, Role.ASSISTANT, "반가워요", status=MessageStatus.INCOMPLETE)
    history = store.history(KEY)
    assert [(m.role, m.content, m.author_name) for m in history] == [
        (Role.USER, "안녕", "민수"),
        (Role.ASSISTANT, "반가워요", None),
    ]
    assert history[1].status is MessageStatus.INCOMPLETE
    assert history[0].created_at.tzinfo is not None


def test_reset_forgets_only_that_conversation(store: ConversationStore) -> None:
    other = ConversationKey("discord", "guild-1", "chan-2")
    for i in range(3):
        store.add_message(KEY, Role.USER, f"a{i}")
    store.add_message(other, Role.USER, "b")
    assert store.reset(KEY, actor="discord:admin") == 3
    assert store.count_messages(KEY) == 0
    assert store.count_messages(other) == 1
    assert store.reset(ConversationKey("discord", "g", "never-seen"), actor="x") == 0


def test_latest_thread_with_is_the_thread_of_the_channel_where_the_user_wrote_last(
    store: ConversationStore,
) -> None:
    channel = ConversationKey("slack", "T1", "C1")
    first, second = ConversationKey("slack", "T1", "C1", "1.1"), ConversationKey("slack", "T1", "C1", "2.2")
    minsu, bob = Author("U1", "민수"), Author("U2", "Bob")
    store.add_message(first, Role.USER, "first thread", author=minsu)
    store.add_message(second, Role.USER, "second thread", author=minsu)
    store.add_message(first, Role.USER, "bob in the first", author=bob)
    store.add_message(ConversationKey("slack", "T1", "C2", "3.3"), Role.USER, "other channel", author=minsu)
    store.add_message(channel, Role.USER, "the channel itself is no thread", author=minsu)

    assert store.latest_thread_with(channel, "U1") == second
    assert store.latest_thread_with(channel, "U2") == first
    store.add_message(first, Role.USER, "minsu again", author=minsu)
    assert store.latest_thread_with(channel, "U1") == first
    assert store.latest_thread_with(channel, "U3") is None
    opening = store.first_message(first)
    assert opening is not None and opening.content == "first thread"


def test_delivery_ids_are_recorded_once(store: ConversationStore) -> None:
    assert store.record_event("slack", "Ev1") is True
    assert store.record_event("slack", "Ev1") is False
    assert store.record_event("discord", "Ev1") is True


def test_per_channel_system_prompt(store: ConversationStore) -> None:
    assert store.system_prompt(KEY) is None
    store.set_system_prompt(KEY, "Answer in Korean only.")
    assert store.system_prompt(KEY) == "Answer in Korean only."


async def test_the_async_store_runs_each_operation_off_the_event_loop_in_one_hop(
    store: ConversationStore,
) -> None:
    """AsyncStore: the store's async API. Every operation runs on a worker thread, a composite one on one thread."""
    db = AsyncStore(store)
    loop_thread = threading.get_ident()
    assert await db.has_turns(KEY) is False
    turn = await db.add_message(KEY, Role.USER, "안녕", author=Author("U1", "민수"), platform_message_id="m1")
    assert turn is not None and await db.has_turns(KEY) is True
    assert await db.add_message(KEY, Role.USER, "안녕", platform_message_id="m1") is None  # a repeat delivery
    await db.update_message(turn.id, token_count=7)
    assert [(m.content, m.token_count) for m in await db.history(KEY)] == [("안녕", 7)]

    threads: list[int] = []

    def operation(sync: ConversationStore) -> int:
        threads.append(threading.get_ident())
        sync.set_system_prompt(KEY, "반말로")
        threads.append(threading.get_ident())
        return sync.count_messages(KEY)

    assert await db.run(operation) == 1
    assert len(set(threads)) == 1 and threads[0] != loop_thread
    assert await db.system_prompt(KEY) == "반말로"
    assert await db.reset(KEY, actor="test") == 1 and await db.has_turns(KEY) is False


async def test_the_delivery_log_takes_a_delivery_once_across_facades(store: ConversationStore) -> None:
    """The Slack adapter's DeliveryLog port: two processes (two facades over one database) take an id once."""
    first, second = AsyncStore(store), AsyncStore(ConversationStore(store.engine))
    assert await first.first_delivery("slack", "event:Ev1") is True
    assert await second.first_delivery("slack", "event:Ev1") is False
    assert await second.first_delivery("slack", "command:T1") is True
