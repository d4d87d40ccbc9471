"""Chat examples to token ids and labels: the assistant-only loss on the model's own chat template.

The conversation is rendered once with ``apply_chat_template``; each trained assistant message's span is found by
rendering the conversation up to it (with the assistant header) and up to its end: the characters between the two are
its content and its end-of-turn token (``<|eot_id|>`` for Llama-3), which the model must learn to emit. The tokens
that fall inside those spans get labels; everything else (system prompt, user turns, headers, untrained assistant
turns) gets -100. Working on characters (via the fast tokenizer's offsets) rather than on separately tokenized
prefixes keeps the labels right even where a merge crosses a boundary.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def read_jsonl(path: str | Path) -> list[list[dict[str, Any]]]:
    """The ``messages`` of each line of a dataset file written by ``bot.learning.dataset``."""
    conversations = []
    with Path(path).open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                conversations.append(list(json.loads(line)["messages"]))
    return conversations


def _render(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, Any]], *, prompt: bool) -> str:
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    text = tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=prompt)
    assert isinstance(text, str)
    return text


def trained_spans(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, Any]]
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its trained assistant messages."""
    full = _render(tokenizer, messages, prompt=False)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        before = _render(tokenizer, messages[:index], prompt=True) if index else ""
        through = _render(tokenizer, messages[: index + 1], prompt=False)
        if not full.startswith(through) or not through.startswith(before):
            raise ValueError("the chat template does not render conversations as growing prefixes")
        spans.append((len(before), len(through)))
    return full, spans


def encode(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, Any]], max_len: int
) -> Encoded | None:
    """Token ids and labels of one conversation, cut to ``max_len``; None when nothing trainable is left.

    Too long: the oldest context turns (after the system prompt) are dropped first, then the end is cut.
    """
    messages = list(messages)
    while True:
        encoded = _encode_all(tokenizer, messages)
        if len(encoded.input_ids) <= max_len or not _can_drop_context(messages):
            break
        messages = _drop_oldest_turn(messages)
    encoded = Encoded(encoded.input_ids[:max_len], encoded.labels[:max_len])
    return encoded if encoded.trained_tokens else None


def _encode_all(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, Any]]) -> Encoded:
    text, spans = trained_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    for position, (start, end) in enumerate(enc["offset_mapping"]):
        if end > start and any(s <= start and end <= e for s, e in spans):
            labels[position] = ids[position]
    return Encoded(ids, labels)


def _can_drop_context(messages: Sequence[dict[str, Any]]) -> bool:
    first = 1 if messages and messages[0]["role"] == "system" else 0
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=first)
    return last_user > first


def _drop_oldest_turn(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    first = 1 if messages and messages[0]["role"] == "system" else 0
    rest = list(messages[first + 1 :])
    while rest and rest[0]["role"] != "user":  # keep the context starting with a user turn
        rest.pop(0)
    return [*messages[:first], *rest]
