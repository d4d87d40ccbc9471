"""The static decoder's construction, step by step (warm-up, KV plan, allocation with retry, graphs, warm burst):
on the CPU the steps give the decoder the plan asked for, and an allocation that runs out of memory is tried again
with a tenth fewer blocks, after which the decoder serves the same tokens."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
from transformers import LlamaForCausalLM

from bot.domain import GenerationParams
from inference.decoder import SlotRequest
from inference.fast import StaticSlotDecoder
from inference.fast.model import FastLlama
from tests.inference.test_fast_decoder import tiny_config

GREEDY = GenerationParams(max_new_tokens=8, do_sample=False, repetition_penalty=1.0)
PROMPT = tuple(range(5, 40))


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_config()).eval()


def tokens(dec: StaticSlotDecoder) -> list[int]:
    out = [dec.admit(SlotRequest(0, PROMPT, GREEDY))]
    while len(out) < GREEDY.max_new_tokens:
        out.append(dec.step()[0])
    dec.release(0)
    return out


def test_the_steps_build_the_plan_asked_for(model: LlamaForCausalLM) -> None:
    dec = StaticSlotDecoder(model, capacity=3, block_size=16, max_context=256, buckets=(2, 3))
    assert dec.pool.num_blocks == 3 * 16 + 1  # every slot at full context (no budget on the CPU), plus one
    assert dec.kv_tokens == (dec.pool.num_blocks - 1) * 16
    assert dec.buckets == (2, 3) and dec.model_intact and not dec._graphs
    assert dec.max_request_tokens == 256


def test_an_allocation_out_of_memory_is_retried_with_fewer_blocks(
    model: LlamaForCausalLM, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    expected = tokens(StaticSlotDecoder(model, capacity=2, block_size=16, max_context=256))
    real = FastLlama.allocate_kv
    sizes: list[int] = []

    def fails_first(self: FastLlama, num_blocks: int, *args: Any, **kwargs: Any) -> Any:
        if num_blocks > 2:  # not the warm-up's scratch cache
            sizes.append(num_blocks)
        if len(sizes) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return real(self, num_blocks, *args, **kwargs)

    monkeypatch.setattr(FastLlama, "allocate_kv", fails_first)
    with caplog.at_level(logging.WARNING, logger="inference.fast.decoder"):
        dec = StaticSlotDecoder(model, capacity=2, block_size=16, max_context=256)
    assert sizes == [33, int(33 * 0.9)]
    assert dec.pool.num_blocks == 29
    assert "retrying with 29 blocks" in caplog.text
    assert tokens(dec) == expected


def test_an_allocation_that_never_fits_raises(
    model: LlamaForCausalLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = FastLlama.allocate_kv

    def never(self: FastLlama, num_blocks: int, *args: Any, **kwargs: Any) -> Any:
        if num_blocks <= 2:  # the warm-up's scratch cache
            return real(self, num_blocks, *args, **kwargs)
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(FastLlama, "allocate_kv", never)
    with pytest.raises(torch.OutOfMemoryError):
        StaticSlotDecoder(model, capacity=2, block_size=16, max_context=256)
