"""FP8 weights (inference.fast.fp8) and the FP8 matrix products of the fast decoder (gemm.LinearPlan, kernels).

CPU: quantisation round trip within e4m3 precision, chunking that changes nothing, LinearPlan's CPU product equal
to the dequantised product. The Triton kernels (FP8 skinny GEMM, and the existing bf16 one) run where Triton can:
natively on CUDA, or on CPU under the Triton interpreter in a child pytest with TRITON_INTERPRET=1 (the variable
must be set before Triton is imported, and must not leak into the other tests, which would then run every kernel
in the interpreter). The interpreter of Triton 3.6 needs two patches, applied only in that child (see
``tests/inference/triton_interp.py``). The FP8 kernel's PTX conversion cannot run in the interpreter; its arithmetic is checked in
torch against torch's own conversion for all 256 bytes, and the PTX itself on the GPU.
GPU (skipped on CPU): every config at the 70B's shapes, the W8A8 ``_scaled_mm`` prefill, CUDA-graph capture; errors
are printed (run with -s).
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
import torch.nn.functional as F

from inference.fast.fp8 import (
    FP8_DTYPE,
    FP8_MAX,
    Fp8Weight,
    e4m3_to_bf16_bits,
    fp8_supported,
    quantize_fp8,
)
from inference.fast.gemm import LinearPlan
from tests.inference.triton_interp import CUDA, INTERPRET, patch_interpreter

REPO = Path(__file__).resolve().parents[2]
HAS_TRITON = importlib.util.find_spec("triton") is not None

# e4m3: 3 mantissa bits, so rounding a normal value moves it by at most half an ulp = 2^-4 of its magnitude; below
# the smallest normal (2^-6, in units of the row scale) the step is 2^-9, so the error is at most 2^-10 scale units.
REL_ERR = 2.0**-4
SUBNORMAL_ABS = 2.0**-10


def _kernels() -> ModuleType | None:
    """The kernel module where it can run here: CUDA, or CPU inside the interpreter child."""
    if not HAS_TRITON or not (INTERPRET or CUDA):
        return None
    if INTERPRET:
        patch_interpreter()
    from inference.fast import kernels

    return kernels


KERNELS = _kernels()
KDEV = torch.device("cuda" if CUDA and not INTERPRET else "cpu")
needs_kernels = pytest.mark.skipif(
    KERNELS is None,
    reason="no CUDA here: runs under the Triton interpreter in test_kernels_under_interpreter",
)
needs_gpu = pytest.mark.skipif(not CUDA or INTERPRET, reason="needs a CUDA GPU")


def _weights(n: int, k: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    """Rows spanning six orders of magnitude, one zero row, one row with a single large entry."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn((n, k), generator=g) * torch.logspace(-3, 3, n)[:, None]
    w[n // 2] = 0.0
    w[n // 3] = 1e-3 * torch.randn(k, generator=g)
    w[n // 3, 1] = 50.0
    return w.to(dtype)


# ---- quantisation ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_quantize_round_trip_within_e4m3_precision(dtype: torch.dtype) -> None:
    w = _weights(37, 300, dtype)
    q = quantize_fp8(w)
    assert q.data.dtype == FP8_DTYPE and q.data.shape == (37, 300) and q.data.is_contiguous()
    assert q.scale.dtype == torch.float32 and q.scale.shape == (37,)
    assert q.shape == (37, 300) and q.device == w.device and q.dtype == FP8_DTYPE
    wf = w.float()
    deq = q.dequantize(torch.float32)
    err = (deq - wf).abs()
    bound = REL_ERR * wf.abs() + SUBNORMAL_ABS * q.scale[:, None]
    assert bool((err <= bound * (1 + 1e-5)).all()), f"worst excess {float((err - bound).max())}"
    # each row's largest magnitude maps to ±448 and comes back (to fp32 rounding)
    amax = wf.abs().amax(dim=1)
    nz = amax > 0
    assert torch.allclose(q.scale[nz] * FP8_MAX, amax[nz], rtol=1e-6, atol=0)
    assert torch.allclose(q.data.float().abs().amax(dim=1)[nz], torch.full_like(amax[nz], FP8_MAX))
    # the zero row: scale 1, data 0
    assert float(q.scale[37 // 2]) == 1.0 and not bool(q.data[37 // 2].float().any())
    # the bound is not vacuous: typical relative error of e4m3 is a few percent, not zero and not more
    rel = float((deq - wf).norm() / wf.norm())
    assert 1e-3 < rel < 0.05, rel


def test_quantize_chunked_equals_unchunked() -> None:
    w = _weights(53, 96, torch.bfloat16, seed=3)
    whole = quantize_fp8(w, chunk_rows=1 << 20)
    for chunk in (1, 7, 16, 53):
        part = quantize_fp8(w, chunk_rows=chunk)
        assert torch.equal(part.data.view(torch.uint8), whole.data.view(torch.uint8)), chunk
        assert torch.equal(part.scale, whole.scale), chunk
    assert torch.equal(whole.dequantize(torch.bfloat16, chunk_rows=5), whole.dequantize(torch.bfloat16))


def test_quantize_rejects_bad_input() -> None:
    w = torch.randn(8, 16)
    w[3, 4] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        quantize_fp8(w)
    with pytest.raises(ValueError):
        quantize_fp8(torch.randn(4))
    with pytest.raises(ValueError):
        quantize_fp8(torch.ones(4, 4, dtype=torch.int32))
    with pytest.raises(ValueError):
        Fp8Weight(torch.zeros(4, 4, dtype=FP8_DTYPE), torch.ones(3))


def test_nbytes_and_support() -> None:
    q = quantize_fp8(torch.randn(10, 32))
    assert q.nbytes() == 10 * 32 + 10 * 4
    assert fp8_supported(torch.device("cpu"))


def test_e4m3_bit_trick_equals_torch_conversion_for_every_byte() -> None:
    """The arithmetic of the kernel's PTX conversion, for all 256 e4m3 bytes but the two NaNs."""
    u8 = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    finite = (u8 & 0x7F) != 0x7F
    ours = e4m3_to_bf16_bits(u8[finite])
    theirs = u8[finite].view(FP8_DTYPE).to(torch.bfloat16)
    assert torch.equal(ours.view(torch.int16), theirs.view(torch.int16))  # bitwise: -0, subnormals included


def test_f16_mode_arithmetic() -> None:
    """The f16 mode's two roundings, in torch: every finite e4m3 byte is exact in f16, and x * 2^-8 → f16 → * 2^8
    is exact for bf16 x in [2^-6, 1.7e7] and off by at most F16_X_ABS_ERR below (outliers like 3000: exact)."""
    u8 = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    finite = (u8 & 0x7F) != 0x7F
    w = u8[finite].view(FP8_DTYPE)
    assert torch.equal(w.to(torch.float16).float(), w.float())
    mags = torch.logspace(-9, 7.2, 4000)
    x = torch.cat([mags, -mags, torch.tensor([0.0, 3000.0, -3000.0, 2.0**-6])]).to(torch.bfloat16).float()
    back = (x * 2.0**-8).to(torch.float16).float() * 2.0**8
    assert bool(torch.isfinite(back).all())
    err = (back - x).abs()
    normal = x.abs() >= 2.0**-6
    assert not bool(err[normal].any())
    assert float(err.max()) <= F16_X_ABS_ERR
    assert not bool(torch.isfinite((torch.tensor([1.7e7]) * 2.0**-8).to(torch.float16)).all())  # the limit


# ---- LinearPlan on CPU ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 5, 40])
def test_plan_cpu_fp8_is_the_dequantised_product(dtype: torch.dtype, m: int) -> None:
    w = _weights(48, 80, dtype, seed=m)
    q = quantize_fp8(w)
    x = torch.randn((m, 80), generator=torch.Generator().manual_seed(7)).to(dtype)
    plan = LinearPlan(torch.device("cpu"))
    assert plan.fp8_prefill == "dequant"
    y = plan.linear(x, q)
    assert y.dtype == dtype and y.shape == (m, 48)
    assert torch.equal(y, F.linear(x, q.dequantize(dtype)))
    # close to the unquantised product: each weight moved by at most its e4m3 rounding error
    ref = F.linear(x.float(), w.float())
    wbound = REL_ERR * w.float().abs() + SUBNORMAL_ABS * q.scale[:, None]
    out_round = 2.0**-8 if dtype == torch.bfloat16 else 1e-6
    bound = x.float().abs() @ wbound.T + out_round * ref.abs() + 1e-5
    assert bool(((y.float() - ref).abs() <= bound).all())
    assert torch.equal(plan.linear(x, w), F.linear(x, w))  # dense weights unchanged


def test_plan_fp8_prefill_option() -> None:
    with pytest.raises(ValueError):
        LinearPlan(torch.device("cpu"), fp8_prefill="fast")
    assert LinearPlan(torch.device("cpu"), fp8_prefill="scaled_mm").fp8_prefill == "dequant"  # CPU: dequant


# ---- kernels (CUDA, or the interpreter child) ------------------------------------------------------------------


# The f16 mode (CONVERT 2) rounds x * 2^-8 to f16: exact for 2^-6 <= |x| <= 1.7e7, else (f16 subnormals) off by at
# most half of f16's smallest step, 2^-25, times 2^8.
F16_X_ABS_ERR = 2.0**-17


def _x_abs_err(cfg: tuple[int, ...], dtype: torch.dtype) -> float:
    return F16_X_ABS_ERR if cfg[4] == 2 and dtype != torch.float32 else 0.0


def _check(y: torch.Tensor, x: torch.Tensor, wdeq: torch.Tensor, x_abs_err: float = 0.0) -> float:
    """y against the fp32 product; bound: y's own rounding plus fp32 summation (K * 2^-23 of sum |x||w|), plus
    x_abs_err * sum |w| where the kernel rounds the activations by up to x_abs_err (the f16 mode).

    Rounding to bf16 moves a value by at most 2^-8 of it; the interpreter truncates fp32 → bf16 instead (up to
    2^-7), where the GPU rounds to nearest.
    """
    ref = F.linear(x.float(), wdeq.float())
    mag = x.float().abs() @ wdeq.float().abs().T
    bf16_round = 2.0**-7 if INTERPRET else 2.0**-8
    out_round = {torch.bfloat16: bf16_round, torch.float16: 2.0**-11}.get(y.dtype, 2.0**-23)
    bound = out_round * ref.abs() + x.shape[1] * 2.0**-23 * mag + 1e-30
    bound = bound + (1 + 2.0**-7) * x_abs_err * wdeq.float().abs().sum(1)[None, :]
    err = (y.float() - ref).abs()
    assert y.shape == ref.shape and y.dtype == x.dtype
    assert bool((err <= bound).all()), f"worst excess {float((err - bound).max())}"
    return float(err.max() / ref.abs().max().clamp_min(1e-30))


FP8_CONFIGS = KERNELS.FP8_GEMM_CONFIGS if KERNELS is not None else ()


@needs_kernels
@pytest.mark.parametrize("cfg", FP8_CONFIGS, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("n,k", [(97, 200), (128, 256), (136, 520)])
def test_kernel_fp8_skinny_matches_dequantised(cfg: tuple[int, ...], n: int, k: int) -> None:
    assert KERNELS is not None
    if INTERPRET and cfg[4] == 1:
        # inline PTX does not run in the interpreter: check the config's tiling with Triton's conversion here
        # (the PTX arithmetic: test_e4m3_bit_trick_...; the PTX itself: on the GPU)
        cfg = (*cfg[:4], 0)
    q = quantize_fp8(_weights(n, k, torch.bfloat16, seed=n + k).to(KDEV))
    wdeq = q.dequantize(torch.float32)
    g = torch.Generator().manual_seed(11)
    for m in (1, 5, 16, 17, 32):
        x = torch.randn((m, k), generator=g).to(torch.bfloat16).to(KDEV)
        y = KERNELS.fp8_skinny_linear(x, q.data, q.scale, cfg)
        _check(y, x, wdeq, _x_abs_err(cfg, x.dtype))


F16_CONFIGS = tuple(c for c in FP8_CONFIGS if c[4] == 2)


@needs_kernels
@pytest.mark.parametrize("cfg", F16_CONFIGS, ids=lambda c: "x".join(map(str, c)))
def test_kernel_fp8_f16_mode_outliers_and_small_activations(cfg: tuple[int, ...]) -> None:
    """The f16 mode with activations from 1e-6 to 3e4 (outliers like 3000 in a few columns), bf16 and f16 x: within
    the bound of ``_check``, and (bf16 output rounding aside) as close to the dequantised product as CONVERT 0."""
    assert KERNELS is not None
    n, k = 96, 512
    g = torch.Generator().manual_seed(13)
    weights = {
        torch.bfloat16: _weights(n, k, torch.bfloat16, seed=9),
        torch.float16: torch.randn((n, k), generator=g) * 0.02,  # f16 outputs: products must stay below 65504
    }
    x = torch.randn((17, k), generator=g) * torch.logspace(-6, 0, k)[torch.randperm(k, generator=g)]
    x[:, 3] = 3000.0
    x[:, 100] = -3000.0
    x[0, 7] = 30000.0
    x[1] = torch.randn(k, generator=g) * 1e-4  # a row of small values only: mostly f16 subnormals after 2^-8
    for dtype in (torch.bfloat16, torch.float16):
        q = quantize_fp8(weights[dtype].to(KDEV))
        wdeq = q.dequantize(torch.float32)
        xd = x.to(dtype).to(KDEV)
        for m in (1, 2, 17):
            y = KERNELS.fp8_skinny_linear(xd[:m], q.data, q.scale, cfg)
            rel = _check(y, xd[:m], wdeq, F16_X_ABS_ERR)
            y0 = KERNELS.fp8_skinny_linear(xd[:m], q.data, q.scale, (*cfg[:4], 0))
            rel0 = _check(y0, xd[:m], wdeq)
            print(f"f16 mode {cfg} {dtype} m={m}: max rel err {rel:.2e} (CONVERT 0: {rel0:.2e})")
            assert rel <= 2 * rel0 + 2.0**-8


@needs_kernels
def test_kernel_fp8_skinny_other_dtypes_and_strides() -> None:
    assert KERNELS is not None
    q = quantize_fp8(_weights(70, 144, seed=5).to(KDEV))
    wdeq = q.dequantize(torch.float32)
    base = torch.randn((3, 300), generator=torch.Generator().manual_seed(2)).to(KDEV)
    x = base[:, 10:154]  # row stride 300, not K
    for dtype in (torch.float32, torch.float16):
        _check(
            KERNELS.fp8_skinny_linear(x.to(dtype), q.data, q.scale, KERNELS.FP8_DEFAULT_CONFIG),
            x.to(dtype),
            wdeq,
        )
    xb = x.to(torch.bfloat16)
    _check(KERNELS.fp8_skinny_linear(xb, q.data, q.scale, KERNELS.FP8_DEFAULT_CONFIG), xb, wdeq)
    with pytest.raises(ValueError):
        KERNELS.fp8_skinny_linear(
            torch.zeros((33, 144), device=KDEV), q.data, q.scale, KERNELS.FP8_DEFAULT_CONFIG
        )


@pytest.mark.skipif(not HAS_TRITON or INTERPRET, reason="needs Triton (compiled, not interpreted)")
def test_fp8_configs_compile_for_hopper() -> None:
    """Every FP8 config (both row pads) compiles to an sm_90 cubin: Triton and its bundled ptxas need no GPU.

    Catches what the interpreter cannot see: the inline PTX, shared memory beyond Hopper's 227 KB per block.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from inference.fast import kernels

    kernel = kernels._fp8_skinny_gemm_kernel
    # as the JIT specialises the 70B's shapes: 16-byte aligned pointers, sizes and strides divisible by 16 (without
    # these hints the loads are not vectorised and the code measured here is not the code that runs)
    aligned = ("x_ptr", "w_ptr", "s_ptr", "y_ptr", "N", "K", "stride_xm", "stride_wn", "stride_ym")
    attrs = {(kernel.arg_names.index(a),): [["tt.divisibility", 16]] for a in aligned}
    for bn, bk, warps, stages, convert in kernels.FP8_GEMM_CONFIGS:
        sig = {
            "x_ptr": "*fp16" if convert == 2 else "*bf16",
            "w_ptr": "*u8",
            "s_ptr": "*fp32",
            "y_ptr": "*bf16",
        }
        sig |= {"t_ptr": "*bf16", "u_ptr": "*fp32", "idx_ptr": "*i32"}  # the adapters' fold (``Tail``)
        sig |= {
            name: "i32"
            for name in ("M", "N", "K", "NT", "GROUP", "stride_xm", "stride_wn", "stride_ym", "stride_tn")
        }
        sig |= {"stride_um": "i32"}
        sig |= {
            name: "constexpr"
            for name in (
                "MP",
                "BLOCK_N",
                "BLOCK_K",
                "STAGES",
                "CONVERT",
                "IEEE",
                "EVEN_N",
                "EVEN_K",
                "TAIL",
                "TAIL_BLOCK_K",
            )
        }
        shared: dict[tuple[int, bool], int] = {}
        for mp, tail in ((16, False), (32, False), (16, True)):
            consts = dict(
                MP=mp,
                BLOCK_N=bn,
                BLOCK_K=bk,
                STAGES=stages,
                CONVERT=convert,
                IEEE=False,
                EVEN_N=True,
                EVEN_K=True,
                TAIL=tail,
                TAIL_BLOCK_K=bk // 2,
            )
            src = ASTSource(fn=kernel, signature=sig, constexprs=consts, attrs=attrs)
            compiled = triton.compile(
                src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages}
            )
            assert compiled.metadata.shared <= 227 * 1024, (bn, bk, warps, stages, convert, mp, tail)
            shared[(mp, tail)] = compiled.metadata.shared
            ptx = compiled.asm["ptx"]
            assert ("mul.rn.bf16x2" in ptx) == (convert == 1)
            if convert == 2:  # one native e4m3x2 → f16x2 per two weights, no f16 → bf16 step
                assert "cvt.rn.f16x2.e4m3x2" in ptx and "cvt.bf16.f16" not in ptx
        # the adapters' fold (a 16-bit tail, half the K block) leaves as many programs per SM as without it
        per_sm = {tail: 228 * 1024 // shared[(16, tail)] for tail in (False, True)}
        assert per_sm[True] == per_sm[False], (bn, bk, warps, stages, convert, shared)
    src = ASTSource(
        fn=kernels._scale_to_f16_kernel,
        signature={"x_ptr": "*bf16", "out_ptr": "*fp16", "K": "i32", "stride_xm": "i32", "MUL": "constexpr"}
        | {"BLOCK": "constexpr"},
        constexprs={"MUL": 2.0**-8, "BLOCK": 1024},
    )
    triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})


GEMM_CONFIGS = KERNELS.GEMM_CONFIGS if KERNELS is not None else ()


@needs_kernels
@pytest.mark.parametrize("cfg", GEMM_CONFIGS, ids=lambda c: "x".join(map(str, c)))
def test_kernel_bf16_skinny_matches_torch(cfg: tuple[int, int, int, int]) -> None:
    """The existing bf16 skinny GEMM, whose first run in the interpreter this is."""
    assert KERNELS is not None
    g = torch.Generator().manual_seed(4)
    w = (torch.randn((97, 200), generator=g) * 0.1).to(torch.bfloat16).to(KDEV)
    for m in (1, 17):
        x = torch.randn((m, 200), generator=g).to(torch.bfloat16).to(KDEV)
        _check(KERNELS.skinny_linear(x, w, cfg), x, w)


def test_kernels_under_interpreter() -> None:
    """On a machine without CUDA: the kernel tests above, in a child pytest under TRITON_INTERPRET=1."""
    if INTERPRET:
        pytest.skip("this is the interpreter run itself")
    if CUDA:
        pytest.skip("CUDA is here: the kernel tests ran natively")
    if not HAS_TRITON:
        pytest.skip("Triton is not installed (it is in the test extra for Linux x86-64)")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k", "test_kernel_"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=280)
    out = proc.stdout + proc.stderr
    print(out[-3000:])
    assert proc.returncode == 0, out[-6000:]
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= 10, out[-3000:]
    assert "failed" not in out.splitlines()[-1], out[-3000:]


# ---- GPU (the lead runs these on the H200) ---------------------------------------------------------------------

SHAPES_70B = {
    "qkv": (10240, 8192),
    "o": (8192, 8192),
    "gate_up": (57344, 8192),
    "down": (8192, 28672),
    "lm_head": (128256, 8192),
}


@needs_gpu
@pytest.mark.parametrize("name", list(SHAPES_70B))
def test_gpu_fp8_kernel_70b_shapes(name: str) -> None:
    assert KERNELS is not None
    n, k = SHAPES_70B[name]
    dev = torch.device("cuda")
    torch.manual_seed(0)
    q = quantize_fp8(torch.randn((n, k), device=dev, dtype=torch.bfloat16) * 0.02)
    wdeq = q.dequantize(torch.float32)
    for m in (1, 16, 32):
        x = torch.randn((m, k), device=dev, dtype=torch.bfloat16)
        for cfg in KERNELS.FP8_GEMM_CONFIGS:
            try:
                y = KERNELS.fp8_skinny_linear(x, q.data, q.scale, cfg)
            except Exception as exc:  # resources: the tuner skips such a config; report it
                print(f"{name} m={m} cfg={cfg}: did not run: {type(exc).__name__}: {str(exc)[:200]}")
                continue
            rel = _check(y, x, wdeq, _x_abs_err(cfg, x.dtype))
            print(f"{name} m={m} cfg={cfg}: max rel err vs dequantised {rel:.2e}")
    del wdeq


@needs_gpu
def test_gpu_plan_tunes_and_serves_fp8(tmp_path: Path) -> None:
    dev = torch.device("cuda")
    torch.manual_seed(1)
    mats = [
        quantize_fp8(torch.randn((8192, 8192), device=dev, dtype=torch.bfloat16) * 0.02) for _ in range(2)
    ]
    dense = [torch.randn((1024, 8192), device=dev, dtype=torch.bfloat16) for _ in range(2)]
    plan = LinearPlan(dev, "auto", cache_file=tmp_path / "plan.json")
    plan.tune({"o": mats, "dense": dense})
    print("plan timings:", plan.timings)
    assert set(plan.fp8_choices) == {(8192, 8192, r) for r in (1, 16, 32)}
    assert "o.1" in plan.timings and float(plan.timings["o.1"]["best_TBps"]) > 0  # type: ignore[arg-type]
    again = LinearPlan(dev, "auto", cache_file=tmp_path / "plan.json")
    again.tune({"o": mats, "dense": dense})
    assert again.fp8_choices == plan.fp8_choices
    wdeq = mats[0].dequantize(torch.float32)
    for m in (1, 7, 32):
        x = torch.randn((m, 8192), device=dev, dtype=torch.bfloat16)
        _check(plan.linear(x, mats[0]), x, wdeq, F16_X_ABS_ERR)  # whichever config won
    # captured in a CUDA graph, as the decode step is
    x = torch.randn((4, 8192), device=dev, dtype=torch.bfloat16)
    plan.linear(x, mats[0])
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = plan.linear(x, mats[0])
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    _check(y, x, wdeq, F16_X_ABS_ERR)


@needs_gpu
@pytest.mark.parametrize("m", [33, 100, 2048])
def test_gpu_fp8_prefill(m: int) -> None:
    """More than 32 rows: the ``_scaled_mm`` (W8A8) path and the dequantised one, against the bf16 product."""
    from inference.fast.gemm import dequant_linear, scaled_mm_linear

    dev = torch.device("cuda")
    torch.manual_seed(2)
    for n, k in ((8192, 8192), (8192, 28672), (10240, 8192)):
        w = torch.randn((n, k), device=dev, dtype=torch.bfloat16) * 0.02
        q = quantize_fp8(w)
        x = torch.randn((m, k), device=dev, dtype=torch.bfloat16)
        exact = F.linear(x.float(), q.dequantize(torch.float32))
        dense = F.linear(x.float(), w.float())
        deq = dequant_linear(x, q)
        rel_deq = float((deq.float() - exact).norm() / exact.norm())
        print(f"prefill m={m} {n}x{k}: dequant vs exact dequantised {rel_deq:.2e}")
        assert rel_deq < 1e-2
        plan = LinearPlan(dev)
        print(f"prefill m={m} {n}x{k}: plan.fp8_prefill={plan.fp8_prefill}")
        if plan.fp8_prefill == "scaled_mm":
            try:
                y = scaled_mm_linear(x, q)
            except Exception as exc:
                print(f"prefill m={m} {n}x{k}: _scaled_mm unpadded failed ({exc}); padding rows to 16")
                y = scaled_mm_linear(x, q, pad_rows=True)
            rel = float((y.float() - exact).norm() / exact.norm())
            rel_dense = float((y.float() - dense).norm() / dense.norm())
            print(
                f"prefill m={m} {n}x{k}: scaled_mm vs dequantised {rel:.2e}, vs bf16 weights {rel_dense:.2e}"
            )
            assert y.dtype == torch.bfloat16 and y.shape == (m, n)
            assert rel < 0.06  # the activations' e4m3 rounding (a few percent), nothing worse
            plan.linear(x, q)
            assert plan.fp8_prefill == "scaled_mm", "the _scaled_mm call failed and fell back"
            print(f"prefill m={m}: plan.scaled_mm_pad_rows={plan.scaled_mm_pad_rows}")
        y = plan.linear(x, q)
        rel_plan = float((y.float() - exact).norm() / exact.norm())
        print(f"prefill m={m} {n}x{k}: plan.linear vs dequantised {rel_plan:.2e}")
        assert rel_plan < 0.06
