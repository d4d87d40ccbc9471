"""The seam between the engine's scheduler and the model: a batch decoder that owns the KV memory.

The LocalEngine's worker thread is the only caller. Each step it admits waiting requests into free slots
(``admit`` runs their prefill and samples their first token), then calls ``step`` once, which decodes one token for
every active slot in one batched forward (a pipelined decoder returns them one call later: see ``step``). Requests
leave with ``release`` (finished, cancelled or failed). A decoder that ``prefills_in_steps`` takes
``submit`` instead of ``admit``: the prompt is prefilled in chunks inside the coming steps, beside the running rows.
Stopping rules (terminator tokens, max_new_tokens) live in the engine, sampling lives here (it needs the logits and
each slot's token history for the repetition penalty).

Two implementations: ``inference.hf_decoder`` (any transformers causal LM, CPU or GPU) and ``inference.fast``
(static KV slots and CUDA graphs for Llama-architecture models on a GPU).
"""

from __future__ import annotations

from collections.abc import Sequence
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
    """Everything the worker and the engine ask of a decoder. ``DecoderDefaults`` gives the optional capabilities
    a plain decoder lacks (no interleaved prefill, no adapter pool, nothing reserved ahead, nothing to close)."""

    @property
    def capacity(self) -> int:
        """How many slots can be active at once."""
        ...

    @property
    def prefills_in_steps(self) -> bool:
        """Whether ``submit`` is offered: a prompt queued there is prefilled in chunks inside the following steps,
        and its first token comes back from one of them."""
        ...

    @property
    def lora_slots(self) -> int:
        """How many LoRA adapters its own pool holds at once (0: none; the engine then swaps LoRAs in the model)."""
        ...

    @property
    def model_intact(self) -> bool:
        """Whether the transformers model still computes what this decoder serves (False after an FP8 build released
        its weights, or for a tensor-parallel slice): only then can the hf decoder take over."""
        ...

    def can_admit(self, prompt_len: int, max_new_tokens: int) -> bool:
        """Whether the KV memory has room now for a request of this size (else it waits, it does not fail)."""
        ...

    def can_admit_together(self, sizes: Sequence[tuple[int, int]]) -> bool:
        """Whether requests of these (prompt_len, max_new_tokens), the last one newest, all fit in the KV memory
        free now (they are admitted right after, so the decoder's own state does not count them yet)."""
        ...

    def admit(self, request: SlotRequest) -> int:
        """Prefill ``request`` into its slot and return its first sampled token id."""
        ...

    def submit(self, request: SlotRequest) -> None:
        """Queue ``request`` for prefill inside the coming steps (only when ``prefills_in_steps``)."""
        ...

    def step(self) -> dict[int, int]:
        """Decode one token for every active slot (and the first token of each prefill finished): {slot: token}.

        A decoder may pipeline its steps (``inference.fast``, on a GPU): it launches this step's work, then returns
        the tokens of the step launched by the previous call, so a slot's token may come back one call later and a
        call may return no token for an active slot. Each slot's tokens still come in order, one per step, and a
        token is never returned for a slot released since its step began (nor given to the next request in that
        slot). So the caller keeps calling ``step`` while it has active slots, and may release a slot as soon as its
        request ends: the one step computed ahead for it is dropped."""
        ...

    def take_prefill_failures(self) -> dict[int, BaseException]:
        """{slot: error} of the submitted prompts whose prefill failed inside ``step`` since the last call (their
        slots are already free)."""
        ...

    def release(self, slot: int) -> None:
        """Free the slot's KV memory (idempotent); a token of the slot not returned yet is dropped (see ``step``)."""
        ...

    def load_lora(self, key: str, path: str) -> None:
        """Copy the PEFT LoRA in folder ``path`` into the adapter pool under id ``key`` (``SlotRequest.lora``);
        raises ValueError (``AdapterSlotsFull`` when the pool is full)."""
        ...

    def retire_lora(self, key: str) -> None:
        """No new request may name ``key``; its pool slot is freed once no running request uses it."""
        ...

    def weights_changed(self) -> bool:
        """The model's weights changed (a LoRA switch): serve them from now on. False when this decoder cannot (it
        keeps its own copy of the weights): the engine then replaces it."""
        ...

    def close(self) -> None:
        """Give back what the decoder holds (KV memory, graphs; tensor-parallel followers stop). Idempotent."""
        ...


class DecoderDefaults:
    """The optional capabilities of ``BatchDecoder`` for a decoder that lacks them: prefill at admission only, no
    adapter pool, nothing reserved ahead (each request is asked about alone), weights it cannot follow, nothing to
    close. A decoder inherits this and overrides what it offers."""

    model_intact: bool = True

    @property
    def prefills_in_steps(self) -> bool:
        return False

    @property
    def lora_slots(self) -> int:
        return 0

    def can_admit(self, prompt_len: int, max_new_tokens: int) -> bool:
        raise NotImplementedError

    def can_admit_together(self, sizes: Sequence[tuple[int, int]]) -> bool:
        """Only the newest request is asked about: a decoder that reserves nothing ahead."""
        return not sizes or self.can_admit(*sizes[-1])

    def submit(self, request: SlotRequest) -> None:
        raise NotImplementedError(f"{type(self).__name__} prefills at admission (admit), not inside steps")

    def take_prefill_failures(self) -> dict[int, BaseException]:
        return {}

    def load_lora(self, key: str, path: str) -> None:
        raise ValueError("this decoder has no adapter slots (engine.lora_slots is 0)")

    def retire_lora(self, key: str) -> None:
        return None

    def weights_changed(self) -> bool:
        return False

    def close(self) -> None:
        return None
