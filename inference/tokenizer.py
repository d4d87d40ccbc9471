"""The model's own tokenizer and chat template, behind bot.ports.ChatTokenizer, and the terminators it declares."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from bot.domain import ChatTurn
from inference.detokenize import Detokenizer, detokenizer_for

_log = logging.getLogger(__name__)


class HFChatTokenizer:
    """Counts and encodes chat turns exactly as the model will see them (``apply_chat_template``)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, context_length: int) -> None:
        if tokenizer.chat_template is None:
            raise ValueError(
                "the tokenizer has no chat template; a chat model needs one (Llama-3's, for Bllossom)"
            )
        self._tokenizer = tokenizer
        self._context_length = context_length

    @classmethod
    def for_model(
        cls, tokenizer: PreTrainedTokenizerBase, model_config: Any, override: int | None = None
    ) -> HFChatTokenizer:
        """Context length from ``override`` (the setting) or else the model's ``max_position_embeddings``."""
        return cls(tokenizer, override or context_length_of(model_config))

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def hf(self) -> PreTrainedTokenizerBase:
        return self._tokenizer

    def count_tokens(self, turns: Sequence[ChatTurn], *, add_generation_prompt: bool = True) -> int:
        return len(self.encode(turns, add_generation_prompt=add_generation_prompt))

    def encode(self, turns: Sequence[ChatTurn], *, add_generation_prompt: bool = True) -> list[int]:
        messages = [{"role": str(turn.role), "content": turn.content} for turn in turns]
        ids = self._tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False
        )
        return [int(i) for i in ids]  # type: ignore[union-attr, arg-type]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=True))

    def detokenizer(self) -> Detokenizer:
        """A new reply's text as its tokens come (``tokenizers.DecodeStream`` for a fast tokenizer)."""
        return detokenizer_for(self._tokenizer, self.decode)


def context_length_of(model_config: Any) -> int:
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(text, name, None)
        if isinstance(value, int) and value > 0:
            return value
    _log.warning("the model config names no context length; assuming 2048 (set model.context_length)")
    return 2048


def stop_token_ids(
    tokenizer: PreTrainedTokenizerBase, generation_config: Any, model_config: Any
) -> frozenset[int]:
    """Every terminator the model declares: generation_config's eos ids (Llama-3: eot and end_of_text), the
    config's and the tokenizer's eos."""
    ids: set[int] = set()
    for source in (
        getattr(generation_config, "eos_token_id", None),
        getattr(model_config, "eos_token_id", None),
    ):
        ids.update(_as_ids(source))
    if tokenizer.eos_token_id is not None:
        ids.update(_as_ids(tokenizer.eos_token_id))
    for token in ("<|eot_id|>", "<|end_of_text|>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if (
            isinstance(token_id, int)
            and token_id != tokenizer.unk_token_id
            and token in tokenizer.get_vocab()
        ):
            ids.add(token_id)
    if not ids:
        _log.warning("the model declares no end-of-sequence token: replies stop only at max_new_tokens")
    return frozenset(ids)


def _as_ids(value: int | Iterable[int] | None) -> set[int]:
    if value is None:
        return set()
    if isinstance(value, int):
        return {value}
    return {int(v) for v in value}
