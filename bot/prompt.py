"""Prompt building: the system prompt, recent history, and the current message.

Token counts come from the model's own tokenizer and chat template (``ChatTokenizer``): each history turn's count is
the one stored with it (counted once, when it was stored: ``turn_cost`` of the turn as the model sees it), the
current message's is handed in by the caller, and the tokenizer renders the whole prompt once, as the truth the
estimates are checked against. The budget is the context length minus ``max_new_tokens``. While the whole history fits, all of it is sent. When it does not, old turns are
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
    current_cost: int | None = None,
) -> BuiltPrompt:
    """The newest history that fits between the system prompt and the current message, trimmed in large steps.

    ``current_cost``: the current turn's ``turn_cost`` when the caller has it (counted when it was stored)."""
    budget = tokenizer.context_length - max_new_tokens
    system = ChatTurn(Role.SYSTEM, system_prompt)
    system_cost = _cached_count(cast(Hashable, tokenizer), (system,), True)  # with the reply's header
    if current_cost is None:
        current_cost = turn_cost(current, tokenizer)
    if system_cost + current_cost > budget:  # an estimate: render the two to be sure before refusing
        required = tokenizer.count_tokens([system, current])
        if required > budget:
            raise PromptTooLong(required, budget)

    past = [speaker_turn(message, show_names=show_names) for message in history]
    costs = [stored_cost(message, turn, tokenizer) for message, turn in zip(history, past, strict=True)]
    room = budget - system_cost  # for the history and the current message
    chosen = past[stable_start(costs, current_cost, room) :]
    turns = alternating([system, *chosen, current])
    total = tokenizer.count_tokens(turns)
    while total > budget and chosen:  # per-turn counts are an estimate; the full render is the truth
        chosen.pop(0)
        turns = alternating([system, *chosen, current])
        total = tokenizer.count_tokens(turns)
    if total > budget:
        raise PromptTooLong(total, budget)
    return BuiltPrompt(tuple(turns), total, len(chosen), len(history) - len(chosen))


def stored_cost(message: StoredMessage, turn: ChatTurn, tokenizer: ChatTokenizer) -> int:
    """A history turn's tokens: the count stored with it (``turn_cost`` of the turn as the model sees it, counted
    when it was stored), else counted now: a turn not counted yet (0), or a reply shown with the cut-off mark."""
    cut_off = message.role is Role.ASSISTANT and message.status is MessageStatus.INCOMPLETE
    if message.token_count > 0 and not cut_off:
        return message.token_count
    return turn_cost(turn, tokenizer)


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
    return _cached_count(cast(Hashable, tokenizer), (turn,), False)


def _cached_count(tokenizer: Hashable, turns: tuple[ChatTurn, ...], add_generation_prompt: bool) -> int:
    try:
        return _count(tokenizer, turns, add_generation_prompt)
    except TypeError:  # a tokenizer that cannot be a cache key
        return cast(ChatTokenizer, tokenizer).count_tokens(turns, add_generation_prompt=add_generation_prompt)


@lru_cache(maxsize=8192)
def _count(tokenizer: Hashable, turns: tuple[ChatTurn, ...], add_generation_prompt: bool) -> int:
    """A system prompt, or a turn stored without a count, is counted once however many prompts it is in."""
    return cast(ChatTokenizer, tokenizer).count_tokens(turns, add_generation_prompt=add_generation_prompt)
