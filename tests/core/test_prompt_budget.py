"""Property: the built prompt never exceeds the budget and always holds the system prompt and the current message.

Runs with the demo model's own tokenizer and chat template (the real counting code) and with a character counter.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.domain import ChatTurn, MessageStatus, Role
from bot.ports import ChatTokenizer
from bot.prompt import PromptTooLong, alternating, build_prompt
from bot.store.conversations import StoredMessage
from tests.fakes import CharTokenizer

SYSTEM = "You are a helpful AI assistant. 당신은 유능한 AI 어시스턴트 입니다."
MAX_NEW = 64

korean = st.text(st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3), max_size=300)
english = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300)
emoji = st.lists(st.sampled_from(["😀", "👍🏽", "👨‍👩‍👧", "🇰🇷", "❤️", "🤖"]), max_size=60).map("".join)
huge = st.builds(lambda s, n: s * n, st.sampled_from(["가", "word ", "😀", "x"]), st.integers(500, 3000))
texts = st.one_of(korean, english, emoji, huge, st.text(max_size=200))


def stored(i: int, role: Role, content: str, name: str | None) -> StoredMessage:
    return StoredMessage(
        id=i,
        conversation_id=1,
        role=role,
        author_id=name,
        author_name=name,
        content=content,
        token_count=0,
        status=MessageStatus.COMPLETE,
        platform_message_id=None,
        created_at=datetime.now(UTC),
    )


@pytest.fixture(scope="module", params=["demo-tokenizer", "char-counter"])
def tokenizer(request: pytest.FixtureRequest) -> ChatTokenizer:
    if request.param == "char-counter":
        return CharTokenizer(context_length=1024)
    from transformers import AutoTokenizer

    from inference.tokenizer import HFChatTokenizer

    demo_dir: Path = request.getfixturevalue("demo_model_dir")
    return HFChatTokenizer(AutoTokenizer.from_pretrained(demo_dir), context_length=1024)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=st.lists(st.tuples(texts, st.booleans()), max_size=25), current=texts, shared=st.booleans())
def test_prompt_fits_and_keeps_system_and_current(
    tokenizer: ChatTokenizer, history: list[tuple[str, bool]], current: str, shared: bool
) -> None:
    past = [
        stored(i, Role.USER if is_user else Role.ASSISTANT, text, "민수" if is_user else None)
        for i, (text, is_user) in enumerate(history)
    ]
    budget = tokenizer.context_length - MAX_NEW
    current_turn = ChatTurn(Role.USER, current)
    try:
        prompt = build_prompt(
            system_prompt=SYSTEM,
            history=past,
            current=current_turn,
            tokenizer=tokenizer,
            max_new_tokens=MAX_NEW,
            show_names=shared,
        )
    except PromptTooLong as exc:
        assert tokenizer.count_tokens([ChatTurn(Role.SYSTEM, SYSTEM), current_turn]) > budget
        assert exc.limit == budget
        return
    assert prompt.token_count <= budget
    assert tokenizer.count_tokens(prompt.turns) == prompt.token_count
    assert prompt.turns[0] == ChatTurn(Role.SYSTEM, SYSTEM)
    assert prompt.turns[-1].role is Role.USER and prompt.turns[-1].content.endswith(current)
    assert prompt.history_used + prompt.history_dropped == len(past)
    # what is kept is the newest history, in order, with neighbouring turns of one role joined (they alternate)
    tail = past[len(past) - prompt.history_used :]
    kept = [
        ChatTurn(m.role, (m.author_name + ": " if shared and m.role is Role.USER else "") + m.content)
        for m in tail
    ]
    assert list(prompt.turns) == alternating([ChatTurn(Role.SYSTEM, SYSTEM), *kept, current_turn])
    roles = [t.role for t in prompt.turns[1:]]
    assert all(a is not b for a, b in itertools.pairwise(roles))
