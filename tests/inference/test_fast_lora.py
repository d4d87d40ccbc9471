"""LoRA adapters in the fast decoder (inference.fast.lora): unmerged, one per request, in a fixed pool.

CPU, float32, a tiny Llama: greedy tokens with an adapter equal the PEFT model's ``generate`` with that adapter; a
batch mixing two adapters and the base gives every request its tokens alone; FP8 base weights against the PEFT model
whose base matrices are rounded to FP8; loading an adapter copies into the pool (no graph capture, same tensors);
adapters of smaller rank, reloads and retirement. The Triton kernels run under the Triton interpreter in a child
pytest (as test_fast_fp8.py does). GPU (skipped on CPU): 2 layers at the 70B widths with a rank-16 adapter, logits
within bf16 tolerance of the eager PEFT forward over 32 steps; loading adds no graph capture.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaForCausalLM

from bot.domain import GenerationParams
from inference.decoder import SlotRequest
from inference.fast import StaticSlotDecoder
from inference.fast.lora import UnsupportedAdapter, add_rows_ref, read_peft_adapter
from tests.inference.test_fast_decoder import (
    GREEDY,
    config_70b_widths,
    hf_greedy,
    prompts,
    sharp_tiny_llama,
)
from tests.inference.test_fast_fp8_decoder import fp8_rounded
from tests.inference.triton_interp import CUDA, INTERPRET, kernel_device, patch_interpreter

REPO = Path(__file__).resolve().parents[2]
ALL_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]


tiny_model = sharp_tiny_llama


def save_adapter(
    base: LlamaForCausalLM,
    folder: Path,
    seed: int,
    r: int = 8,
    modules: list[str] | None = None,
    std: float = 0.06,
    **config: object,
) -> PeftModel:
    """A random LoRA (A and B nonzero, so it changes the output) saved as PEFT does; returns the PEFT model."""
    peft = get_peft_model(
        copy.deepcopy(base),
        LoraConfig(r=r, lora_alpha=2 * r, target_modules=modules or ALL_MODULES, **config),  # type: ignore[arg-type]
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    peft.save_pretrained(folder)
    return peft.eval()  # type: ignore[return-value]


def decode_alone(dec: StaticSlotDecoder, p: list[int], lora: str | None, n: int) -> list[int]:
    params = GenerationParams(max_new_tokens=n, do_sample=False, repetition_penalty=1.0)
    out = [dec.admit(SlotRequest(0, tuple(p), params, lora=lora))]
    while len(out) < n:
        out.append(dec.step()[0])
    dec.release(0)
    return out


@pytest.fixture(scope="module")
def base() -> LlamaForCausalLM:
    return tiny_model()


@pytest.fixture(scope="module")
def adapters(
    base: LlamaForCausalLM, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, PeftModel]]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a": (root / "a", save_adapter(base, root / "a", seed=1)),
        "b": (
            root / "b",
            save_adapter(base, root / "b", seed=2, r=4, use_rslora=True),
        ),  # smaller rank, rsLoRA
    }


def test_greedy_with_an_adapter_equals_peft_generate(
    base: LlamaForCausalLM, adapters: dict[str, tuple[Path, PeftModel]]
) -> None:
    batch = prompts(3, (9, 70, 33), base.config.vocab_size, seed=11)
    dec = StaticSlotDecoder(
        copy.deepcopy(base),
        capacity=3,
        block_size=16,
        prefill_chunk=48,
        max_context=512,
        lora_slots=2,
        lora_max_rank=8,
    )
    for name, (path, _) in adapters.items():
        dec.load_lora(name, str(path))
    plain = [hf_greedy(base, p, GREEDY.max_new_tokens) for p in batch]
    for name, (_, peft) in adapters.items():
        want = [hf_greedy(peft, p, GREEDY.max_new_tokens) for p in batch]  # type: ignore[arg-type]
        assert want != plain  # the adapter really changes the reply
        got = [decode_alone(dec, p, name, GREEDY.max_new_tokens) for p in batch]
        assert got == want, name
    assert [decode_alone(dec, p, None, GREEDY.max_new_tokens) for p in batch] == plain


def run_mixed(dec: StaticSlotDecoder, jobs: list[tuple[list[int], str | None]], n: int) -> list[list[int]]:
    """Every job admitted at once (their prefills in one pass), then decoded together."""
    params = GenerationParams(max_new_tokens=n, do_sample=False, repetition_penalty=1.0)
    first = dec.admit_many([SlotRequest(i, tuple(p), params, lora=lora) for i, (p, lora) in enumerate(jobs)])
    out = {i: [first[i]] for i in range(len(jobs))}
    while any(len(v) < n for v in out.values()):
        for slot, tok in dec.step().items():
            out[slot].append(tok)
    for i in range(len(jobs)):
        dec.release(i)
    return [out[i][:n] for i in range(len(jobs))]


def test_a_mixed_batch_gives_each_request_its_tokens_alone(
    base: LlamaForCausalLM, adapters: dict[str, tuple[Path, PeftModel]]
) -> None:
    ps = prompts(5, (12, 40, 7, 25, 60), base.config.vocab_size, seed=12)
    jobs: list[tuple[list[int], str | None]] = [
        (ps[0], "a"),
        (ps[1], None),
        (ps[2], "b"),
        (ps[3], "a"),
        (ps[4], None),
    ]
    dec = StaticSlotDecoder(
        copy.deepcopy(base), capacity=5, block_size=16, max_context=256, lora_slots=2, lora_max_rank=8
    )
    dec.load_lora("a", str(adapters["a"][0]))
    dec.load_lora("b", str(adapters["b"][0]))
    alone = [decode_alone(dec, p, lora, 16) for p, lora in jobs]
    assert alone[0] != decode_alone(dec, ps[0], None, 16)
    assert run_mixed(dec, jobs, 16) == alone
    # against PEFT too (its own generate per request)
    for (p, lora), got in zip(jobs, alone, strict=True):
        model = adapters[lora][1] if lora else base
        assert got == hf_greedy(model, p, 16)  # type: ignore[arg-type]


def test_fp8_base_with_an_adapter_equals_peft_on_the_fp8_rounded_model(
    adapters: dict[str, tuple[Path, PeftModel]],
) -> None:
    model = tiny_model()
    path = adapters["a"][0]
    rounded = fp8_rounded(model)
    reference = PeftModel.from_pretrained(copy.deepcopy(rounded), str(path)).eval()
    with (
        torch.no_grad()
    ):  # PEFT saved the unrounded head beside the adapter and loaded it back: round it again
        reference.get_base_model().lm_head.base_layer.weight.copy_(rounded.lm_head.weight)
    batch = prompts(3, (9, 40, 3), model.config.vocab_size, seed=13)
    want = [hf_greedy(reference, p, 16) for p in batch]  # type: ignore[arg-type]
    dec = StaticSlotDecoder(model, fp8=True, capacity=3, block_size=16, max_context=256, lora_slots=1)
    dec.load_lora("a", str(path))
    assert [decode_alone(dec, p, "a", 16) for p in batch] == want
    jobs: list[tuple[list[int], str | None]] = [(batch[0], "a"), (batch[1], None), (batch[2], "a")]
    mixed = run_mixed(dec, jobs, 16)
    assert mixed[0] == want[0] and mixed[2] == want[2]
    assert mixed[1] == hf_greedy(rounded, batch[1], 16)


def test_loading_copies_into_the_pool_without_capturing_or_reallocating(
    base: LlamaForCausalLM, adapters: dict[str, tuple[Path, PeftModel]], tmp_path: Path
) -> None:
    dec = StaticSlotDecoder(copy.deepcopy(base), capacity=2, block_size=16, max_context=128, lora_slots=2)
    pool = dec.lora_pool
    assert pool is not None
    before = [t.data_ptr() for ts in (*pool.a.values(), *pool.b.values()) for t in ts]
    captures = dec.graph_captures
    p = prompts(1, (20,), base.config.vocab_size, seed=14)[0]
    dec.load_lora("a", str(adapters["a"][0]))
    first = decode_alone(dec, p, "a", 10)
    # a reload of the same adapter under a new id while a request still uses the old one; then the old is retired
    params = GenerationParams(max_new_tokens=10, do_sample=False, repetition_penalty=1.0)
    dec.admit(SlotRequest(1, tuple(p), params, lora="a"))
    dec.load_lora("a#2", str(adapters["b"][0]))
    dec.retire_lora("a")
    assert "a" in dec.adapters  # still in use by slot 1
    with pytest.raises(ValueError, match="not loaded"):
        dec.admit(SlotRequest(0, tuple(p), params, lora="a"))
    with pytest.raises(ValueError, match="adapter slots"):
        dec.load_lora("c", str(adapters["a"][0]))
    dec.release(1)
    assert dec.adapters == ["a#2"]
    dec.load_lora("c", str(adapters["a"][0]))  # the retired slot is free again
    assert decode_alone(dec, p, "c", 10) == first
    assert decode_alone(dec, p, "a#2", 10) != first
    after = [t.data_ptr() for ts in (*pool.a.values(), *pool.b.values()) for t in ts]
    assert after == before and dec.graph_captures == captures
    # refusals: a rank above the pool's, a module the decoder does not adapt, no adapter at all
    high = save_adapter(base, tmp_path / "r32", seed=3, r=32)
    del high
    with pytest.raises(UnsupportedAdapter, match="rank 32"):
        dec.load_lora("high", str(tmp_path / "r32"))
    save_adapter(base, tmp_path / "emb", seed=4, modules=["embed_tokens", "q_proj"])
    with pytest.raises(UnsupportedAdapter, match="embed_tokens"):
        read_peft_adapter(tmp_path / "emb")
    with pytest.raises(UnsupportedAdapter):
        read_peft_adapter(tmp_path / "missing")
    assert dec.adapters == ["a#2", "c"]


def test_only_some_modules_adapted(base: LlamaForCausalLM, tmp_path: Path) -> None:
    peft = save_adapter(base, tmp_path / "attn", seed=5, modules=["q_proj", "v_proj", "down_proj"])
    dec = StaticSlotDecoder(copy.deepcopy(base), capacity=1, block_size=16, max_context=128, lora_slots=1)
    dec.load_lora("attn", str(tmp_path / "attn"))
    p = prompts(1, (30,), base.config.vocab_size, seed=15)[0]
    assert decode_alone(dec, p, "attn", 16) == hf_greedy(peft, p, 16)  # type: ignore[arg-type]


# ---- the Triton kernels ------------------------------------------------------------------------------------------


def _kernel_case(
    rows: int, k: int, outs: tuple[int, ...], rank: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(rows * 7 + k)
    slots, n = 3, sum(outs)
    x = torch.randn(rows, k, generator=g).to(device, dtype)
    y = torch.randn(rows, n, generator=g).to(device, dtype)
    a = (torch.randn(slots, len(outs) * rank, k, generator=g) * 0.1).to(device, dtype)
    b = (torch.randn(slots, rank, n, generator=g) * 0.1).to(device, dtype)
    index = torch.tensor([((i + 1) % (slots + 1)) - 1 for i in range(rows)], dtype=torch.int32, device=device)
    return x, y, a, b, index


@pytest.mark.skipif(
    not (INTERPRET or CUDA), reason="runs under the Triton interpreter in the child test below"
)
@pytest.mark.parametrize(
    ("rows", "k", "outs", "rank"),
    [(1, 64, (64, 16, 16), 8), (5, 300, (96,), 16), (7, 1030, (40, 40), 4), (16, 64, (384,), 16)],
)
def test_kernels_equal_the_torch_reference(rows: int, k: int, outs: tuple[int, ...], rank: int) -> None:
    from inference.fast.lora import _block_n
    from inference.fast.lora_kernels import lora_shrink_expand

    device = kernel_device()
    x, y, a, b, index = _kernel_case(rows, k, outs, rank, torch.float32, device)
    want = y.clone()
    add_rows_ref(x, want, a, b, index, outs, rank)
    got = y.clone()
    lora_shrink_expand(x, got, a, b, index, outs, rank, _block_n(outs))
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), float((got - want).abs().max())
    base_rows = index < 0
    assert torch.equal(got[base_rows], y[base_rows])  # rows of the base model untouched
    assert not torch.allclose(got[~base_rows], y[~base_rows])


@pytest.mark.skipif(
    not (INTERPRET or CUDA), reason="runs under the Triton interpreter in the child test below"
)
@pytest.mark.parametrize(("rows", "k", "ff", "rank"), [(1, 64, 160, 8), (6, 300, 256, 16)])
def test_kernels_fused_expand_silu_equals_expand_then_silu(rows: int, k: int, ff: int, rank: int) -> None:
    from inference.fast.lora_kernels import lora_expand_silu, lora_shrink, new_partial
    from inference.fast.ops import silu_mul_ref

    device = kernel_device()
    x, y, a, b, index = _kernel_case(rows, k, (ff, ff), rank, torch.float32, device)
    want = y.clone()
    add_rows_ref(x, want, a, b, index, (ff, ff), rank)
    partial = new_partial(x, a)
    lora_shrink(x, a, index, partial)
    got = lora_expand_silu(partial, y, b, index, rank)
    assert torch.allclose(got, silu_mul_ref(want), rtol=1e-4, atol=1e-4), float(
        (got - silu_mul_ref(want)).abs().max()
    )
    assert not torch.allclose(got, silu_mul_ref(y), rtol=1e-4, atol=1e-4)  # the adapters' product is in it


@pytest.mark.skipif(
    not (INTERPRET or CUDA), reason="runs under the Triton interpreter in the child test below"
)
@pytest.mark.parametrize(("rows", "heads", "kv", "head_dim", "rank"), [(1, 4, 2, 8, 8), (5, 8, 2, 16, 16)])
def test_kernels_fused_rope_store_equals_expand_then_rope(
    rows: int, heads: int, kv: int, head_dim: int, rank: int
) -> None:
    from inference.fast.lora_kernels import lora_rope_store, lora_shrink, new_partial
    from inference.fast.ops import rope_store_ref

    device = kernel_device()
    outs = (heads * head_dim, kv * head_dim, kv * head_dim)
    x, qkv, a, b, index = _kernel_case(rows, 48, outs, rank, torch.float32, device)
    g = torch.Generator().manual_seed(5)
    positions = torch.randint(0, 30, (rows,), generator=g).to(device)
    angles = torch.arange(32)[:, None].float() * torch.rand(head_dim // 2, generator=g)[None, :]
    cos, sin = angles.cos().to(device), angles.sin().to(device)
    slots = torch.randperm(4 * 16, generator=g)[:rows].to(device)

    def caches() -> tuple[torch.Tensor, torch.Tensor]:
        return (
            torch.zeros(4, kv, 16, head_dim, device=device),
            torch.zeros(4, kv, 16, head_dim, device=device),
        )

    want_qkv = qkv.clone()
    add_rows_ref(x, want_qkv, a, b, index, outs, rank)
    k_want, v_want = caches()
    q_want = rope_store_ref(want_qkv, positions, cos, sin, k_want, v_want, slots, heads, kv, head_dim)
    partial = new_partial(x, a)
    lora_shrink(x, a, index, partial)
    k_got, v_got = caches()
    q_got = lora_rope_store(
        partial, qkv, b, index, rank, positions, cos, sin, k_got, v_got, slots, heads, kv, head_dim
    )
    for got, want in ((q_got, q_want), (k_got, k_want), (v_got, v_want)):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), float((got - want).abs().max())
    k_base, v_base = caches()
    rope_store_ref(qkv.clone(), positions, cos, sin, k_base, v_base, slots, heads, kv, head_dim)
    assert not torch.allclose(v_got, v_base)  # the adapters' product is in it


def _mixed_index(rows: int, slots: int, pattern: str, device: torch.device) -> torch.Tensor:
    """Each row's pool index: "mixed" (every slot and the base, shuffled), "one" (every row on the last slot), "base"
    (no adapter at all)."""
    if pattern == "base":
        values = [-1] * rows
    elif pattern == "one":
        values = [slots - 1] * rows
    else:
        values = [(i % (slots + 1)) - 1 for i in range(rows)]
        order = torch.randperm(rows, generator=torch.Generator().manual_seed(rows))
        values = [values[i] for i in order.tolist()]
    return torch.tensor(values, dtype=torch.int32, device=device)


def _shrunk(x: torch.Tensor, a: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The shrink's output, its buffer filled with NaN first: an expand that read a base row's rank values or a
    padding column would carry the NaN into its output."""
    from inference.fast.lora_kernels import lora_shrink, new_partial

    partial = new_partial(x, a).fill_(float("nan"))
    lora_shrink(x, a, index, partial)
    return partial


