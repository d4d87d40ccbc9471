"""Prompt building: the system prompt, as much recent history as fits, and the current message.

Token counts come from the model's own tokenizer and chat template (``ChatTokenizer``). The budget is the context
length minus ``max_new_tokens``; history is taken newest-first until the next turn would not fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bot.domain import ChatTurn, MessageStatus, Role
from bot.errors import BotError
from bot.ports import ChatTokenizer
from bot.quoting import with_quote
from bot.store.conversations import StoredMessage


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
    """Fit the newest history between the system prompt and the current message, within the budget."""
    budget = tokenizer.context_length - max_new_tokens
    system = ChatTurn(Role.SYSTEM, system_prompt)
    required = tokenizer.count_tokens([system, current])
    if required > budget:
        raise PromptTooLong(required, budget)

    chosen = _newest_that_fit(history, budget - required, tokenizer, show_names=show_names)
    turns = alternating([system, *chosen, current])
    total = tokenizer.count_tokens(turns)
    while total > budget and chosen:  # per-turn counts are an estimate; the full render is the truth
        chosen.pop(0)
        turns = alternating([system, *chosen, current])
        total = tokenizer.count_tokens(turns)
    return BuiltPrompt(tuple(turns), total, len(chosen), len(history) - len(chosen))


def _newest_that_fit(
    history: Sequence[StoredMessage], room: int, tokenizer: ChatTokenizer, *, show_names: bool
) -> list[ChatTurn]:
    chosen: list[ChatTurn] = []
    for message in reversed(history):
        turn = speaker_turn(message, show_names=show_names)
        cost = turn_cost(turn, tokenizer)
        if cost > room:
            break
        room -= cost
        chosen.append(turn)
    chosen.reverse()
    return chosen


def turn_cost(turn: ChatTurn, tokenizer: ChatTokenizer) -> int:
    """Tokens one turn adds to a rendered conversation (its header, content and end-of-turn marker)."""
    return tokenizer.count_tokens([turn], add_generation_prompt=False)
