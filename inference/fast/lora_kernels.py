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


@triton.jit
def _lora_head_delta(
    part_ptr, b_ptr, row, base, has, col, N, seg, d, R: tl.constexpr, JP: tl.constexpr, SPLIT: tl.constexpr
):
    """The adapter product of part ``seg`` for columns col + d of one row (0 for a row of the base model)."""
    r = tl.arange(0, R)
    s = tl.arange(0, SPLIT)
    inter = tl.sum(
        tl.load(part_ptr + (row * SPLIT + s[:, None]) * JP + seg * R + r[None, :], mask=has, other=0.0), 0
    )
    bv = tl.load(b_ptr + base + r[:, None] * N + col + d[None, :], mask=has, other=0.0).to(tl.float32)
    return tl.sum(inter[:, None] * bv, axis=0)


@triton.jit
def _lora_rope_store_kernel(
    qkv_ptr,
    part_ptr,
    b_ptr,
    idx_ptr,
    pos_ptr,
    cos_ptr,
    sin_ptr,
    q_out_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_ptr,
    stride_qkv,
    stride_bs,
    stride_cb,
    stride_ch,
    stride_ct,
    N_HEADS: tl.constexpr,
    N_KV: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    R: tl.constexpr,
    JP: tl.constexpr,
    SPLIT: tl.constexpr,
):
    """``kernels._rope_store_kernel`` with each row's Q/K/V adapter product added to its head first (the expand
    of the qkv projection fused into the rotary + KV write)."""
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    idx = tl.load(idx_ptr + t).to(tl.int64)
    has = idx >= 0
    base = tl.maximum(idx, 0) * stride_bs
    N = (N_HEADS + 2 * N_KV) * 2 * HALF
    d = tl.arange(0, HALF)
    dtype = qkv_ptr.dtype.element_ty
    pos = tl.load(pos_ptr + t)
    c = tl.load(cos_ptr + pos * HALF + d).to(tl.float32)
    s = tl.load(sin_ptr + pos * HALF + d).to(tl.float32)
    seg = (h >= N_HEADS).to(tl.int32)  # q heads: part 0; kv heads: k is part 1 (v, part 2, below)
    col = h * (2 * HALF)
    src = qkv_ptr + t * stride_qkv + col
    x1 = tl.load(src + d).to(tl.float32) + _lora_head_delta(
        part_ptr, b_ptr, t, base, has, col, N, seg, d, R, JP, SPLIT
    )
    x2 = tl.load(src + HALF + d).to(tl.float32) + _lora_head_delta(
        part_ptr, b_ptr, t, base, has, col + HALF, N, seg, d, R, JP, SPLIT
    )
    x1 = x1.to(dtype).to(tl.float32)  # rounded as the product stored by the expand alone would be
    x2 = x2.to(dtype).to(tl.float32)
    o1 = (x1 * c - x2 * s).to(q_out_ptr.dtype.element_ty)
    o2 = (x2 * c + x1 * s).to(q_out_ptr.dtype.element_ty)
    if h < N_HEADS:
        qo = q_out_ptr + (t * N_HEADS + h) * (2 * HALF)
        tl.store(qo + d, o1)
        tl.store(qo + HALF + d, o2)
    else:
        kh = h - N_HEADS
        slot = tl.load(slot_ptr + t)
        blk = slot // BLOCK_SIZE
        off = slot % BLOCK_SIZE
        dst = blk * stride_cb + kh * stride_ch + off * stride_ct
        tl.store(k_cache_ptr + dst + d, o1)
        tl.store(k_cache_ptr + dst + HALF + d, o2)
        vcol = (N_HEADS + N_KV + kh) * (2 * HALF)
        vsrc = qkv_ptr + t * stride_qkv + vcol
        v1 = tl.load(vsrc + d).to(tl.float32) + _lora_head_delta(
            part_ptr, b_ptr, t, base, has, vcol, N, 2, d, R, JP, SPLIT
        )
        v2 = tl.load(vsrc + HALF + d).to(tl.float32) + _lora_head_delta(
            part_ptr, b_ptr, t, base, has, vcol + HALF, N, 2, d, R, JP, SPLIT
        )
        tl.store(v_cache_ptr + dst + d, v1.to(v_cache_ptr.dtype.element_ty))
        tl.store(v_cache_ptr + dst + HALF + d, v2.to(v_cache_ptr.dtype.element_ty))


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


def lora_rope_store(
    partial: torch.Tensor,
    qkv: torch.Tensor,
    b: torch.Tensor,
    index: torch.Tensor,
    rank: int,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    n_heads: int,
    n_kv: int,
    head_dim: int,
) -> torch.Tensor:
    """``kernels.rope_store`` of ``qkv`` plus each row's adapter product (parts q, k, v), in one kernel."""
    tokens = qkv.shape[0]
    q = torch.empty((tokens, n_heads, head_dim), dtype=qkv.dtype, device=qkv.device)
    _lora_rope_store_kernel[(tokens, n_heads + n_kv)](
        qkv,
        partial,
        b,
        index,
        positions,
        cos,
        sin,
        q,
        k_cache,
        v_cache,
        slot_mapping,
        qkv.stride(0),
        b.stride(0),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        N_HEADS=n_heads,
        N_KV=n_kv,
        HALF=head_dim // 2,
        BLOCK_SIZE=k_cache.shape[2],
        R=rank,
        JP=partial.shape[2],
        SPLIT=partial.shape[1],
        num_warps=1,
    )
    return q


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
