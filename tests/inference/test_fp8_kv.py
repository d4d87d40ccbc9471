"""FP8 KV cache (``StaticSlotDecoder(kv_fp8=True)``): e4m3 K and V with one float32 scale per token and head.

CPU: the torch path's round trip is within e4m3 precision; the decoder's logits with an FP8 cache stay close to the
full-precision cache's (the relative error is printed), prefix reuse gives the same replies as recomputing, and the
pool holds about twice the tokens in the same bytes. The Triton kernels (the rotary + KV write and the paged decode
attention) against the torch versions: natively on CUDA, on CPU under the Triton interpreter in a child pytest.
GPU (skipped on CPU): the logits with the FP8 cache against the bf16 cache at the 70B's widths, as the existing
logits test measures them.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from bot.domain import GenerationParams
from inference.decoder import SlotRequest
from inference.fast import StaticSlotDecoder, ops
from inference.fast.kv import kv_bytes_per_token
from inference.fast.weights import LlamaSpec
from tests.inference.test_fast_decoder import _rel, config_70b_widths, prompts, sharp_tiny_llama, tiny_config
from tests.inference.test_prefix_reuse import converse, make_conversations
from tests.inference.triton_interp import CUDA, INTERPRET, patch_interpreter

REPO = Path(__file__).resolve().parents[2]
HAS_TRITON = importlib.util.find_spec("triton") is not None
GREEDY = GenerationParams(max_new_tokens=12, do_sample=False, repetition_penalty=1.0)


@pytest.fixture(scope="module")
def tiny_model() -> LlamaForCausalLM:
    return sharp_tiny_llama()


def test_quantize_round_trip_within_e4m3_precision() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn((50, 4, 64), generator=g) * torch.logspace(-4, 3, 50)[:, None, None]
    x[3] = 0.0
    q, scale = ops.quantize_kv_ref(x)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (50, 4)
    back = q.float() * scale[..., None]
    # half an ulp of 3 mantissa bits for normal values, 2^-10 of the scale below the smallest normal
    bound = 2.0**-4 * x.abs() + 2.0**-10 * scale[..., None] + 1e-30
    assert bool(((back - x).abs() <= bound).all())
    assert bool((back[3] == 0).all()) and bool((scale[3] == 1).all())


def test_pool_holds_about_twice_the_tokens() -> None:
    spec = LlamaSpec.from_config(tiny_config(head_dim=128, hidden_size=1024, num_attention_heads=8))
    ratio = kv_bytes_per_token(spec, False) / kv_bytes_per_token(spec, True)
    assert 1.9 < ratio < 2.0  # 2 bytes -> 1 byte and a 4-byte scale per 128 values


def _teacher_forced_logits(dec: StaticSlotDecoder, batch: list[list[int]], steps: int) -> list[torch.Tensor]:
    """Each prompt's next-token logits at its end and after each of ``steps`` greedy tokens of the reference."""
    out = []
    for i, prompt in enumerate(batch):
        dec.admit(SlotRequest(i, tuple(prompt), GREEDY))
        rows = [dec.last_prefill_logits(i).clone()]
        for _ in range(steps):
            dec.step()
            rows.append(dec.last_step_logits()[i].clone())
        out.append(torch.stack(rows))
    for i in range(len(batch)):
        dec.release(i)
    return out


def test_decoder_logits_close_to_the_full_precision_cache(tiny_model: LlamaForCausalLM) -> None:
    batch = prompts(3, (20, 70, 150), tiny_config().vocab_size, seed=71)
    common: dict[str, object] = dict(capacity=3, block_size=16, max_context=256, prefix_cache=False)
    full = StaticSlotDecoder(tiny_model, **common)  # type: ignore[arg-type]
    fp8 = StaticSlotDecoder(tiny_model, kv_fp8=True, **common)  # type: ignore[arg-type]
    assert fp8.model.k_cache[0].dtype == torch.float8_e4m3fn
    want = _teacher_forced_logits(full, batch, 0)
    got = _teacher_forced_logits(fp8, batch, 0)
    errs = [_rel(g, w) for g, w in zip(got, want, strict=True)]
    print(f"FP8_KV_REL_ERR cpu_tiny prefill-logits worst={max(errs):.3e}")
    assert max(errs) < 5e-2
    assert max(errs) > 0  # the cache really is quantised
    # decode steps read the FP8 cache through the decode attention path
    tokens = {name: [] for name in ("full", "fp8")}
    for name, dec in (("full", full), ("fp8", fp8)):
        dec.admit(SlotRequest(0, tuple(batch[1]), GREEDY))
        for _ in range(8):
            tokens[name].append(dec.step()[0])
        dec.release(0)
    agree = sum(a == b for a, b in zip(tokens["full"], tokens["fp8"], strict=True))
    print(f"FP8_KV greedy tokens equal to the full-precision cache: {agree}/8")
    assert agree >= 6


