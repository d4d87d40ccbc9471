"""The dataset builder against a real store: what becomes an example, what is left out, and the split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bot.domain import Author, ConversationKey, MessageStatus, Role
from bot.learning.dataset import (
    DatasetOptions,
    author_tag,
    build_dataset,
    purge_author,
    read_examples,
    split_held_out,
)
from bot.settings import load_settings
from bot.store.conversations import ConversationStore
from bot.store.learning_records import LearningRecords
from bot.store.models import Feedback

ALICE = Author(id="U-alice", display_name="Alice")
BOB = Author(id="U-bob", display_name="Bob")
GENERAL = ConversationKey("slack", "T1", "C-general")
RANDOM = ConversationKey("slack", "T1", "C-random")


def _lines(files_paths: list[Path]) -> list[dict[str, Any]]:
    rows = []
    for path in files_paths:
        rows.extend(
            json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
        )
    return rows


def _build(store: ConversationStore, tmp_path: Path, **options: Any) -> tuple[Any, list[dict[str, Any]]]:
    opts = DatasetOptions(system_prompt="You are hanbot.", **options)
    files = build_dataset(store, opts, tmp_path / "ds")
    return files, _lines([files.train_path, files.eval_path])


def _exchange(
    store: ConversationStore,
    key: ConversationKey,
    author: Author,
    question: str,
    answer: str,
    status: MessageStatus = MessageStatus.COMPLETE,
) -> int:
    store.add_message(key, Role.USER, question, author=author)
    reply = store.add_message(key, Role.ASSISTANT, answer, status=status)
    assert reply is not None
    return reply.id


def _pairs(rows: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(r["messages"][-2]["content"], r["messages"][-1]["content"]) for r in rows}


def test_examples_are_complete_replies_with_their_context(
    sqlite_store: ConversationStore, tmp_path: Path
) -> None:
    _exchange(sqlite_store, GENERAL, ALICE, "first question", "first answer")
    _exchange(sqlite_store, GENERAL, BOB, "second question", "cut off ans", status=MessageStatus.INCOMPLETE)
    _exchange(sqlite_store, GENERAL, ALICE, "third question", "third answer")
    sqlite_store.add_message(GENERAL, Role.USER, "still waiting for a reply", author=BOB)

    files, rows = _build(sqlite_store, tmp_path, context_turns=6, eval_fraction=0.01)

    assert _pairs(rows) == {("first question", "first answer"), ("third question", "third answer")}
    assert files.counts["incomplete_replies"] >= 1
    third = next(r for r in rows if r["messages"][-1]["content"] == "third answer")
    assert [m["role"] for m in third["messages"]] == [
        "system",
        "user",
        "assistant",
        "user",
        "user",
        "assistant",
    ]
    assert third["messages"][0]["content"] == "You are hanbot."
    assert third["messages"][2] == {"role": "assistant", "content": "first answer", "weight": 0}
    assert "weight" not in third["messages"][-1]
    assert "cut off ans" not in json.dumps(rows)  # an incomplete reply is not even context


def test_context_is_limited_and_starts_with_a_user_turn(
    sqlite_store: ConversationStore, tmp_path: Path
) -> None:
    for i in range(5):
        _exchange(sqlite_store, GENERAL, ALICE, f"q{i}", f"a{i}")
    _, rows = _build(sqlite_store, tmp_path, context_turns=3, eval_fraction=0.01)
    last = next(r for r in rows if r["messages"][-1]["content"] == "a4")
    assert [m["content"] for m in last["messages"][1:]] == ["q3", "a3", "q4", "a4"]


def test_opted_out_users_are_absent(sqlite_store: ConversationStore, tmp_path: Path) -> None:
    _exchange(sqlite_store, GENERAL, ALICE, "alice asks about lunch", "lunch is at noon")
    _exchange(sqlite_store, GENERAL, BOB, "bob secret question", "bob secret answer")
    _exchange(sqlite_store, RANDOM, BOB, "bob asks again", "bob gets another answer")
    _exchange(sqlite_store, RANDOM, ALICE, "alice follow-up", "alice answer two")
    LearningRecords(sqlite_store).opt_out("slack", "U-bob")

    settings = load_settings(finetune={"opted_out_users": ["slack:U-alice-old"]})
    opted = LearningRecords(sqlite_store).opted_out_users()
    options = DatasetOptions.from_settings(settings, opted_out=opted)
    assert options.opted_out_users == {"slack:U-bob", "slack:U-alice-old"}
    files = build_dataset(sqlite_store, options, tmp_path / "ds")
    text = files.train_path.read_text(encoding="utf-8") + files.eval_path.read_text(encoding="utf-8")

    assert "bob" not in text
    assert "alice asks about lunch" in text and "alice answer two" in text
    assert files.counts["opted_out_exchanges"] == 2
    assert author_tag("slack:U-bob") not in text


def test_settings_opt_out_and_excluded_channels(sqlite_store: ConversationStore, tmp_path: Path) -> None:
    thread = ConversationKey("slack", "T1", "C-random", "1700000000.1")
    _exchange(sqlite_store, GENERAL, ALICE, "general q", "general a")
    _exchange(sqlite_store, RANDOM, ALICE, "random q", "random a")
    _exchange(sqlite_store, thread, ALICE, "thread q", "thread a")
    _exchange(sqlite_store, ConversationKey("discord", "G", "D-9"), BOB, "dm q", "dm a")

    _, rows = _build(
        sqlite_store,
        tmp_path,
        excluded_channels=("slack:T1:C-random", "D-9"),
        opted_out_users=frozenset({"discord:U-nobody"}),
        eval_fraction=0.01,
    )
    assert _pairs(rows) == {("general q", "general a")}


def test_feedback_keeps_or_drops_pairs(sqlite_store: ConversationStore, tmp_path: Path) -> None:
    liked = _exchange(sqlite_store, GENERAL, ALICE, "liked q", "liked a")
    disliked = _exchange(sqlite_store, GENERAL, ALICE, "disliked q", "disliked a")
    _exchange(sqlite_store, GENERAL, ALICE, "plain q", "plain a")
    mixed = _exchange(sqlite_store, GENERAL, ALICE, "mixed q", "mixed a")
    with sqlite_store.session() as session, session.begin():
        session.add_all(
            [
                Feedback(message_id=liked, user_id="U-alice", value=1),
                Feedback(message_id=disliked, user_id="U-alice", value=-1),
                Feedback(message_id=disliked, user_id="U-bob", value=-1),
                Feedback(message_id=mixed, user_id="U-alice", value=1),
                Feedback(message_id=mixed, user_id="U-bob", value=-1),
            ]
        )

    _, rows = _build(sqlite_store, tmp_path / "a", eval_fraction=0.01)
    answers = {pair[1] for pair in _pairs(rows)}
    assert answers == {"liked a", "plain a", "mixed a"}

    _, rows = _build(sqlite_store, tmp_path / "b", eval_fraction=0.01, require_positive_feedback=True)
    assert {pair[1] for pair in _pairs(rows)} == {"liked a"}


def test_exact_duplicates_are_removed_and_extra_files_added(
    sqlite_store: ConversationStore, tmp_path: Path
) -> None:
    for channel in ("C1", "C2", "C3"):
        _exchange(
            sqlite_store, ConversationKey("slack", "T1", channel), ALICE, "same question", "same answer"
        )
    extra = tmp_path / "extra.jsonl"
    extra.write_text(
        "\n".join(
            [
                json.dumps(
                    {
                        "messages": [
                            {"role": "user", "content": "uploaded q"},
                            {"role": "assistant", "content": "uploaded a"},
                        ]
                    }
                ),
                "not json at all",
                json.dumps({"messages": [{"role": "user", "content": "no reply"}]}),
                json.dumps(
                    {
                        "messages": [
                            {"role": "system", "content": "You are hanbot."},
                            {"role": "user", "content": "same question"},
                            {"role": "assistant", "content": "same answer"},
                        ]
                    }
                ),
                "",
            ]
        ),
        encoding="utf-8",
    )
    files, rows = _build(sqlite_store, tmp_path, extra_datasets=(extra,), eval_fraction=0.01)
    assert sorted(_pairs(rows)) == [("same question", "same answer"), ("uploaded q", "uploaded a")]
    assert files.counts["duplicates"] == 3
    assert files.counts["extra_invalid_lines"] == 2
    uploaded = next(r for r in rows if r["messages"][-1]["content"] == "uploaded a")
    assert uploaded["messages"][0] == {"role": "system", "content": "You are hanbot."}


def test_held_out_split_is_stable_and_never_empty(sqlite_store: ConversationStore, tmp_path: Path) -> None:
    for i in range(40):
        _exchange(sqlite_store, GENERAL, ALICE, f"question {i}", f"answer {i}")
    first, _ = _build(sqlite_store, tmp_path / "1", eval_fraction=0.25, context_turns=0)
    second, _ = _build(sqlite_store, tmp_path / "2", eval_fraction=0.25, context_turns=0)
    assert first.eval_path.read_text() == second.eval_path.read_text()
    assert 4 <= first.eval_examples <= 18
    assert first.train_examples + first.eval_examples == 40

    examples = read_examples(first.train_path)[:2]
    train, held = split_held_out(examples, 0.000001)
    assert len(train) == 1 and len(held) == 1
    train, held = split_held_out(examples, 0.999999)
    assert len(train) == 1 and len(held) == 1


def test_purge_author_removes_their_examples(sqlite_store: ConversationStore, tmp_path: Path) -> None:
    _exchange(sqlite_store, GENERAL, ALICE, "alice q", "alice a")
    _exchange(sqlite_store, RANDOM, BOB, "bob q", "bob a")
    files, _ = _build(sqlite_store, tmp_path, eval_fraction=0.01)
    merged = tmp_path / "heldout.jsonl"
    merged.write_text(files.train_path.read_text() + files.eval_path.read_text())
    assert purge_author(merged, "slack:U-bob") == 1
    assert "bob" not in merged.read_text()
    assert "alice q" in merged.read_text()
