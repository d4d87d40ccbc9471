"""What of a reply chain the model sees: bounded, oldest first, nothing the stored conversation already holds."""

from __future__ import annotations

from datetime import UTC, datetime

from bot.domain import MessageStatus, QuotedMessage, Role
from bot.quoting import QUOTE_CHARS, QUOTE_DEPTH, quote_block
from bot.store.conversations import StoredMessage


def stored(role: Role, content: str, platform_message_id: str | None = None) -> StoredMessage:
    return StoredMessage(
        id=1,
        conversation_id=1,
        role=role,
        author_id=None,
        author_name=None,
        content=content,
        token_count=0,
        status=MessageStatus.COMPLETE,
        platform_message_id=platform_message_id,
        created_at=datetime.now(UTC),
    )


def test_the_nearest_messages_of_the_chain_are_shown_oldest_first_and_cut_at_a_length() -> None:
    chain = [QuotedMessage(str(i), f"user{i}", f"message {i}") for i in range(QUOTE_DEPTH + 2)]
    chain[0] = QuotedMessage("0", "Ara", "가" * (QUOTE_CHARS + 50))
    block = quote_block(chain, [])
    assert block is not None
    lines = block.splitlines()
    assert len(lines) == QUOTE_DEPTH
    assert lines[0] == f"> user{QUOTE_DEPTH - 1}: message {QUOTE_DEPTH - 1}"
    assert lines[-1] == "> Ara: " + "가" * QUOTE_CHARS + "…"


def test_messages_already_in_the_history_are_left_out() -> None:
    history = [
        stored(Role.USER, "첫 질문", platform_message_id="m1"),
        stored(Role.ASSISTANT, "첫 답입니다.\n\n긴 답의 두 번째 문단이에요."),
    ]
    chain = [
        QuotedMessage(
            "b2", "hanbot", "긴 답의 두 번째  문단이에요.", from_bot=True
        ),  # part of a stored reply
        QuotedMessage("m1", "Jun", "첫 질문"),
    ]
    assert quote_block(chain, history) is None
    other = QuotedMessage("m9", "Ara", "다른 사람의 말")
    assert quote_block([*chain, other], history) == "> Ara: 다른 사람의 말"
    unknown_bot_message = QuotedMessage("b7", "hanbot", "지워진 대화의 답", from_bot=True)
    assert quote_block([unknown_bot_message], history) == "> hanbot: 지워진 대화의 답"
