# mypy: disable-error-code="no-untyped-def"
"""Triton kernels of the adapters' decode path (``lora.py``): gathered LoRA products, one pair of launches per
projection whatever the mix of adapters in the batch (Punica's BGMV, vLLM's shrink/expand).

``shrink``: each (row, K-chunk) program reads its row's adapter index (-1: the base model, the program leaves at
once), multiplies its chunk of x by that adapter's A stack [parts·R, K] and writes the partial sums [parts·R] in
float32 (split-K without atomics: nothing to zero first). ``expand``: each (row, column tile) program sums the
partials of its row, takes the R values of the part its columns belong to, multiplies by B [R, tile] and adds into
the base output in place. The torch reference is ``lora.add_rows_ref``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

SHRINK_BLOCK_K = 128
MAX_SPLIT = 64


@triton.jit
def _lora_shrink_kernel(
    x_ptr,
    a_ptr,
    idx_ptr,
    part_ptr,
    K,
    K_PER,
    stride_x,
    stride_as,
    J: tl.constexpr,
    JP: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0)
    sp = tl.program_id(1)
    idx = tl.load(idx_ptr + row).to(tl.int64)
    if idx >= 0:
        j = tl.arange(0, JP)
        acc = tl.zeros((JP,), dtype=tl.float32)
        k0 = sp * K_PER
        a_base = a_ptr + idx * stride_as
        for kk in tl.range(0, K_PER, BLOCK_K):
            offs = k0 + kk + tl.arange(0, BLOCK_K)
            m = (offs < K) & (offs < k0 + K_PER)
            xv = tl.load(x_ptr + row * stride_x + offs, mask=m, other=0.0).to(tl.float32)
            av = tl.load(
                a_base + j[:, None] * K + offs[None, :], mask=(j[:, None] < J) & m[None, :], other=0.0
            )
            acc += tl.sum(av.to(tl.float32) * xv[None, :], axis=1)
        tl.store(part_ptr + (row * SPLIT + sp) * JP + j, acc)


@triton.jit
def _lora_expand_kernel(
    y_ptr,
    part_ptr,
    b_ptr,
    idx_ptr,
    N,
    stride_y,
    stride_bs,
    B1,
    B2,
    R: tl.constexpr,
    JP: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    row = tl.program_id(0)
    pid = tl.program_id(1)
    idx = tl.load(idx_ptr + row).to(tl.int64)
    if idx >= 0:
        n0 = pid * BLOCK_N
        seg = (n0 >= B1).to(tl.int32) + (n0 >= B2).to(tl.int32)  # a tile lies inside one part
        r = tl.arange(0, R)
        s = tl.arange(0, SPLIT)
        parts = tl.load(part_ptr + (row * SPLIT + s[:, None]) * JP + seg * R + r[None, :])
        inter = tl.sum(parts, axis=0)  # [R]
        n = n0 + tl.arange(0, BLOCK_N)
        nm = n < N
        bv = tl.load(b_ptr + idx * stride_bs + r[:, None] * N + n[None, :], mask=nm[None, :], other=0.0)
        d = tl.sum(inter[:, None] * bv.to(tl.float32), axis=0)
        yp = y_ptr + row * stride_y + n
        yv = tl.load(yp, mask=nm, other=0.0).to(tl.float32)
        tl.store(yp, (yv + d).to(y_ptr.dtype.element_ty), mask=nm)


@triton.jit
def _lora_expand_silu_kernel(
    y_ptr,
    part_ptr,
    b_ptr,
    idx_ptr,
    out_ptr,
    FF,
    stride_y,
    stride_bs,
    R: tl.constexpr,
    JP: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """gate/up: the expand of both parts and SiLU(gate)·up in one pass (every row: base rows add nothing)."""
    row = tl.program_id(0).to(tl.int64)
    idx = tl.load(idx_ptr + row).to(tl.int64)
    has = idx >= 0
    base = tl.maximum(idx, 0) * stride_bs
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    nm = n < FF
    r = tl.arange(0, R)
    s = tl.arange(0, SPLIT)
    parts = part_ptr + (row * SPLIT + s[:, None]) * JP + r[None, :]
    inter_g = tl.sum(tl.load(parts, mask=has, other=0.0), axis=0)
    inter_u = tl.sum(tl.load(parts + R, mask=has, other=0.0), axis=0)
    bm = nm[None, :] & has
    b_g = tl.load(b_ptr + base + r[:, None] * (2 * FF) + n[None, :], mask=bm, other=0.0).to(tl.float32)
    b_u = tl.load(b_ptr + base + r[:, None] * (2 * FF) + FF + n[None, :], mask=bm, other=0.0).to(tl.float32)
    dtype = y_ptr.dtype.element_ty
    yp = y_ptr + row * stride_y + n
    g = tl.load(yp, mask=nm, other=0.0).to(tl.float32) + tl.sum(inter_g[:, None] * b_g, axis=0)
    u = tl.load(yp + FF, mask=nm, other=0.0).to(tl.float32) + tl.sum(inter_u[:, None] * b_u, axis=0)
    g = g.to(dtype).to(tl.float32)  # rounded as the product stored by the expand alone would be
    u = u.to(dtype).to(tl.float32)
    act = (
        (g / (1.0 + tl.exp(-g))).to(out_ptr.dtype.element_ty).to(tl.float32)
    )  # rounded like the eager act_fn
    tl.store(out_ptr + row * FF + n, (act * u).to(out_ptr.dtype.element_ty), mask=nm)


def split_of(k: int) -> tuple[int, int]:
    """(number of K chunks, a power of two; chunk length, a multiple of the block)."""
    split = 1
    while split < MAX_SPLIT and k // (split * 2) >= 2 * SHRINK_BLOCK_K:
        split *= 2
    per = -(-k // split)
    per = -(-per // SHRINK_BLOCK_K) * SHRINK_BLOCK_K
    return split, per


def new_partial(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The shrink's output for rows ``x`` and A stack ``a``: [rows, split, parts·R padded] float32 (uninitialised:
    rows of the base model are neither written nor read)."""
    split, _per = split_of(x.shape[1])
    return torch.empty(
        (x.shape[0], split, triton.next_power_of_2(a.shape[1])), dtype=torch.float32, device=x.device
    )