def _folded(x: torch.Tensor, a: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The fold's output for A stack ``a`` [slots, J, k]: [rows, slots·J] float32 with each adapted row's x·A at its
    own slot's columns and NaN everywhere else (the other slots' values, which the fold computes for the batch's
    slots, are never to be read: a NaN read there reaches the output)."""
    slots, j, _k = a.shape
    out = torch.full((x.shape[0], slots * j), float("nan"), device=x.device)
    for row, slot in enumerate(index.tolist()):
        if slot >= 0:
            out[row, slot * j : (slot + 1) * j] = a[slot].float() @ x[row].float()
    return out


@pytest.mark.skipif(
    not (INTERPRET or CUDA), reason="runs under the Triton interpreter in the child test below"
)
@pytest.mark.parametrize(
    ("rows", "pattern", "rank", "k", "sums_from", "source"),
    [
        (64, "mixed", 16, 300, None, "shrink"),  # 4 row blocks of 16, 3 adapters and the base, rows > slots
        (
            17,
            "mixed",
            8,
            600,
            None,
            "shrink",
        ),  # a last row block of one row; rank padded to 16 in the kernels
        (33, "one", 32, 600, None, "shrink"),  # every row on one adapter (the last slot), rank 32
        (
            9,
            "base",
            16,
            600,
            None,
            "shrink",
        ),  # no adapter: the expand leaves y alone, the fused kernels do theirs
        (1, "base", 16, 300, None, "shrink"),
        (
            1,
            "one",
            4,
            4096,
            None,
            "shrink",
        ),  # one row (the one-row path: the expand sums the 8 K chunks' partials)
        (
            6,
            "mixed",
            16,
            600,
            65,
            "shrink",
        ),  # the expand sums the partials of a block of rows (SHRINK_SUMS_FROM_ROWS)
        # the fold's rank values (every slot's, one slot stride apart), the expands in folded mode
        (17, "mixed", 8, 300, None, "fold"),
        (33, "one", 16, 300, None, "fold"),
        (1, "one", 4, 300, None, "fold"),
        (6, "mixed", 16, 300, None, "fold"),
    ],
)
def test_kernels_mixed_batch_equals_the_torch_reference(
    rows: int,
    pattern: str,
    rank: int,
    k: int,
    sums_from: int | None,
    source: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Expand, fused SiLU and fused rotary on batches mixing adapters and the base, against ``add_rows_ref``: reading
    the shrink's output, or the fold's rank values (``source``)."""
    from inference.fast import lora_kernels
    from inference.fast.kernels import rope_store, silu_mul
    from inference.fast.lora_kernels import lora_expand, lora_expand_silu, lora_rope_store
    from inference.fast.ops import rope_store_ref, silu_mul_ref

    device = kernel_device()
    if sums_from is not None:
        monkeypatch.setattr(lora_kernels, "SHRINK_SUMS_FROM_ROWS", sums_from)
    heads, kv, head_dim, ff = 4, 2, 16, 96
    g = torch.Generator().manual_seed(rows * 31 + rank)
    slots = 3
    index = _mixed_index(rows, slots, pattern, device)
    adapted = index >= 0
    x = torch.randn(rows, k, generator=g).to(device)
    ranks = _shrunk if source == "shrink" else _folded

    def stacks(outs: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        a = torch.randn(slots, len(outs) * rank, k, generator=g) * 0.05
        return a.to(device), (torch.randn(slots, rank, sum(outs), generator=g) * 0.1).to(device)

    # the plain expand, three parts (a column tile of 16: tiles never straddle two parts)
    outs = (48, 16, 16)
    a, b = stacks(outs)
    y = torch.randn(rows, sum(outs), generator=g).to(device)
    want = y.clone()
    add_rows_ref(x, want, a, b, index, outs, rank)
    got = y.clone()
    lora_expand(ranks(x, a, index), got, b, index, outs, rank, 16)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), float((got - want).abs().max())
    assert torch.equal(got[~adapted], y[~adapted])  # rows of the base model untouched
    assert not adapted.any() or not torch.allclose(got[adapted], y[adapted])  # the product is in the others
    # gate/up + SiLU
    a, b = stacks((ff, ff))
    gate_up = torch.randn(rows, 2 * ff, generator=g).to(device)
    want = gate_up.clone()
    add_rows_ref(x, want, a, b, index, (ff, ff), rank)
    got = lora_expand_silu(ranks(x, a, index), gate_up, b, index, rank)
    assert torch.allclose(got, silu_mul_ref(want), rtol=1e-4, atol=1e-4), float(
        (got - silu_mul_ref(want)).abs().max()
    )
    assert torch.equal(got[~adapted], silu_mul(gate_up)[~adapted])  # base rows: what the plain kernel gives
    # Q/K/V + rotary + KV write
    outs = (heads * head_dim, kv * head_dim, kv * head_dim)
    a, b = stacks(outs)
    qkv = torch.randn(rows, sum(outs), generator=g).to(device)
    positions = torch.randint(0, 30, (rows,), generator=g).to(device)
    angles = torch.arange(32)[:, None].float() * torch.rand(head_dim // 2, generator=g)[None, :]
    cos, sin = angles.cos().to(device), angles.sin().to(device)
    cache_slots = torch.randperm(8 * 16, generator=g)[:rows].to(device)

    def caches() -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(torch.zeros(8, kv, 16, head_dim, device=device) for _ in range(2))  # type: ignore[return-value]

    want_qkv = qkv.clone()
    add_rows_ref(x, want_qkv, a, b, index, outs, rank)
    k_want, v_want = caches()
    q_want = rope_store_ref(want_qkv, positions, cos, sin, k_want, v_want, cache_slots, heads, kv, head_dim)
    k_got, v_got = caches()
    q_got = lora_rope_store(
        ranks(x, a, index),
        qkv,
        b,
        index,
        rank,
        positions,
        cos,
        sin,
        k_got,
        v_got,
        cache_slots,
        heads,
        kv,
        head_dim,
    )
    for got_t, want_t in ((q_got, q_want), (k_got, k_want), (v_got, v_want)):
        assert torch.allclose(got_t, want_t, rtol=1e-4, atol=1e-4), float((got_t - want_t).abs().max())
    k_base, v_base = caches()
    q_base = rope_store(qkv.clone(), positions, cos, sin, k_base, v_base, cache_slots, heads, kv, head_dim)
    assert torch.equal(q_got[~adapted], q_base[~adapted])  # base rows: what the plain kernel gives
    for got_t, base_t in ((k_got, k_base), (v_got, v_base)):
        at = cache_slots[~adapted]
        assert torch.equal(got_t[at // 16, :, at % 16], base_t[at // 16, :, at % 16])


@pytest.mark.skipif(
    not (INTERPRET or CUDA), reason="runs under the Triton interpreter in the child test below"
)
@pytest.mark.parametrize(
    ("rows", "pattern", "k", "sums_from", "source", "dtype"),
    [
        (1, "one", 4096, None, "shrink", torch.float32),  # one row: the kernel sums the 8 K chunks' partials
        (5, "mixed", 600, 65, "shrink", torch.float32),  # 2 K chunks summed by the kernel, base rows too
        (16, "mixed", 300, None, "shrink", torch.float32),
        (1, "one", 300, None, "fold", torch.float32),
        (5, "mixed", 300, None, "fold", torch.float32),
        (16, "mixed", 300, None, "fold", torch.float32),
        (16, "mixed", 300, None, "fold", torch.bfloat16),
        (5, "base", 300, None, "fold", torch.float32),
    ],
)
def test_kernels_fused_expand_rms_norm_equals_expand_then_rms_norm(
    rows: int,
    pattern: str,
    k: int,
    sums_from: int | None,
    source: str,
    dtype: torch.dtype,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """o / down: the expand fused into the residual add + RMSNorm after it gives what the expand kernel then the
    norm kernel give (the normed rows and the updated residual), on batches mixing adapters and the base, reading
    the shrink's output or the fold's rank values; base rows: the norm kernel's own bits; the base output unread
    but left as it is."""
    from inference.fast import lora_kernels
    from inference.fast.kernels import rms_norm
    from inference.fast.lora_kernels import lora_expand, lora_expand_rms_norm
    from inference.fast.ops import rms_norm_ref

    device = kernel_device()
    if sums_from is not None:
        monkeypatch.setattr(lora_kernels, "SHRINK_SUMS_FROM_ROWS", sums_from)
    g = torch.Generator().manual_seed(rows * 17 + k)
    slots, rank, n, eps = 3, 16, 96, 1e-5  # n: not a power of two (the row's tile is masked)
    index = _mixed_index(rows, slots, pattern, device)
    adapted = index >= 0
    x = torch.randn(rows, k, generator=g).to(device, dtype)
    a = (torch.randn(slots, rank, k, generator=g) * 0.05).to(device, dtype)
    b = (torch.randn(slots, rank, n, generator=g) * 0.1).to(device, dtype)
    y = torch.randn(rows, n, generator=g).to(device, dtype)
    residual = torch.randn(rows, n, generator=g).to(device, dtype)
    weight = (1 + 0.1 * torch.randn(n, generator=g)).to(device, dtype)
    ranks = (_shrunk if source == "shrink" else _folded)(x, a, index)

    y_sep, res_sep = y.clone(), residual.clone()
    lora_expand(ranks, y_sep, b, index, (n,), rank, 32)
    want = rms_norm(y_sep, weight, eps, res_sep)
    y_got, res_got = y.clone(), residual.clone()
    got = lora_expand_rms_norm(ranks, y_got, b, index, rank, weight, eps, res_got)

    def close(got_t: torch.Tensor, want_t: torch.Tensor) -> None:
        """float32: another summation order of the same products; bf16: a rounding or two apart."""
        tol = 1e-5 if dtype == torch.float32 else 2.0**-6
        err = (got_t.float() - want_t.float()).abs()
        assert bool((err <= want_t.float().abs() * tol + tol).all()), float(err.max())

    close(got, want)
    close(res_got, res_sep)
    assert torch.equal(y_got, y)  # the base output is read, not written
    y_ref, res_ref = y.clone(), residual.clone()  # the torch reference: within float rounding
    add_rows_ref(x, y_ref, a, b, index, (n,), rank)
    if dtype == torch.float32:
        assert torch.allclose(got, rms_norm_ref(y_ref, weight, eps, res_ref), rtol=1e-4, atol=1e-4)
    res_base = residual.clone()
    base = rms_norm(y.clone(), weight, eps, res_base)
    assert torch.equal(got[~adapted], base[~adapted])  # base rows: what the plain norm kernel gives
    assert torch.equal(res_got[~adapted], res_base[~adapted])
    assert not adapted.any() or not torch.allclose(res_got[adapted], res_base[adapted])  # the product is in


@pytest.mark.skipif(
    not (INTERPRET or CUDA), reason="runs under the Triton interpreter in the child test below"
)
def test_kernels_shrink_counters_return_to_zero() -> None:
    """The split-K shrink's per-row counters (which program sums a row's partials) are back at zero after each
    launch, so one set serves every projection: two launches in a row on the same counters give the same values."""
    from inference.fast.lora_kernels import lora_shrink, new_counters, new_partial, rank_values, split_of

    device = kernel_device()
    g = torch.Generator().manual_seed(3)
    rows, k, rank = 5, 2048, 16
    assert split_of(k)[0] == 8
    x = torch.randn(rows, k, generator=g).to(device)
    a = (torch.randn(2, 3 * rank, k, generator=g) * 0.05).to(device)
    index = torch.tensor([1, -1, 0, 1, 0], dtype=torch.int32, device=device)
    want = torch.bmm(a[index.clamp(min=0).long()], x[:, :, None])[:, :, 0]
    counters = new_counters(device, 8)
    for _ in range(2):
        partial = new_partial(x, a).fill_(float("nan"))
        lora_shrink(x, a, index, partial, counters)
        got = rank_values(partial)[:, : 3 * rank]
        assert torch.allclose(got[index >= 0], want[index >= 0], rtol=1e-4, atol=1e-4)
        assert torch.equal(counters, torch.zeros_like(counters))


@pytest.mark.skipif(
    not INTERPRET,
    reason="runs under the Triton interpreter in the child test below; on a GPU the tiny model's head size is "
    "below what the native attention kernel's tl.dot takes, and the 70B-width test covers the kernels there",
)
@pytest.mark.parametrize("norm_fuse", ["1", "0"])
def test_decoder_on_the_kernels_equals_peft(
    base: LlamaForCausalLM, tmp_path: Path, norm_fuse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole decode path on the Triton kernels (the interpreter on CPU): a mixed batch gives PEFT's tokens, with
    the o and down expands fused into the norms after them or (HANBOT_LORA_NORM_FUSE=0) launched on their own."""
    from inference.fast import lora_kernels

    patch_interpreter()
    monkeypatch.setenv("HANBOT_LORA_NORM_FUSE", norm_fuse)
    calls = {"lora_expand": 0, "lora_expand_rms_norm": 0}
    for name in calls:
        monkeypatch.setattr(lora_kernels, name, _counted(calls, name, getattr(lora_kernels, name)))
    device = torch.device("cpu")
    peft = save_adapter(base, tmp_path / "a", seed=21)
    ps = prompts(2, (9, 20), base.config.vocab_size, seed=22)
    want = [hf_greedy(peft, ps[0], 6), hf_greedy(base, ps[1], 6)]  # type: ignore[arg-type]
    dec = StaticSlotDecoder(
        copy.deepcopy(base).to(device),
        capacity=2,
        block_size=16,
        max_context=64,
        lora_slots=1,
        cuda_graphs=False,
    )
    assert dec.lora_pool is not None and dec.lora_pool.kernels is not None
    assert dec.lora_pool.norm_fuse == (norm_fuse == "1")
    dec.load_lora("a", str(tmp_path / "a"))
    assert run_mixed(dec, [(ps[0], "a"), (ps[1], None)], 6) == want
    fused = 5 * 3 * 2 if norm_fuse == "1" else 0  # 5 decode steps × 3 layers × (o, down)
    assert calls == {"lora_expand": 5 + 5 * 3 * 2 - fused, "lora_expand_rms_norm": fused}  # + the head's


def _tail_case(
    rows: int, k: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """x [rows, k]; a weight [97, k]; a tail of 4 groups of 32 rows (4 pool slots of parts·R = 32); the rows' slots
    (slot 2 unused, so its group's tile must be skipped)."""
    g = torch.Generator().manual_seed(rows * 13 + k)
    x = torch.randn(rows, k, generator=g).to(device, dtype)
    w = (torch.randn(97, k, generator=g) * 0.1).to(device, dtype)
    t = (torch.randn(4 * 32, k, generator=g) * 0.05).to(device, dtype)
    index = torch.tensor([[0, 3, -1, 1][i % 4] for i in range(rows)], dtype=torch.int32, device=device)
    return x, w, t, index, 32


def _check_tail(
    out: torch.Tensor,
    x: torch.Tensor,
    t: torch.Tensor,
    index: torch.Tensor,
    group: int,
    block_n: int,
    tol: float = 1e-4,
) -> None:
    """The used groups' columns equal x·tᵀ (float32, products of the stored values); a column tile (``block_n``)
    holding no used group is skipped: its columns stay NaN."""
    want = x.float() @ t.float().t()
    used = set(index[index >= 0].tolist())
    for slot in sorted(used):
        cols = slice(slot * group, (slot + 1) * group)
        assert torch.allclose(out[:, cols], want[:, cols], rtol=tol, atol=tol), (
            slot,
            float((out[:, cols] - want[:, cols]).abs().max()),
        )
    skipped = 0
    for t0 in range(0, t.shape[0], block_n):
        if not used & set(range(t0 // group, (t0 + block_n - 1) // group + 1)):
            assert bool(out[:, t0 : t0 + block_n].isnan().all()), t0
            skipped += 1
    assert skipped or block_n > group  # slot 2's tile at least, where a tile holds one group


@pytest.mark.skipif(
    not (INTERPRET or CUDA), reason="runs under the Triton interpreter in the child test below"
)
@pytest.mark.parametrize("config", [(16, 512, 4, 4), (32, 256, 2, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernels_fold_skinny_tail(config: tuple[int, int, int, int], dtype: torch.dtype) -> None:
    """The bf16 skinny GEMM with a tail: the base product is the one without a tail (same bits), the tail's columns
    are x·Tᵀ for the groups the rows use."""
    from inference.fast.kernels import Tail, skinny_linear

    device = kernel_device()
    for rows in (1, 5, 17):
        x, w, t, index, group = _tail_case(rows, 300, dtype, device)
        out = torch.full((rows, t.shape[0]), float("nan"), device=device)
        y = skinny_linear(x, w, config, Tail(t, index, group, out))
        assert torch.equal(y, skinny_linear(x, w, config))
        tf32 = device.type == "cuda" and dtype == torch.float32  # this kernel's float32 dot on a GPU: TF32
        _check_tail(out, x, t, index, group, config[0], 5e-3 if tf32 else 1e-4)


@pytest.mark.skipif(
    not (INTERPRET or CUDA), reason="runs under the Triton interpreter in the child test below"
)
@pytest.mark.parametrize("config", [(64, 128, 4, 6, 0), (32, 256, 2, 4, 2), (16, 512, 1, 4, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernels_fold_fp8_tail(config: tuple[int, ...], dtype: torch.dtype) -> None:
    """The FP8 skinny GEMM with a 16-bit (or float32) tail, scale 1: the base product is the one without a tail, the
    tail's columns x·Tᵀ (CONVERT 2: x·2^-8 and T in f16, the 2^8 undone; exact for these magnitudes)."""
    from inference.fast.fp8 import quantize_fp8
    from inference.fast.kernels import Tail, fp8_skinny_linear

    device = kernel_device()
    if (
        INTERPRET and config[4] == 1
    ):  # the PTX conversion does not run in the interpreter: its tiling, Triton's cvt
        config = (*config[:4], 0)
    for rows in (1, 5, 17):
        x, w, t, index, group = _tail_case(rows, 256, dtype, device)
        q = quantize_fp8(w.float())
        out = torch.full((rows, t.shape[0]), float("nan"), device=device)
        y = fp8_skinny_linear(x, q.data, q.scale, config, Tail(t, index, group, out))
        assert torch.equal(y, fp8_skinny_linear(x, q.data, q.scale, config))
        _check_tail(out, x, t, index, group, config[0])


@pytest.mark.skipif(
    not INTERPRET,
    reason="runs under the Triton interpreter in the child test below (the 70B-width GPU test covers the GPU)",
)
def test_decoder_on_the_kernels_with_the_fold_equals_peft(
    base: LlamaForCausalLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decode path with every product on the skinny kernel (as a GPU plan may choose) and the adapters' shrink
    folded into it: PEFT's tokens for a mixed batch, and the separate shrink kernel never launched."""
    from inference.fast import kernels, lora_kernels

    patch_interpreter()
    monkeypatch.setenv("HANBOT_LORA_NORM_FUSE", "1")
    calls: dict[str, int] = {"lora_shrink": 0, "lora_expand": 0, "lora_expand_rms_norm": 0}
    for name in calls:
        monkeypatch.setattr(lora_kernels, name, _counted(calls, name, getattr(lora_kernels, name)))
    peft = save_adapter(base, tmp_path / "a", seed=21)
    ps = prompts(2, (9, 20), base.config.vocab_size, seed=22)
    want = [hf_greedy(peft, ps[0], 6), hf_greedy(base, ps[1], 6)]  # type: ignore[arg-type]
    dec = StaticSlotDecoder(
        copy.deepcopy(base), capacity=2, block_size=16, max_context=64, lora_slots=2, cuda_graphs=False
    )
    assert dec.lora_pool is not None and dec.lora_pool.fold
    plan = dec.model.plan
    plan._kernels = kernels  # the CPU plan has no kernels: every decode product on one skinny config
    w = dec.model.w
    shapes = {tuple(m.shape) for lw in w.layers for m in (lw.qkv, lw.o, lw.gate_up, lw.down)}
    shapes.add(tuple(w.lm_head.shape))
    plan.choices = {(n, k, rows): (16, 64, 4, 1) for n, k in shapes for rows in (1, 16, 32)}
    folded: list[bool] = []
    linear_folded = plan.linear_folded
    monkeypatch.setattr(
        plan,
        "linear_folded",
        lambda *a: folded.append(True) or linear_folded(*a),  # type: ignore[func-returns-value]
    )
    save_adapter(base, tmp_path / "z", seed=23)
    dec.load_lora("z", str(tmp_path / "z"))  # slot 0, unused below: "a" is on slot 1, one slot stride in
    dec.load_lora("a", str(tmp_path / "a"))
    assert run_mixed(dec, [(ps[0], "a"), (ps[1], None)], 6) == want
    assert len(folded) == 5 * (3 * 4 + 1)  # 5 decode steps × (3 layers × 4 products + the head)
    assert calls["lora_shrink"] == 0
    # o and down: their expand inside the norm after them; a separate expand for the head only
    assert calls == {"lora_shrink": 0, "lora_expand": 5, "lora_expand_rms_norm": 5 * 3 * 2}


def _counted(calls: dict[str, int], name: str, fn: Any) -> Any:
    """``fn``, counting its calls in ``calls[name]``."""

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls[name] += 1
        return fn(*args, **kwargs)

    return counting


def test_plan_folds_only_on_its_triton_kernels(tmp_path: Path) -> None:
    """``linear_folded`` is None where no Triton skinny kernel serves the product (a CPU plan: the decoder keeps its
    shrink path), and the bf16 shapes' fold configs (cuBLAS chosen, a Triton config within FOLD_SLACK_S) survive the
    plan's cache file."""
    from inference.fast.fp8 import quantize_fp8
    from inference.fast.gemm import LinearPlan, _fastest_triton

    plan = LinearPlan(torch.device("cpu"), cache_file=tmp_path / "plan.json")
    x, w = torch.randn(3, 64), torch.randn(96, 64)
    index = torch.tensor([0, -1, 1], dtype=torch.int32)
    assert plan.linear_folded(x, w, torch.randn(32, 64), index, 16) is None
    assert plan.linear_folded(x, quantize_fp8(w), torch.randn(32, 64), index, 16) is None
    assert _fastest_triton({"cublas": 0.01, "triton16x512x4x4": 0.02, "triton32x256x2x4": 0.012}) == (
        (32, 256, 2, 4),
        0.012,
    )
    assert _fastest_triton({"cublas": 0.01}) is None
    plan.fold_choices = {(96, 64, 1): (32, 256, 2, 4)}
    plan._save("key")
    again = LinearPlan(torch.device("cpu"), cache_file=tmp_path / "plan.json")
    assert again._load("key") and again.fold_choices == plan.fold_choices


def _hopper_compiler() -> object | None:
    """``triton.compile`` for sm_90 where Triton's NVIDIA backend and its ptxas are here (no GPU needed)."""
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.backends.nvidia.compiler import get_ptxas
    except ImportError:
        return None
    try:
        get_ptxas(90).path  # noqa: B018 (raises when the binary is missing)
    except (RuntimeError, OSError, AttributeError):
        return None
    return triton, GPUTarget("cuda", 90, 32)


@pytest.mark.skipif(INTERPRET, reason="compiles for the GPU, the interpreter's child need not")
@pytest.mark.skipif(_hopper_compiler() is None, reason="Triton's NVIDIA backend (ptxas) is not installed")
def test_kernels_compile_for_hopper() -> None:
    """Every variant the decode path launches at the 70B's shapes compiles for sm_90 (the interpreter does not
    type-check a kernel as the compiler does: a loop variable reused with another type passes there)."""
    from triton.compiler import ASTSource

    from inference.fast import lora_kernels as lk

    triton_mod, target = _hopper_compiler()  # type: ignore[misc]

    def build(fn: object, types: dict[str, str], consts: dict[str, object], warps: int) -> None:
        names: list[str] = fn.arg_names  # type: ignore[attr-defined]
        signature = {n: "constexpr" if n in consts else types[n] for n in names}
        triton_mod.compile(
            ASTSource(fn, signature, constexprs=consts), target=target, options={"num_warps": warps}
        )

    ptrs = {
        "idx_ptr": "*i32",
        "inter_ptr": "*fp32",
        "part_ptr": "*fp32",
        "count_ptr": "*i32",
        "pos_ptr": "*i64",
    }
    ptrs |= {"slot_ptr": "*i64", "cos_ptr": "*bf16", "sin_ptr": "*bf16"}

    def types(fn: object) -> dict[str, str]:
        return {n: ptrs.get(n, "*bf16" if n.endswith("_ptr") else "i32") for n in fn.arg_names}  # type: ignore[attr-defined]

    from inference.fast import kernels

    skinny = (
        kernels._skinny_gemm_kernel
    )  # with the fold's tail (``kernels.Tail``); the FP8 one: test_fast_fp8.py
    for block_n, block_k, warps, stages in kernels.GEMM_CONFIGS[:3]:
        consts = {"MP": 16, "BLOCK_N": block_n, "BLOCK_K": block_k, "STAGES": stages, "TAIL": True}
        build(skinny, types(skinny) | {"u_ptr": "*fp32"}, consts, warps)
    shrink = lk._lora_shrink_kernel
    for split, total in ((32, True), (32, False), (64, True), (1, False)):
        build(shrink, types(shrink), {"J": 48, "JP": 64, "SPLIT": split, "SUM": total, "BLOCK_K": 128}, 4)
    rank = {"SLOTS": 4, "R": 16, "RP": 16, "DOT": lk.DOT_PRECISION}
    for block_m, split, block_n in ((1, 32, 64), (16, 1, 128), (16, 1, 64), (1, 1, 128)):
        consts = rank | {"JP": 64, "SPLIT": split, "BLOCK_N": block_n, "BLOCK_M": block_m}
        build(lk._lora_expand_kernel, types(lk._lora_expand_kernel), consts, 4)
    build(
        lk._lora_expand_kernel,
        types(lk._lora_expand_kernel),
        rank | {"R": 8, "JP": 16, "SPLIT": 1, "BLOCK_N": 128, "BLOCK_M": 16},
        4,
    )
    tf32x3 = rank | {"JP": 64, "SPLIT": 1, "BLOCK_N": 128, "BLOCK_M": 16, "DOT": "tf32x3"}
    build(lk._lora_expand_kernel, types(lk._lora_expand_kernel), tf32x3, 4)  # lora_profile.py --dot tf32x3
    for block_m, split in ((1, 32), (16, 1)):
        consts = rank | {"JP": 32, "SPLIT": split, "BLOCK_N": 128, "BLOCK_M": block_m}
        build(lk._lora_expand_silu_kernel, types(lk._lora_expand_silu_kernel), consts, 4)
    norm = lk._lora_expand_rms_norm_kernel  # o and down (8192 columns) with the norm after them
    for split in (1, 32):
        build(norm, types(norm) | {"eps": "fp32"}, {"R": 16, "JP": 16, "SPLIT": split, "BLOCK": 8192}, 8)
    for block_m, split in ((1, 32), (16, 1)):
        consts = rank | {"N_HEADS": 64, "N_KV": 8, "HALF": 64, "BLOCK_SIZE": 64, "JP": 64, "SPLIT": split}
        build(
            lk._lora_rope_store_kernel,
            types(lk._lora_rope_store_kernel),
            consts | {"BLOCK_M": block_m},
            1 if block_m == 1 else 4,
        )


@pytest.mark.skipif(INTERPRET or CUDA, reason="the child of this test")
def test_kernels_under_interpreter() -> None:
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", __file__]
    cmd += [
        "-k",
        "kernels_equal or kernels_fused or kernels_mixed or kernels_shrink or kernels_fold or decoder_on_the_kernels",
    ]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=560)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "41 passed" in proc.stdout, proc.stdout[-2000:]  # 4 + 2 + 2 + 8 + 11 + 1 + 4 + 6 + 3


# ---- GPU ---------------------------------------------------------------------------------------------------------


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.skipif(not CUDA or INTERPRET, reason="needs a CUDA GPU")
@pytest.mark.parametrize(
    ("rows", "pattern", "dot"),
    [
        (1, "one", None),
        (16, "one", None),
        (16, "mixed", None),
        (64, "mixed", None),
        (5, "base", None),
        (16, "mixed", "tf32x3"),  # lora_profile.py --dot tf32x3: tensor cores, about float32's accuracy
    ],
)
def test_gpu_kernels_at_70b_widths(
    rows: int, pattern: str, dot: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decode kernels at the 70B's shapes in bf16 (4 pool slots): within a bf16 rounding of ``add_rows_ref``
    (same float32 products, another summation order), and the same bits when run again (the shrink's counter
    decides only which program sums the partials, not their order)."""
    from inference.fast import lora_kernels
    from inference.fast.kernels import rms_norm, rope_store
    from inference.fast.lora import _block_n
    from inference.fast.lora_kernels import (
        lora_expand,
        lora_expand_rms_norm,
        lora_expand_silu,
        lora_rope_store,
        lora_shrink,
        new_partial,
    )
    from inference.fast.ops import silu_mul_ref

    if dot is not None:
        monkeypatch.setattr(lora_kernels, "DOT_PRECISION", dot)
    dev, dt, slots, rank = torch.device("cuda"), torch.bfloat16, 4, 16
    g = torch.Generator(device=dev).manual_seed(rows)
    index = _mixed_index(rows, slots, pattern, dev)
    h, ff, heads, kv, hd = 8192, 28672, 64, 8, 128

    def rand(*shape: int, std: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, device=dev) * std).to(dt)

    def shrunk(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        partial = new_partial(x, a).fill_(float("nan"))
        lora_shrink(x, a, index, partial)
        return partial

    def close(got: torch.Tensor, want: torch.Tensor, atol: float = 2e-2) -> None:
        """A bf16 rounding or two apart (the adapters' products here are ~0.2: one left out is far beyond)."""
        err = (got.float() - want.float()).abs()
        bound = want.float().abs() * 2.0**-6 + atol
        assert bool((err <= bound).all()), float((err - bound).max())

    cases = {"o": (h, (h,)), "down": (ff, (h,)), "lm_head": (h, (128256,))}
    for name, (k, outs) in cases.items():
        x, y = rand(rows, k), rand(rows, sum(outs))
        a, b = rand(slots, rank, k, std=k**-0.5), rand(slots, rank, sum(outs), std=0.05)
        want = y.clone()
        add_rows_ref(x, want, a, b, index, outs, rank)
        runs = []
        for _ in range(2):
            got = y.clone()
            lora_expand(shrunk(x, a), got, b, index, outs, rank, _block_n(outs))
            runs.append(got)
        close(runs[0], want)
        assert torch.equal(runs[0], runs[1]), name
        assert torch.equal(runs[0][index < 0], y[index < 0]), name
        if name in ("o", "down"):  # the expand fused into the residual add + RMSNorm after it
            residual, weight = rand(rows, h), rand(h, std=0.1) + 1
            res_want = residual.clone()
            norm_want = rms_norm(runs[0], weight, 1e-5, res_want)
            fused = []
            for _ in range(2):
                res = residual.clone()
                fused.append((lora_expand_rms_norm(shrunk(x, a), y, b, index, rank, weight, 1e-5, res), res))
            close(fused[0][0], norm_want)
            close(fused[0][1], res_want)
            assert torch.equal(fused[0][0], fused[1][0]) and torch.equal(fused[0][1], fused[1][1]), name
    x, gate_up = rand(rows, h), rand(rows, 2 * ff)
    a, b = rand(slots, 2 * rank, h, std=h**-0.5), rand(slots, rank, 2 * ff, std=0.05)
    want = gate_up.clone()
    add_rows_ref(x, want, a, b, index, (ff, ff), rank)
    partial = shrunk(x, a)
    got = lora_expand_silu(partial, gate_up, b, index, rank)
    close(got, silu_mul_ref(want))
    assert torch.equal(got, lora_expand_silu(partial, gate_up, b, index, rank))
    outs = (heads * hd, kv * hd, kv * hd)
    qkv = rand(rows, sum(outs))
    a, b = rand(slots, 3 * rank, h, std=h**-0.5), rand(slots, rank, sum(outs), std=0.05)
    positions = torch.randint(0, 4096, (rows,), generator=g, device=dev)
    angles = (
        torch.arange(4096, device=dev)[:, None].float() * torch.rand(hd // 2, generator=g, device=dev) * 1e-3
    )
    cos, sin = angles.cos().to(dt), angles.sin().to(dt)
    cache_slots = torch.randperm(64 * 64, generator=g, device=dev)[:rows]

    def caches() -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(torch.zeros(64, kv, 64, hd, device=dev, dtype=dt) for _ in range(2))  # type: ignore[return-value]

    want_qkv = qkv.clone()
    add_rows_ref(x, want_qkv, a, b, index, outs, rank)
    k_want, v_want = caches()
    q_want = rope_store(want_qkv, positions, cos, sin, k_want, v_want, cache_slots, heads, kv, hd)
    k_got, v_got = caches()
    q_got = lora_rope_store(
        shrunk(x, a), qkv, b, index, rank, positions, cos, sin, k_got, v_got, cache_slots, heads, kv, hd
    )
    for got_t, want_t in ((q_got, q_want), (k_got, k_want), (v_got, v_want)):
        close(got_t, want_t, atol=5e-2)  # a rotated pair: a rounding of one half moves the other by as much


def _skinny(x: torch.Tensor, w: object, cfg: tuple[int, ...], tail: object = None) -> torch.Tensor:
    """The skinny kernel of ``w`` (bf16, or an ``Fp8Weight``) with config ``cfg`` and maybe a ``kernels.Tail``."""
    from inference.fast import kernels
    from inference.fast.fp8 import Fp8Weight

    if isinstance(w, Fp8Weight):
        return kernels.fp8_skinny_linear(x, w.data, w.scale, cfg, tail)  # type: ignore[arg-type]
    return kernels.skinny_linear(x, w, cfg, tail)  # type: ignore[arg-type]


@pytest.mark.skipif(not CUDA or INTERPRET, reason="needs a CUDA GPU")
@pytest.mark.parametrize("fp8", [False, True])
def test_gpu_fold_at_70b_widths(fp8: bool) -> None:
    """The fold at the 70B's layer shapes (4 pool slots of rank 16), a few configs of each skinny kernel (FP8: the PTX
    and f16 modes too): the base product is the one without the tail (same bits), each adapted row's rank values at
    its slot's columns are x·Aᵀ (float32 sums of the same bf16 products)."""
    from inference.fast import kernels
    from inference.fast.fp8 import quantize_fp8

    dev, dt, slots, rank = torch.device("cuda"), torch.bfloat16, 4, 16
    g = torch.Generator(device=dev).manual_seed(5)
    h, ff = 8192, 28672
    shapes = {"qkv": (10240, h, 3), "o": (h, h, 1), "gate_up": (2 * ff, h, 2), "down": (h, ff, 1)}
    configs: tuple[tuple[int, ...], ...] = kernels.FP8_GEMM_CONFIGS[::4] if fp8 else kernels.GEMM_CONFIGS[::3]
    for name, (n, k, parts) in shapes.items():
        w = (torch.randn(n, k, generator=g, device=dev) * k**-0.5).to(dt)
        q = quantize_fp8(w) if fp8 else None
        a = (torch.randn(slots, parts * rank, k, generator=g, device=dev) * k**-0.5).to(dt)
        for rows in (1, 16):
            index = _mixed_index(rows, slots, "mixed" if rows > 1 else "one", dev)
            x = torch.randn(rows, k, generator=g, device=dev).to(dt)
            for cfg in configs:
                out = torch.full((rows, slots * parts * rank), float("nan"), device=dev)
                y = _skinny(
                    x, q if q is not None else w, cfg, kernels.Tail(a.view(-1, k), index, parts * rank, out)
                )
                assert torch.equal(y, _skinny(x, q if q is not None else w, cfg)), (name, rows, cfg)
                for m, slot in enumerate(index.tolist()):
                    if slot >= 0:
                        got = out[m, slot * parts * rank : (slot + 1) * parts * rank]
                        want = a[slot].float() @ x[m].float()
                        assert torch.allclose(got, want, rtol=1e-3, atol=1e-3), (name, rows, cfg, m)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (the 70B-width bf16 check runs there)")
def test_gpu_lora_logits_match_eager_peft_70b_widths(tmp_path: Path) -> None:
    torch.manual_seed(0)
    with torch.device("cuda"):
        ref32 = LlamaForCausalLM(config_70b_widths()).eval()
    try:
        ref32.set_attn_implementation("eager")
    except AttributeError:
        ref32.config._attn_implementation = "eager"
    peft32 = get_peft_model(ref32, LoraConfig(r=16, lora_alpha=32, target_modules=ALL_MODULES))
    gen = torch.Generator(device="cuda").manual_seed(1)
    with torch.no_grad():
        for name, p in peft32.named_parameters():
            if "lora_" in name:  # large enough to move the logits well beyond bf16 rounding
                p.copy_(
                    torch.randn(p.shape, generator=gen, device="cuda") * (0.02 if "lora_A" in name else 0.05)
                )
    peft32.save_pretrained(tmp_path / "a", save_embedding_layers=False)  # the adapter only, not the 4 GB head
    peft16 = copy.deepcopy(peft32).to(torch.bfloat16).eval()
    model16 = copy.deepcopy(peft16).unload()  # the plain bf16 Llama (PEFT's layers removed) for the decoder
    batch = prompts(3, (100, 517, 1100), 128256, seed=6)
    steps = 32
    dec = StaticSlotDecoder(
        model16,
        capacity=4,
        max_context=2048,
        kv_budget_bytes=2 << 30,
        lora_slots=2,
        lora_max_rank=16,
        pipeline_steps=False,  # one token per step, in step with last_step_logits
    )
    captures = dec.graph_captures
    dec.load_lora("a", str(tmp_path / "a"))
    assert dec.graph_captures == captures  # loading added no graph
    params = GenerationParams(max_new_tokens=steps, do_sample=False, repetition_penalty=1.0)
    tokens: dict[int, list[int]] = {}
    logits: dict[int, list[torch.Tensor]] = {i: [] for i in range(3)}
    for i, p in enumerate(batch):
        tokens[i] = [dec.admit(SlotRequest(i, tuple(p), params, lora="a" if i != 1 else None))]
        logits[i].append(dec.last_prefill_logits(i).clone())
    for _ in range(steps - 1):
        out = dec.step()
        lg = dec.last_step_logits()
        for slot, tok in out.items():
            tokens[slot].append(tok)
            logits[slot].append(lg[slot].clone())
    worst16 = worst32 = worst_ref = 0.0
    for i, p in enumerate(batch):
        full = torch.tensor([p + tokens[i][:-1]], device="cuda")
        m16, m32 = peft16, peft32
        with torch.no_grad():
            if i == 1:
                with m16.disable_adapter(), m32.disable_adapter():
                    want16 = m16(full).logits[0, len(p) - 1 :].float()
                    want32 = m32(full).logits[0, len(p) - 1 :].float()
            else:
                want16 = m16(full).logits[0, len(p) - 1 :].float()
                want32 = m32(full).logits[0, len(p) - 1 :].float()
                with m32.disable_adapter():
                    base32 = m32(full).logits[0, len(p) - 1 :].float()
                assert _rel(base32, want32) > 0.05  # the adapter moves the logits far beyond bf16 rounding
        got = torch.stack(logits[i])
        assert torch.isfinite(got).all()
        e16, e32, eref = _rel(got, want16), _rel(got, want32), _rel(want16, want32)
        print(
            f"prompt {len(p)} lora={i != 1}: vs eager PEFT bf16 {e16:.2e}, vs fp32 {e32:.2e} (bf16 vs fp32 {eref:.2e})"
        )
        worst16, worst32, worst_ref = max(worst16, e16), max(worst32, e32), max(worst_ref, eref)
    print(
        f"GPU_LORA_LOGITS_REL_ERR fast_vs_eager_peft_bf16={worst16:.3e} fast_vs_eager_peft_fp32={worst32:.3e} "
        f"eager_bf16_vs_eager_fp32={worst_ref:.3e}"
    )
    assert worst32 <= 1.25 * worst_ref + 1e-2
    assert worst16 <= 2 * worst_ref + 1e-2
