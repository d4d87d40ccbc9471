"""engine.fp8_weights: the static decoder serves FP8 weights built from the loaded bf16/fp32 model.

On the CPU the FP8 matrices are dequantised for each product (the GPU reads them in its FP8 kernels, checked on the
GPU by test_fast_fp8.py), so the decoder must compute exactly what the model computes with each weight matrix
rounded to FP8 e4m3 with per-row scales: greedy output equals ``generate`` of that rounded model token for token.
The build releases the model's own matrices as it goes: adapters are served from the decoder's pool
(test_lora_fast_engine.py); without adapter slots the engine refuses a LoRA instead of falling back to a model that
has no weights left.
"""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from bot.errors import EngineError
from bot.settings import EngineSettings
from inference.fast import StaticSlotDecoder
from inference.fast.fp8 import Fp8Weight, quantize_fp8
from inference.local_engine import LocalEngine
from tests.inference.test_fast_decoder import (
    GREEDY,
    hf_greedy,
    prompts,
    run_decoder,
    sharp_tiny_llama,
)


def fp8_rounded(model: LlamaForCausalLM) -> LlamaForCausalLM:
    """A copy of ``model`` whose projection matrices are rounded through FP8 e4m3 (per-row scales)."""
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for module in rounded.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(quantize_fp8(module.weight).dequantize(module.weight.dtype))
    return rounded


@pytest.fixture
def model() -> LlamaForCausalLM:
    return sharp_tiny_llama()


def test_fp8_decoder_equals_generate_of_the_fp8_rounded_model(model: LlamaForCausalLM) -> None:
    reference = fp8_rounded(model)
    batch = prompts(4, (9, 40, 77, 3), model.config.vocab_size, seed=3)
    want = [hf_greedy(reference, p, GREEDY.max_new_tokens) for p in batch]
    original = [hf_greedy(model, p, GREEDY.max_new_tokens) for p in batch]
    dec = StaticSlotDecoder(model, fp8=True, capacity=2, block_size=16, prefill_chunk=48, max_context=512)
    got = run_decoder(dec, batch, GREEDY, stagger=2)
    assert got == want
    assert got != original  # the rounding is real: the FP8 model is a (slightly) different function
    layer = dec._weights.layers[0]
    assert isinstance(layer.qkv, Fp8Weight) and layer.qkv.data.dtype == torch.float8_e4m3fn
    assert isinstance(dec._weights.lm_head, Fp8Weight)
    # half the bytes of bf16 per matrix element (plus a float32 scale a row)
    n, k = layer.gate_up.shape
    assert layer.gate_up.nbytes() == n * k + 4 * n


def test_fp8_build_releases_the_models_matrices_and_the_engine_refuses_a_lora(
    model: LlamaForCausalLM, demo_model_dir: Path
) -> None:
    from transformers import AutoTokenizer

    dec = StaticSlotDecoder(model, fp8=True, capacity=2, max_context=256, lora_slots=0)
    assert not dec.model_intact
    assert model.model.layers[0].mlp.gate_proj.weight.numel() == 0  # the bf16 copy went to the FP8 one
    assert model.lm_head.weight.numel() == 0

    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)  # a chat template; no generation here
    engine = LocalEngine(
        model,
        tokenizer,
        engine=EngineSettings(decoder="static", fp8_weights=True, max_batch_size=2),
        decoder_factory=lambda _m, _s: dec,
    )

    async def switch() -> None:
        try:
            with pytest.raises(EngineError, match="lora_slots"):
                await engine.use_lora("v1")
        finally:
            await engine.aclose()

    asyncio.run(switch())