def test_prefix_reuse_with_an_fp8_cache(tiny_model: LlamaForCausalLM) -> None:
    common: dict[str, object] = dict(capacity=4, block_size=16, max_context=512, kv_fp8=True)
    with_reuse = StaticSlotDecoder(tiny_model, prefix_cache=True, **common)  # type: ignore[arg-type]
    without = StaticSlotDecoder(tiny_model, prefix_cache=False, **common)  # type: ignore[arg-type]
    a = make_conversations(channels=2, turns=3, first=40, follow=9, seed=81)
    b = make_conversations(channels=2, turns=3, first=40, follow=9, seed=81)
    converse(with_reuse, a)
    converse(without, b)
    assert [c.replies for c in a] == [c.replies for c in b]
    assert all(h > 0 for c in a for h in c.hits[1:])


# ---- the kernels -----------------------------------------------------------------------------------------------


def _kernels():  # type: ignore[no-untyped-def]
    if not HAS_TRITON or not (INTERPRET or CUDA):
        return None
    if INTERPRET:
        patch_interpreter()
    from inference.fast import kernels

    return kernels


KERNELS = _kernels()
KDEV = torch.device("cuda" if CUDA and not INTERPRET else "cpu")
needs_kernels = pytest.mark.skipif(KERNELS is None, reason="no CUDA here: runs under the interpreter child")


def _paged(
    blocks: int, kv: int, bs: int, d: int, dtype: torch.dtype, fp8: bool
) -> tuple[torch.Tensor | None, ...]:
    """(k_cache, v_cache, k_scale, v_scale): FP8 values and scales, or caches in ``dtype`` and no scales."""
    shape = (blocks, kv, bs, d)
    cache = ops.FP8_KV if fp8 else dtype
    return (
        torch.zeros(shape, dtype=cache, device=KDEV),
        torch.zeros(shape, dtype=cache, device=KDEV),
        torch.ones(shape[:3], device=KDEV) if fp8 else None,
        torch.ones(shape[:3], device=KDEV) if fp8 else None,
    )


