"""The fused per-token FP8 quantisation kernel (inference.fast.quant_kernels) equals the torch version.

On the GPU: bit for bit (scales and FP8 bytes), prefill shapes of the 70B, a zero row and outliers. The kernel serves
only on CUDA (the CPU path uses the torch version), and Triton 3.6's CPU interpreter cannot check it: its float32 to
e4m3 conversion does not round to nearest even (ties, subnormals, carries into the next power of two), so it is
checked where it runs.
"""

from __future__ import annotations

import pytest
import torch

from inference.fast.gemm import quantize_rows_fp8

CUDA = torch.cuda.is_available()


def activations(m: int, k: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(m + k)
    x = torch.randn((m, k), generator=g) * 3
    x[0] = 0.0  # an all-zero row: scale 1
    x[min(1, m - 1), 7] = 3000.0  # an outlier
    return x.to(dtype).to(device)


def compare(x: torch.Tensor) -> None:
    """Kernel vs torch on ``x``: the same scales and the same FP8 values."""
    from inference.fast.quant_kernels import quantize_rows

    q, s = quantize_rows(x.clone())
    q_ref, s_ref = quantize_rows_fp8(x.clone())
    assert torch.equal(s, s_ref)
    differ = q.float() != q_ref.float()
    assert not differ.any(), f"{int(differ.sum())} FP8 values differ"


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize(("m", "k"), [(2048, 8192), (33, 28672), (512, 8192), (3, 100)])
def test_kernel_equals_torch_bit_for_bit_on_the_gpu(m: int, k: int) -> None:
    compare(activations(m, k, torch.bfloat16, "cuda"))
