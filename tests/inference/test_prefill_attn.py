"""Varlen paged prefill attention (``inference.fast.prefill_attn``): one launch for every sequence of a prefill pass.

The kernel against the torch path (``ops.prefill_attention``, per sequence) on sequences of different lengths and
starts (0, inside a block, on a block boundary), GQA groups, block tables out of order, float32 and bf16, 16-bit and
FP8 caches: natively on CUDA, on CPU under the Triton interpreter in a child pytest (as test_fp8_kv.py does). The
kernel compiles for sm_90 at the 70B's head shape. GPU (skipped on CPU): at the 70B's head shape (64 query heads, 8 KV
heads, head_dim 128, blocks of 64) the kernel against the torch path for a turn-1 and a turn-2 pass of 16
conversations, the relative error and both times printed (run with -s).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from bot.domain import GenerationParams
from inference.fast import ops
from tests.inference.test_fast_decoder import sharp_tiny_llama
from tests.inference.triton_interp import CUDA, INTERPRET, patch_interpreter

REPO = Path(__file__).resolve().parents[2]
HAS_TRITON = importlib.util.find_spec("triton") is not None


def _kernels() -> ModuleType | None:
    if not HAS_TRITON or not (INTERPRET or CUDA):
        return None
    if INTERPRET:
        patch_interpreter()
    from inference.fast import prefill_attn

    return prefill_attn


GREEDY = GenerationParams(max_new_tokens=6, do_sample=False, repetition_penalty=1.0)
KERNEL = _kernels()
KDEV = torch.device("cuda" if CUDA and not INTERPRET else "cpu")
needs_kernels = pytest.mark.skipif(KERNEL is None, reason="no CUDA here: runs under the interpreter child")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def _caches(
    n_blocks: int, kv: int, bs: int, d: int, dtype: torch.dtype, fp8: bool, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Random K and V in every block: in ``dtype``, or e4m3 with per-(block, head, token) scales."""
    k = torch.randn((n_blocks, kv, bs, d), generator=g, device=KDEV) * 2
    v = torch.randn((n_blocks, kv, bs, d), generator=g, device=KDEV)
    if not fp8:
        return k.to(dtype), v.to(dtype), None, None
    k_q, k_s = ops.quantize_kv_ref(k * torch.rand((n_blocks, kv, bs, 1), generator=g, device=KDEV))
    v_q, v_s = ops.quantize_kv_ref(v)
    return k_q, v_q, k_s, v_s


def _segments(
    pieces: list[tuple[int, int]], bs: int, n_blocks: int, g: torch.Generator
) -> list[tuple[int, int, int, torch.Tensor]]:
    """(q offset, new tokens, start, block ids) per (start, new tokens): blocks drawn out of order from the pool,
    each sequence holding one block more than it needs (as a slot holds room for its reply)."""
    order = torch.randperm(n_blocks, generator=g, device="cpu").tolist()
    segs, offset = [], 0
    for start, n in pieces:
        need = -(-(start + n) // bs) + 1
        blocks, order = order[:need], order[need:]
        segs.append((offset, n, start, torch.tensor(blocks, dtype=torch.int64, device=KDEV)))
        offset += n
    return segs


def _reference(
    q: torch.Tensor,
    caches: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None],
    segs: list[tuple[int, int, int, torch.Tensor]],
    scale: float,
) -> torch.Tensor:
    """The torch path: one ``ops.prefill_attention`` per sequence."""
    return ops.prefill_attention_batch(q, caches[0], caches[1], ops.PrefillBatch(segs), scale, *caches[2:])


def _kernel(
    q: torch.Tensor,
    caches: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None],
    segs: list[tuple[int, int, int, torch.Tensor]],
    scale: float,
) -> torch.Tensor:
    heads, kv, bs, d = q.shape[1], caches[0].shape[1], caches[0].shape[2], q.shape[2]
    batch = ops.prefill_batch(segs, heads, kv, d, bs, q.device)
    assert batch.meta is not None, "the kernel does not serve this pass"
    return ops.prefill_attention_batch(q, caches[0], caches[1], batch, scale, *caches[2:])


# (start, new tokens): from 0 over several blocks, starting inside a block, on a block boundary, one token after a
# long reused prefix, one that ends exactly on a block boundary
PIECES = [(0, 37), (13, 20), (32, 17), (70, 1), (5, 27)]