def lora_shrink(x: torch.Tensor, a: torch.Tensor, index: torch.Tensor, partial: torch.Tensor) -> None:
    """``partial`` = the split-K partial sums of ``x[i]·A[index[i]]ᵀ`` (x [rows, K] contiguous; a [slots, J, K])."""
    rows, k = x.shape
    split, per = split_of(k)
    _lora_shrink_kernel[(rows, split)](
        x,
        a,
        index,
        partial,
        k,
        per,
        x.stride(0),
        a.stride(0),
        J=a.shape[1],
        JP=partial.shape[2],
        SPLIT=split,
        BLOCK_K=SHRINK_BLOCK_K,
        num_warps=4,
    )


def lora_expand(
    partial: torch.Tensor,
    y: torch.Tensor,
    b: torch.Tensor,
    index: torch.Tensor,
    outs: tuple[int, ...],
    rank: int,
    block_n: int,
) -> None:
    """``y[i] += (Σ partial[i])ₚ·B[index[i]]`` per part p (the columns of part p read its R values), in place."""
    rows, n = y.shape
    b1 = outs[0] if len(outs) > 1 else n
    b2 = outs[0] + outs[1] if len(outs) > 2 else n
    _lora_expand_kernel[(rows, triton.cdiv(n, block_n))](
        y,
        partial,
        b,
        index,
        n,
        y.stride(0),
        b.stride(0),
        b1,
        b2,
        R=rank,
        JP=partial.shape[2],
        SPLIT=partial.shape[1],
        BLOCK_N=block_n,
        num_warps=4,
    )


def lora_expand_silu(
    partial: torch.Tensor, gate_up: torch.Tensor, b: torch.Tensor, index: torch.Tensor, rank: int
) -> torch.Tensor:
    """SiLU(gate)·up of ``gate_up`` [rows, 2·FF] plus each row's adapter product (parts gate, up), in one kernel:
    the expand and ``silu_mul`` of the decode step fused (base rows: ``silu_mul`` alone). Returns [rows, FF]."""
    rows, two_ff = gate_up.shape
    ff = two_ff // 2
    out = torch.empty((rows, ff), dtype=gate_up.dtype, device=gate_up.device)
    block = 128
    _lora_expand_silu_kernel[(rows, triton.cdiv(ff, block))](
        gate_up,
        partial,
        b,
        index,
        out,
        ff,
        gate_up.stride(0),
        b.stride(0),
        R=rank,
        JP=partial.shape[2],
        SPLIT=partial.shape[1],
        BLOCK_N=block,
        num_warps=4,
    )
    return out


def lora_shrink_expand(
    x: torch.Tensor,
    y: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    index: torch.Tensor,
    outs: tuple[int, ...],
    rank: int,
    block_n: int,
) -> None:
    """``y[i] += (x[i]·A[index[i]]ᵀ)·B[index[i]]`` per part, in place; rows with index -1 are left alone.

    x [rows, K]; y [rows, N] (contiguous rows); a [slots, parts·R, K]; b [slots, R, N]; index [rows] int."""
    x = x.contiguous()
    partial = new_partial(x, a)
    lora_shrink(x, a, index, partial)
    lora_expand(partial, y, b, index, outs, rank, block_n)