@needs_kernels
@pytest.mark.parametrize("fp8", [True, False], ids=["fp8-cache", "plain-cache"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16] if not INTERPRET else [torch.float32])
def test_kernel_fp8_kv_rope_store_and_decode_attention(dtype: torch.dtype, fp8: bool) -> None:
    heads, kv, d, bs, tokens = 8, 2, 64, 16, 40
    g = torch.Generator().manual_seed(3)
    qkv = (torch.randn((tokens, (heads + 2 * kv) * d), generator=g) * 3).to(dtype).to(KDEV)
    positions = torch.arange(tokens, device=KDEV)
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    freqs = torch.outer(torch.arange(256).float(), inv)
    cos, sin = freqs.cos().to(dtype).to(KDEV), freqs.sin().to(dtype).to(KDEV)
    blocks = torch.tensor([3, 1, 4], device=KDEV)
    slots = blocks[positions // bs] * bs + positions % bs
    ref = _paged(6, kv, bs, d, dtype, fp8)
    got = _paged(6, kv, bs, d, dtype, fp8)
    q_ref = ops.rope_store_ref(qkv, positions, cos, sin, ref[0], ref[1], slots, heads, kv, d, ref[2], ref[3])
    q_got = KERNELS.rope_store(qkv, positions, cos, sin, got[0], got[1], slots, heads, kv, d, got[2], got[3])
    # under the interpreter (numpy float32, no fused multiply-add): the same q, scales and e4m3 values; on a GPU the
    # kernel rounds once where torch rounds each bf16 operation, and may fuse a multiply-add: a bf16 step (q, a
    # 16-bit cache, the scales) and one e4m3 step (the FP8 values, in units of their scale)
    # in bf16 a rotation's two products nearly cancel in places, so the error bound is absolute: two bf16 steps at
    # the inputs' magnitude (an H200 showed one step, 0.0625 at |qkv| ~ 10, with a float32 atol it failed there)
    atol = 2 * 2.0**-8 * float(qkv.float().abs().max()) if dtype == torch.bfloat16 else 1e-3
    close = {"rtol": 0.0, "atol": 0.0} if INTERPRET else {"rtol": 1.6e-2, "atol": atol}
    torch.testing.assert_close(q_got.float(), q_ref.float(), **close)
    for i, (r, k) in enumerate(zip(ref, got, strict=True)):
        if r is None or k is None:
            continue
        if r.dtype == ops.FP8_KV and not INTERPRET:
            # one e4m3 step, plus the bf16 tolerance of the rotated value before quantising, in units of the
            # scale (a value near zero moves by several e4m3 units when its bf16 input moves by one bf16 step)
            scale = ref[i + 2]
            assert scale is not None
            step = 2.0**-3 * r.float().abs() + 2.0**-9 + close["atol"] / scale.float()[..., None]
            worst = float(((k.float() - r.float()).abs() / step).max())
            assert worst <= 1.0, f"FP8 KV values differ by {worst:.2f} of the allowed step"
        else:
            torch.testing.assert_close(k.float(), r.float(), **close)
    # decode attention: the kernel against the torch version on the same cache
    rows = 2
    q = (torch.randn((rows, heads, d), generator=g)).to(dtype).to(KDEV)
    tables = torch.tensor([[3, 1, 4], [3, 1, 0]], dtype=torch.int32, device=KDEV)
    lens = torch.tensor([40, 27], dtype=torch.int32, device=KDEV)
    want = ops.decode_attention_ref(q, ref[0], ref[1], tables, lens, d**-0.5, 1, ref[2], ref[3])
    for n_split in (1, 2):
        out = KERNELS.decode_attention(q, ref[0], ref[1], tables, lens, d**-0.5, n_split, ref[2], ref[3])
        # bf16 operands; float32 ones multiply in tf32 on a GPU (10-bit mantissa), exactly under the interpreter
        tol = 2e-2 if dtype == torch.bfloat16 else 1e-4 if INTERPRET else 5e-3
        torch.testing.assert_close(out.float(), want.float(), rtol=tol, atol=tol)


def test_fp8_kv_kernels_under_interpreter() -> None:
    """On a machine without CUDA: the kernel test above in a child pytest under TRITON_INTERPRET=1."""
    if INTERPRET:
        pytest.skip("this is the interpreter run itself")
    if CUDA:
        pytest.skip("CUDA is here: the kernel test ran natively")
    if not HAS_TRITON:
        pytest.skip("Triton is not installed (it is in the test extra for Linux x86-64)")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        __file__,
        "-q",
        "-p",
        "no:cacheprovider",
        "-k",
        "test_kernel_fp8_kv",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=280)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= 2, out[-3000:]