@needs_kernels
@pytest.mark.parametrize("fp8", [False, True], ids=["plain-cache", "fp8-cache"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("heads,kv", [(8, 2), (8, 1), (4, 4)], ids=["gqa4", "mqa8", "mha"])
def test_kernel_prefill_attention_equals_the_torch_path(
    heads: int, kv: int, dtype: torch.dtype, fp8: bool
) -> None:
    d, bs, n_blocks = 32, 16, 24
    g = torch.Generator(device="cpu").manual_seed(heads * 10 + kv)
    gd = torch.Generator(device=KDEV).manual_seed(heads * 10 + kv)
    caches = _caches(n_blocks, kv, bs, d, dtype, fp8, gd)
    segs = _segments(PIECES, bs, n_blocks, g)
    tokens = sum(n for _, n in PIECES)
    q = (torch.randn((tokens, heads, d), generator=gd, device=KDEV) * 1.5).to(dtype)
    want = _reference(q, caches, segs, d**-0.5)
    got = _kernel(q, caches, segs, d**-0.5)
    assert got.shape == want.shape == (tokens, heads * d) and got.dtype == dtype
    # float32: exact products under the interpreter, IEEE ones on a GPU; bf16: the probabilities are rounded to bf16
    # before the product with V (as flash attention does), and the output once (about 1e-3 relative in all)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)
    rel = _rel(got.float(), want.float())
    print(f"PREFILL_ATTN_REL_ERR heads={heads} kv={kv} {dtype} fp8={fp8}: {rel:.3e}")
    assert rel <= (1e-6 if dtype == torch.float32 else 3e-3)


@needs_kernels
def test_kernel_switch_keeps_the_torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """HANBOT_FAST_PREFILL_TORCH=1 keeps this attention alone on the torch path (the other kernels still serve)."""
    segs = [(0, 5, 0, torch.tensor([1], device=KDEV))]
    assert ops.prefill_batch(segs, 8, 2, 32, 16, KDEV).meta is not None
    monkeypatch.setenv("HANBOT_FAST_PREFILL_TORCH", "1")
    assert ops.prefill_batch(segs, 8, 2, 32, 16, KDEV).meta is None
    assert ops.triton_kernels(KDEV) is not None


@needs_kernels
def test_kernel_prefill_attention_of_one_sequence_in_pieces() -> None:
    """A chunked prefill: the same sequence in two passes (start 0, then start 29) gives what one pass gives."""
    heads, kv, d, bs, n_blocks = 8, 2, 32, 16, 8
    g = torch.Generator(device=KDEV).manual_seed(5)
    caches = _caches(n_blocks, kv, bs, d, torch.float32, False, g)
    blocks = torch.tensor([6, 2, 7, 0], device=KDEV)
    q = torch.randn((50, heads, d), generator=g, device=KDEV)
    whole = _kernel(q, caches, [(0, 50, 0, blocks)], d**-0.5)
    first = _kernel(q[:29], caches, [(0, 29, 0, blocks)], d**-0.5)
    second = _kernel(q[29:], caches, [(0, 21, 29, blocks)], d**-0.5)
    torch.testing.assert_close(torch.cat([first, second]), whole, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(
    not INTERPRET,
    reason="runs under the Triton interpreter in the child test below (the tiny model's head size 16 is what "
    "tl.dot takes; the 70B head shape is the GPU test's)",
)
def test_kernel_decoder_turns_equal_the_torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole decoder on the kernels, its prefill through the varlen kernel (8-token chunks interleaved with
    the running replies, starting inside blocks and after reused ones): the replies with prefix reuse equal those
    without, and equal the torch path's (every operation in torch)."""
    from inference.fast import StaticSlotDecoder, prefill_attn
    from tests.inference.test_prefix_reuse import converse, make_conversations

    model = sharp_tiny_llama(num_attention_heads=4, num_key_value_heads=2)  # head_dim 16
    launches: list[int] = []
    kernel = prefill_attn.prefill_attention

    def counted(*args: object) -> torch.Tensor:
        launches.append(1)
        return kernel(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(prefill_attn, "prefill_attention", counted)
    common: dict[str, object] = dict(capacity=3, block_size=16, max_context=256, prefill_chunk=8)
    replies = []
    for reuse, torch_only in ((True, False), (False, False), (True, True)):
        monkeypatch.setenv("HANBOT_FAST_NO_TRITON", "1" if torch_only else "0")
        dec = StaticSlotDecoder(model, prefix_cache=reuse, cuda_graphs=False, **common)  # type: ignore[arg-type]
        convs = make_conversations(channels=2, turns=3, first=21, follow=9, seed=31)
        before = len(launches)
        converse(dec, convs, GREEDY)
        assert (len(launches) > before) != torch_only
        assert all(h > 0 for c in convs for h in c.hits[1:]) == reuse
        replies.append([c.replies for c in convs])
    assert replies[0] == replies[1] == replies[2]


def test_prefill_kernels_under_interpreter() -> None:
    """On a machine without CUDA: the kernel tests above in a child pytest under TRITON_INTERPRET=1."""
    if INTERPRET:
        pytest.skip("this is the interpreter run itself")
    if CUDA:
        pytest.skip("CUDA is here: the kernel tests ran natively")
    if not HAS_TRITON:
        pytest.skip("Triton is not installed (it is in the test extra for Linux x86-64)")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        __file__,
        "-q",
        "-s",
        "-p",
        "no:cacheprovider",
        "-k",
        "test_kernel_",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= 15, out[-3000:]


@pytest.mark.skipif(
    not HAS_TRITON, reason="Triton is not installed (it is in the test extra for Linux x86-64)"
)
@pytest.mark.parametrize("fp8", [True, False], ids=["fp8-cache", "plain-cache"])
def test_prefill_kernel_compiles_for_hopper(fp8: bool) -> None:
    """The kernel compiles to an sm_90 cubin at the 70B's head shape (bf16 queries, GQA 8, blocks of 64), with and
    without the FP8 cache, within the shared memory an H100/H200 block may use."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from inference.fast import prefill_attn

    cache = "*fp8e4nv" if fp8 else "*bf16"
    scales = "*fp32" if fp8 else cache
    sig = {
        "q_ptr": "*bf16",
        "k_ptr": cache,
        "v_ptr": cache,
        "o_ptr": "*bf16",
        "meta_ptr": "*i32",
        "tile_ptr": "*i32",
        "k_scale_ptr": scales,
        "v_scale_ptr": scales,
        "scale": "fp32",
    }
    sig |= {
        n: "i32"
        for n in ("stride_meta", "stride_o", "stride_kb", "stride_kh", "stride_kt", "stride_sb", "stride_sh")
    }
    consts = dict(FP8=fp8, IEEE=False, G=8, GP=8, TOK=16, D=128, BS=64, N_HEADS=64)
    sig |= {n: "constexpr" for n in consts}
    src = ASTSource(fn=prefill_attn._prefill_attn_kernel, signature=sig, constexprs=consts)
    compiled = triton.compile(
        src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8, "num_stages": 2}
    )
    assert compiled.metadata.shared <= 227 * 1024
    assert ("e4m3" in compiled.asm["ptx"]) == fp8


# ---- GPU --------------------------------------------------------------------------------------------------------


def _time_ms(fn: object, reps: int = 10) -> float:
    fn()  # type: ignore[operator]
    torch.cuda.synchronize()
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(reps):
        fn()  # type: ignore[operator]
    end.record()
    torch.cuda.synchronize()
    return begin.elapsed_time(end) / reps


def _gpu_turn(turn: int, start: int, n: int, fp8: bool) -> None:
    """16 conversations of ``n`` new tokens after ``start`` at the 70B's head shape: errors and times printed."""
    heads, kv, d, bs = 64, 8, 128, 64
    g = torch.Generator(device="cuda").manual_seed(turn)
    cpu = torch.Generator(device="cpu").manual_seed(turn)
    scale = d**-0.5
    n_blocks = 16 * (-(-(start + n) // bs) + 1) + 4
    caches = _caches(n_blocks, kv, bs, d, torch.bfloat16, fp8, g)
    segs = _segments([(start, n)] * 16, bs, n_blocks, cpu)
    q = torch.randn((16 * n, heads, d), generator=g, device="cuda", dtype=torch.bfloat16)
    want = _reference(q, caches, segs, scale)
    got = _kernel(q, caches, segs, scale)
    # float32 truth: the same (dequantised, bf16-rounded as both paths read it) cache and queries in float32
    k32, v32 = caches[0].float(), caches[1].float()
    if caches[2] is not None and caches[3] is not None:
        k32 = (k32 * caches[2][..., None]).bfloat16().float()
        v32 = (v32 * caches[3][..., None]).bfloat16().float()
    truth = _reference(q.float(), (k32, v32, None, None), segs, scale)
    err, err_torch = _rel(got.float(), want.float()), _rel(want.float(), truth)
    err_kernel = _rel(got.float(), truth)
    batch = ops.prefill_batch(segs, heads, kv, d, bs, q.device)
    t_kernel = _time_ms(
        lambda: ops.prefill_attention_batch(q, caches[0], caches[1], batch, scale, *caches[2:])
    )
    t_torch = _time_ms(lambda: _reference(q, caches, segs, scale), reps=3)
    t_meta = _time_ms(lambda: ops.prefill_batch(segs, heads, kv, d, bs, q.device))
    print(
        f"GPU_PREFILL_ATTN_REL_ERR turn={turn} fp8={fp8} kernel_vs_torch={err:.3e} "
        f"kernel_vs_fp32={err_kernel:.3e} torch_vs_fp32={err_torch:.3e}"
    )
    print(
        f"GPU_PREFILL_ATTN_TIME turn={turn} fp8={fp8} 16x{n} new after {start}: kernel {t_kernel:.3f} ms, "
        f"torch loop {t_torch:.3f} ms per layer (x80 layers: {80 * t_kernel:.1f} vs {80 * t_torch:.1f} ms); "
        f"metadata {t_meta:.3f} ms per pass"
    )
    assert err_kernel <= 2 * err_torch + 1e-3
    assert err <= 2e-2


@pytest.mark.skipif(not CUDA or INTERPRET, reason="needs a CUDA GPU (the 70B head shape runs there)")
@pytest.mark.parametrize("fp8", [True, False], ids=["fp8-cache", "bf16-cache"])
def test_gpu_prefill_attention_70b_heads(fp8: bool) -> None:
    """The 70B's head shape, 16 conversations: turn 1 (520 new tokens from 0) and turn 2 (80 new after 768
    reused), the kernel against the torch path in bf16 (and both against float32), one layer's time each."""
    _gpu_turn(1, 0, 520, fp8)
    _gpu_turn(2, 768, 80, fp8)
