# mypy: disable-error-code="no-untyped-def"
# (Triton reads the annotations of @triton.jit functions itself; the kernel carries only tl.constexpr ones.)
"""Per-token FP8 quantisation of prefill activations in one kernel (for the W8A8 ``_scaled_mm`` prefill).

The torch version (``gemm.quantize_rows_fp8``) makes five passes over the activations (to float32, abs, max, divide,
convert); this kernel reads each row twice from cache (its absolute maximum, then the scaled values) and writes the
FP8 row and its scale once. The same arithmetic: scale = amax / 448 (1 for an all-zero row), q = x / scale rounded
to nearest even and saturated to ±448.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

FP8_MAX = 448.0


@triton.jit
def _quantize_rows_kernel(x_ptr, q_ptr, s_ptr, K, stride_x, stride_q, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    amax = tl.zeros((BLOCK,), dtype=tl.float32)
    for k in range(0, K, BLOCK):
        offs = k + cols
        x = tl.load(x_ptr + row * stride_x + offs, mask=offs < K, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    top = tl.max(amax, axis=0)
    scale = tl.where(top > 0, top / 448.0, 1.0)
    for k in range(0, K, BLOCK):
        offs = k + cols
        x = tl.load(x_ptr + row * stride_x + offs, mask=offs < K, other=0.0).to(tl.float32)
        q = tl.minimum(tl.maximum(x / scale, -448.0), 448.0)
        tl.store(q_ptr + row * stride_q + offs, q.to(q_ptr.dtype.element_ty), mask=offs < K)
    tl.store(s_ptr + row, scale)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 [M, K], float32 scales [M, 1]) of a [M, K] activation matrix on the GPU."""
    m, k = x.shape
    if x.stride(1) != 1:
        x = x.contiguous()
    q = torch.empty((m, k), dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    block = min(4096, triton.next_power_of_2(k))
    _quantize_rows_kernel[(m,)](x, q, scale, k, x.stride(0), q.stride(0), BLOCK=block, num_warps=8)
    return q, scale
