"""The seam between the engine's scheduler and the model: a batch decoder that owns the KV memory.

The LocalEngine's worker thread is the only caller. Each step it admits waiting requests into free slots
(``admit`` runs their prefill and samples their first token), then calls ``step`` once, which decodes one token for
every active slot in one batched forward. Requests leave with ``release`` (finished, cancelled or failed).
Stopping rules (terminator tokens, max_new_tokens) live in the engine, sampling lives here (it needs the logits and
each slot's token history for the repetition penalty).

Two implementations: ``inference.hf_decoder`` (any transformers causal LM, CPU or GPU) and ``inference.fast``
(static KV slots and CUDA graphs for Llama-architecture models on a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bot.domain import GenerationParams


@dataclass(frozen=True)
class SlotRequest:
    slot: int
    prompt_ids: tuple[int, ...]
    params: GenerationParams
    # the LoRA this request is decoded with: the decoder's unique id of the loaded weights (a reload under the same
    # public name gets a new id), or None for the base model. Part of any KV-reuse key: an adapter changes the KV.
    lora: str | None = None


class AdapterSlotsFull(ValueError):
    """A decoder's adapter pool has no free slot: every one holds an adapter still named or in use."""


class BatchDecoder(Protocol):
    @property
    def capacity(self) -> int:
        """How many slots can be active at once."""
        ...

    def can_admit(self, prompt_len: int, max_new_tokens: int) -> bool:
        """Whether the KV memory has room now for a request of this size (else it waits, it does not fail)."""
        ...

    def admit(self, request: SlotRequest) -> int:
        """Prefill ``request`` into its slot and return its first sampled token id."""
        ...

    def step(self) -> dict[int, int]:
        """Decode one token for every active slot: {slot: token id}."""
        ...

    def release(self, slot: int) -> None:
        """Free the slot's KV memory (idempotent)."""
        ...
