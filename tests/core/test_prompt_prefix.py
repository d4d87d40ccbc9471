"""Trimming keeps the prefix: once a conversation outgrows the budget, old turns are dropped in large steps, so the
prompts of the next turns extend one another (the engine reuses their KV) instead of each dropping one more turn.

With the demo model's tokenizer and chat template (token ids compared) and with a character counter."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.domain import ChatTurn, MessageStatus, Role
from bot.prompt import KEEP_AFTER_TRIM, BuiltPrompt, build_prompt, stable_start
from bot.store.conversations import StoredMessage
from tests.fakes import CharTokenizer

SYSTEM = "You are a helpful AI assistant. 당신은 유능한 AI 어시스턴트 입니다."
MAX_NEW = 64
WORDS = [
    "회의",
    "일정",
    "deploy",
    "the",
    "server",
    "내일",
    "오후",
    "review",
    "please",
    "확인",
    "부탁",
    "thanks",
]


def stored(i: int, role: Role, content: str) -> StoredMessage:
    return StoredMessage(
        id=i,
        conversation_id=1,
        role=role,
        author_id="u1" if role is Role.USER else None,
        author_name="민수" if role is Role.USER else None,
        content=content,
        token_count=0,
        status=MessageStatus.COMPLETE,
        platform_message_id=None,
        created_at=datetime.now(UTC),
    )


def text(i: int, n: int) -> str:
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(n))


@pytest.fixture(scope="module", params=["demo-tokenizer", "char-counter"])
def tokenizer(request: pytest.FixtureRequest) -> object:
    if request.param == "char-counter":
        return CharTokenizer(context_length=2048)
    from transformers import AutoTokenizer

    from inference.tokenizer import HFChatTokenizer

    demo_dir: Path = request.getfixturevalue("demo_model_dir")
    # the demo tokenizer spends about a token a byte on Korean: a longer context holds as many turns
    return HFChatTokenizer(AutoTokenizer.from_pretrained(demo_dir), context_length=4096)


def conversation(tokenizer: object, turns: int) -> list[BuiltPrompt]:
    """``turns`` messages of varying length, each answered; the prompt each message was sent with."""
    history: list[StoredMessage] = []
    built = []
    for t in range(turns):
        current = stored(2 * t, Role.USER, text(t, 4 + (t * 5) % 11))
        prompt = build_prompt(
            system_prompt=SYSTEM,
            history=history,
            current=ChatTurn(Role.USER, f"민수: {current.content}"),
            tokenizer=tokenizer,  # type: ignore[arg-type]
            max_new_tokens=MAX_NEW,
            show_names=True,
        )
        built.append(prompt)
        history += [current, stored(2 * t + 1, Role.ASSISTANT, text(t + 100, 8 + (t * 11) % 17))]
    return built


def test_next_prompts_extend_the_previous_ones(tokenizer: object) -> None:
    prompts = conversation(tokenizer, 80)
    assert prompts[0].history_dropped == 0 and prompts[-1].history_dropped > 20  # it outgrew the budget
    extends = [_starts_with(tokenizer, b.turns, a.turns) for a, b in itertools.pairwise(prompts)]
    breaks = extends.count(False)
    trimmed_turns = sum(1 for p in prompts if p.history_dropped)
    # a break is a large step: several turns go at once, so breaks are few beside the turns that were trimmed
    assert 1 <= breaks <= trimmed_turns // 3, (breaks, trimmed_turns)
    for (before, after), same in zip(itertools.pairwise(prompts), extends, strict=True):
        if not same:  # after a break the budget has room for the turns to come
            budget = tokenizer.context_length - MAX_NEW  # type: ignore[attr-defined]
            assert after.history_dropped > before.history_dropped
            assert after.token_count <= budget
        assert after.token_count <= tokenizer.context_length - MAX_NEW  # type: ignore[attr-defined]


def _starts_with(tokenizer: object, longer: tuple[ChatTurn, ...], shorter: tuple[ChatTurn, ...]) -> bool:
    """Whether the longer prompt begins with every token of the shorter one (chat template and generation header
    included: the reply follows the header in the next prompt)."""
    encode = getattr(tokenizer, "encode", None)
    if encode is None:  # the character counter: compare the turns
        return longer[: len(shorter)] == shorter
    a, b = encode(list(shorter)), encode(list(longer))
    return bool(b[: len(a)] == a)


def test_everything_is_kept_while_it_fits() -> None:
    assert stable_start([10, 10, 10], 5, room=100) == 0
    assert stable_start([], 50, room=100) == 0


def test_a_trim_drops_down_to_three_quarters_of_the_room() -> None:
    costs = [10] * 10  # with the current message: 110 > 100
    start = stable_start(costs, 10, room=100)
    assert sum(costs[start:]) + 10 <= 100 * KEEP_AFTER_TRIM < sum(costs[start - 1 :]) + 10
    # the next turn (this message and its reply, then a new message) keeps that start...
    assert stable_start([*costs, 10, 10], 10, room=100) == start
    # ...until the turns fill the room again
    assert stable_start([*costs, 10, 10, 10, 10], 10, room=100) > start


def test_a_turn_larger_than_the_room_is_dropped_whole() -> None:
    assert stable_start([10, 500, 10], 10, room=100) == 2
    assert stable_start([10, 10], 90, room=100) == 2  # a long current message leaves no room for history