@pytest.mark.skipif(
    not HAS_TRITON, reason="Triton is not installed (it is in the test extra for Linux x86-64)"
)
@pytest.mark.parametrize("fp8", [True, False], ids=["fp8-cache", "plain-cache"])
def test_kv_kernels_compile_for_hopper(fp8: bool) -> None:
    """The rotary + KV write and the decode attention kernels compile to sm_90 cubins (bf16, the 70B's head shape),
    with and without the FP8 cache: what the interpreter cannot check (the e4m3 conversions, the static branches)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from inference.fast import kernels

    cache = "*fp8e4nv" if fp8 else "*bf16"
    scales = "*fp32" if fp8 else cache  # without FP8 the caches stand in for the (unread) scale pointers
    rope = {
        "qkv_ptr": "*bf16",
        "pos_ptr": "*i64",
        "cos_ptr": "*bf16",
        "sin_ptr": "*bf16",
        "q_out_ptr": "*bf16",
        "k_cache_ptr": cache,
        "v_cache_ptr": cache,
        "slot_ptr": "*i64",
        "k_scale_ptr": scales,
        "v_scale_ptr": scales,
    }
    rope |= {
        n: "i32" for n in ("stride_qkv", "stride_cb", "stride_ch", "stride_ct", "stride_sb", "stride_sh")
    }
    rope |= {n: "constexpr" for n in ("N_HEADS", "N_KV", "HALF", "BLOCK_SIZE", "FP8")}
    src = ASTSource(
        fn=kernels._rope_store_kernel,
        signature=rope,
        constexprs=dict(N_HEADS=8, N_KV=1, HALF=64, BLOCK_SIZE=64, FP8=fp8),
    )
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 1})
    assert ("e4m3" in compiled.asm["ptx"]) == fp8
    attn = {
        "q_ptr": "*bf16",
        "k_ptr": cache,
        "v_ptr": cache,
        "bt_ptr": "*i32",
        "lens_ptr": "*i32",
        "o_ptr": "*fp32",
        "lse_ptr": "*fp32",
        "k_scale_ptr": scales,
        "v_scale_ptr": scales,
        "scale": "fp32",
    }
    attn |= {n: "i32" for n in ("stride_bt", "stride_kb", "stride_kh", "stride_kt", "stride_sb", "stride_sh")}
    attn |= {n: "constexpr" for n in ("FP8", "G", "GP", "D", "BS", "NSPLIT", "N_HEADS")}
    src = ASTSource(
        fn=kernels._decode_attn_kernel,
        signature=attn,
        constexprs=dict(FP8=fp8, G=8, GP=16, D=128, BS=64, NSPLIT=4, N_HEADS=64),
    )
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    assert compiled.metadata.shared <= 227 * 1024
    assert ("e4m3" in compiled.asm["ptx"]) == fp8


# ---- GPU --------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not CUDA or INTERPRET, reason="needs a CUDA GPU (the 70B-width bf16 check runs there)")
def test_gpu_fp8_kv_logits_against_the_bf16_cache() -> None:
    """2 layers at the 70B's widths in bf16: prompt and 16 decode steps (teacher-forced on the bf16 cache's greedy
    tokens), logits with the FP8 cache against the bf16 cache and against the float32 eager forward."""
    cfg = config_70b_widths()
    torch.manual_seed(0)
    with torch.device("cuda"):
        ref32 = LlamaForCausalLM(cfg).eval()
    try:
        ref32.set_attn_implementation("eager")
    except AttributeError:
        ref32.config._attn_implementation = "eager"
    model = copy.deepcopy(ref32).to(torch.bfloat16)
    steps = 16
    params = GenerationParams(max_new_tokens=steps, do_sample=False, repetition_penalty=1.0)
    batch = prompts(2, (517, 1100), cfg.vocab_size, seed=6)
    results: dict[bool, dict[int, tuple[list[int], torch.Tensor]]] = {}
    for fp8 in (False, True):
        dec = StaticSlotDecoder(
            model,
            capacity=2,
            max_context=2048,
            kv_budget_bytes=1 << 30,
            kv_fp8=fp8,
            prefix_cache=False,
            pipeline_steps=False,  # one token per step, in step with last_step_logits
        )
        results[fp8] = {}
        for i, p in enumerate(batch):
            toks = [dec.admit(SlotRequest(i, tuple(p), params))]
            rows = [dec.last_prefill_logits(i).clone()]
            for _ in range(steps - 1):
                toks.append(dec.step()[i])
                rows.append(dec.last_step_logits()[i].clone())
            dec.release(i)
            results[fp8][i] = (toks, torch.stack(rows))
        dec.close()
    worst = worst32 = ref_err = 0.0
    for i, p in enumerate(batch):
        toks16, lg16 = results[False][i]
        toks8, lg8 = results[True][i]
        agree = next((j for j, (a, b) in enumerate(zip(toks16, toks8, strict=True)) if a != b), steps)
        n = min(steps, agree + 1)  # rows computed from the same tokens
        full = torch.tensor([p + toks16[: n - 1]], device="cuda")
        with torch.no_grad():
            want32 = ref32(full).logits[0, len(p) - 1 :].float()
        e, e32, eref = _rel(lg8[:n], lg16[:n]), _rel(lg8[:n], want32), _rel(lg16[:n], want32)
        print(f"prompt {len(p)}: FP8 KV vs bf16 KV {e:.2e}, vs fp32 {e32:.2e} (bf16 KV vs fp32 {eref:.2e})")
        worst, worst32, ref_err = max(worst, e), max(worst32, e32), max(ref_err, eref)
    print(
        f"GPU_FP8_KV_REL_ERR fp8kv_vs_bf16kv={worst:.3e} fp8kv_vs_fp32={worst32:.3e} bf16kv_vs_fp32={ref_err:.3e}"
    )
    assert worst32 <= 2 * ref_err + 2e-2
