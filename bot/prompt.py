"""Prompt building: the system prompt, recent history, and the current message.

Token counts come from the model's own tokenizer and chat template (``ChatTokenizer``). The budget is the context
length minus ``max_new_tokens``. While the whole history fits, all of it is sent. When it does not, old turns are
dropped in one large step, down to ``KEEP_AFTER_TRIM`` of the room, rather than one at a time: the prompt then starts
with the same turns for the next several messages, so each next prompt extends the one before and the engine reuses
its KV (prefix reuse, docs/gpu.md). Where the history starts is decided by replaying the conversation from its
oldest loaded turn with that rule, so it depends only on the history, not on what an earlier call chose.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import cast

from bot.domain import ChatTurn, MessageStatus, Role
from bot.errors import BotError
from bot.ports import ChatTokenizer
from bot.quoting import with_quote
from bot.store.conversations import StoredMessage

# after a trim, the history kept fills at most this share of the room, leaving the rest for the coming turns
KEEP_AFTER_TRIM = 0.75


class PromptTooLong(BotError):
    """The system prompt and the current message alone do not fit the budget."""

    user_text_key = "chat.too_long"

    def __init__(self, tokens: int, limit: int) -> None:
        super().__init__(f"prompt needs {tokens} tokens, budget is {limit}")
        self.tokens = tokens
        self.limit = limit


# How a reply that stopped early (a cancel, a shutdown, a kill) reads in later prompts: the model sees it was cut.
INCOMPLETE_MARK = " [… reply cut off]"


@dataclass(frozen=True)
class BuiltPrompt:
    turns: tuple[ChatTurn, ...]
    token_count: int
    history_used: int
    history_dropped: int


def speaker_turn(message: StoredMessage, *, show_names: bool, quote: bool = True) -> ChatTurn:
    """A stored message as the model sees it: in shared channels a user turn carries the speaker's name, and a
    reply the messages it replies to above it (``quote=False`` leaves those out)."""
    content = message.content
    if show_names and message.role is Role.USER and message.author_name:
        content = f"{message.author_name}: {content}"
    if message.role is Role.ASSISTANT and message.status is MessageStatus.INCOMPLETE:
        content += INCOMPLETE_MARK
    return ChatTurn(message.role, with_quote(message.quoted if quote else None, content))


def alternating(turns: Sequence[ChatTurn]) -> list[ChatTurn]:
    """Neighbouring turns of one role joined into one, so user and assistant turns alternate (a message left
    unanswered, or two people writing before the bot answered, would otherwise give two user turns in a row)."""
    merged: list[ChatTurn] = []
    for turn in turns:
        if merged and merged[-1].role is turn.role and turn.role is not Role.SYSTEM:
            merged[-1] = ChatTurn(turn.role, f"{merged[-1].content}\n\n{turn.content}")
        else:
            merged.append(turn)
    return merged


def build_prompt(
    *,
    system_prompt: str,
    history: Sequence[StoredMessage],
    current: ChatTurn,
    tokenizer: ChatTokenizer,
    max_new_tokens: int,
    show_names: bool,
) -> BuiltPrompt:
    """The newest history that fits between the system prompt and the current message, trimmed in large steps."""
    budget = tokenizer.context_length - max_new_tokens
    system = ChatTurn(Role.SYSTEM, system_prompt)
    required = tokenizer.count_tokens([system, current])
    if required > budget:
        raise PromptTooLong(required, budget)

    past = [speaker_turn(message, show_names=show_names) for message in history]
    costs = [turn_cost(turn, tokenizer) for turn in past]
    room = budget - tokenizer.count_tokens([system])  # for the history and the current message
    chosen = past[stable_start(costs, turn_cost(current, tokenizer), room) :]
    turns = alternating([system, *chosen, current])
    total = tokenizer.count_tokens(turns)
    while total > budget and chosen:  # per-turn counts are an estimate; the full render is the truth
        chosen.pop(0)
        turns = alternating([system, *chosen, current])
        total = tokenizer.count_tokens(turns)
    return BuiltPrompt(tuple(turns), total, len(chosen), len(history) - len(chosen))


def stable_start(costs: Sequence[int], current: int, room: int) -> int:
    """Index of the first history turn to send: the conversation replayed from its first turn, each turn added in
    order, and whenever the turns kept (with the one just added) outgrow ``room``, the oldest dropped until they
    fill at most ``KEEP_AFTER_TRIM`` of it. Last, the current message is added the same way.

    Adding turns at the end moves the start only when they overflow the room again, so consecutive prompts share
    their beginning for about a quarter of the room's worth of new turns."""
    keep = int(room * KEEP_AFTER_TRIM)
    start, total = 0, 0
    for end, cost in enumerate(costs):
        total += cost
        if total > room:
            while start <= end and total > keep:
                total -= costs[start]
                start += 1
    if total + current > room:
        while start < len(costs) and total + current > keep:
            total -= costs[start]
            start += 1
    return start


def turn_cost(turn: ChatTurn, tokenizer: ChatTokenizer) -> int:
    """Tokens one turn adds to a rendered conversation (its header, content and end-of-turn marker)."""
    try:
        return _cached_turn_cost(cast(Hashable, tokenizer), turn)
    except TypeError:  # a tokenizer that cannot be a cache key
        return tokenizer.count_tokens([turn], add_generation_prompt=False)


@lru_cache(maxsize=8192)
def _cached_turn_cost(tokenizer: Hashable, turn: ChatTurn) -> int:
    """Each prompt replays the loaded history (up to hundreds of turns): each turn is counted once."""
    return cast(ChatTokenizer, tokenizer).count_tokens([turn], add_generation_prompt=False)
