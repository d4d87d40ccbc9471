"""FP8 (e4m3) weights for the decode path: per-output-row absmax scaling, weight-only.

A weight matrix W [N, K] is stored as ``data`` (torch.float8_e4m3fn) and ``scale`` (float32, one per row) with
W ≈ data.float() * scale[:, None]. Each row's largest magnitude maps to FP8_MAX, so every row uses the whole e4m3
range. Decode reads half the bytes of bf16; the skinny kernel (``kernels.fp8_skinny_linear``) dequantises in
registers, multiplies with the bf16 activations in fp32 and applies the row scale in its epilogue.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FP8_MAX = 448.0  # largest finite float8_e4m3fn
FP8_DTYPE = torch.float8_e4m3fn
CHUNK_ROWS = 4096


@dataclass(frozen=True)
class Fp8Weight:
    data: torch.Tensor  # torch.float8_e4m3fn, [N, K], contiguous
    scale: torch.Tensor  # torch.float32, [N]; weight ≈ data.float() * scale[:, None]

    def __post_init__(self) -> None:
        if self.data.dtype != FP8_DTYPE or self.data.dim() != 2 or not self.data.is_contiguous():
            raise ValueError(f"Fp8Weight.data: expected a contiguous 2-D {FP8_DTYPE}, got {self.data.dtype}")
        if self.scale.dtype != torch.float32 or tuple(self.scale.shape) != (self.data.shape[0],):
            raise ValueError(
                f"Fp8Weight.scale: expected float32 [{self.data.shape[0]}], got {self.scale.shape}"
            )
        if self.scale.device != self.data.device:
            raise ValueError("Fp8Weight: data and scale on different devices")

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def dtype(self) -> torch.dtype:
        """The stored element type (float8_e4m3fn), so plans and caches tell FP8 from bf16 matrices."""
        return self.data.dtype

    def nbytes(self) -> int:
        """Bytes one matrix product reads: the FP8 matrix and the row scales."""
        return self.data.numel() * self.data.element_size() + self.scale.numel() * self.scale.element_size()

    def dequantize(self, dtype: torch.dtype = torch.bfloat16, chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
        """[N, K] in ``dtype``: (data.float() * scale) rounded once, computed ``chunk_rows`` rows at a time."""
        n = self.data.shape[0]
        out = torch.empty(self.data.shape, dtype=dtype, device=self.data.device)
        for r0 in range(0, n, chunk_rows):
            r1 = min(n, r0 + chunk_rows)
            out[r0:r1] = dequantize_rows(self.data[r0:r1], self.scale[r0:r1], dtype)
        return out


def dequantize_rows(data: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The one definition of dequantisation: fp32 product of the e4m3 value and its row scale, rounded to dtype."""
    return (data.float() * scale[:, None]).to(dtype)


def quantize_fp8(w: torch.Tensor, chunk_rows: int = CHUNK_ROWS) -> Fp8Weight:
    """Per-output-row absmax scaling of a [N, K] bf16/fp16/fp32 matrix, on its own device (CPU or CUDA).

    Works ``chunk_rows`` rows at a time: the scratch is one float32 chunk (4096 x 8192 x 4 B = 128 MiB for the
    70B's widths) plus the FP8 result, so a 57344 x 8192 matrix can be quantised on a nearly full GPU. A row of
    zeros gets scale 1 (its data is zero). Non-finite weights are refused (ValueError).
    """
    if w.dim() != 2:
        raise ValueError(f"quantize_fp8: expected a 2-D matrix, got shape {tuple(w.shape)}")
    if not w.is_floating_point():
        raise ValueError(f"quantize_fp8: expected a floating-point matrix, got {w.dtype}")
    n, k = w.shape
    data = torch.empty((n, k), dtype=FP8_DTYPE, device=w.device)
    scale = torch.empty((n,), dtype=torch.float32, device=w.device)
    for r0 in range(0, n, chunk_rows):
        r1 = min(n, r0 + chunk_rows)
        chunk = w[r0:r1].to(torch.float32, copy=True)  # the one float32 temporary
        if k == 0:
            scale[r0:r1] = 1.0
            continue
        lo, hi = torch.aminmax(chunk, dim=1)
        amax = torch.maximum(hi, -lo)
        if not bool(torch.isfinite(amax).all()):
            raise ValueError(f"quantize_fp8: non-finite weights in rows {r0}..{r1 - 1}")
        s = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
        chunk.div_(s[:, None]).clamp_(-FP8_MAX, FP8_MAX)
        data[r0:r1] = chunk.to(FP8_DTYPE)
        scale[r0:r1] = s
        del chunk
    return Fp8Weight(data, scale)


def fp8_supported(device: torch.device) -> bool:
    """Whether FP8 weights can be served on ``device``: CPU (dequantising), CUDA from compute capability 8.9."""
    if not hasattr(torch, "float8_e4m3fn"):
        return False
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 9)
    return False


def e4m3_to_bf16_bits(u8: torch.Tensor) -> torch.Tensor:
    """The kernel's fast e4m3 → bf16 conversion (``kernels._E4M3_TO_BF16_PTX``), written in torch, for its test.

    Byte b becomes the bf16 bit pattern sign<<15 | (b & 0x7F) << 4, which is the e4m3 value times 2^-120 (e4m3
    has exponent bias 7, bf16 127; subnormals too); multiplying by 2^120 (exact in bf16) restores the value.
    """
    b = u8.to(torch.int32)
    bits = ((b & 0x80) << 8) | ((b & 0x7F) << 4)
    as_bf16 = bits.to(torch.int16).view(torch.bfloat16)
    return as_bf16 * torch.tensor(2.0**120, dtype=torch.bfloat16)
