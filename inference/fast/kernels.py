# mypy: disable-error-code="no-untyped-def"
# (Triton reads the annotations of @triton.jit functions itself; the kernels carry only tl.constexpr ones.)
"""Triton kernels for the decode path: fused norms, rotary + KV write, SiLU-and-multiply, paged decode attention.

Imported only where Triton is available (CUDA, or CPU tests under TRITON_INTERPRET=1). ``inference.fast.ops`` holds
the plain torch versions of the same functions and chooses between the two.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch
import triton
import triton.language as tl

_log = logging.getLogger(__name__)


@triton.jit
def _rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, n_cols, eps, HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < n_cols
    x = tl.load(x_ptr + row * n_cols + offs, mask=mask, other=0.0)
    if HAS_RES:
        r = tl.load(res_ptr + row * n_cols + offs, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)  # rounded like the eager residual add
        tl.store(res_ptr + row * n_cols + offs, x, mask=mask)
    xf = x.to(tl.float32)
    var = tl.sum(xf * xf, axis=0) / n_cols
    y = (xf * tl.rsqrt(var + eps)).to(x.dtype).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * n_cols + offs, (w * y).to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor:
    """RMSNorm of ``x`` (or of ``residual += x``, updating ``residual`` in place), rows of the last dimension."""
    rows, n = x.shape
    out = torch.empty_like(x)
    block = triton.next_power_of_2(n)
    _rms_norm_kernel[(rows,)](
        x,
        residual if residual is not None else x,
        weight,
        out,
        n,
        eps,
        HAS_RES=residual is not None,
        BLOCK=block,
        num_warps=8 if block >= 4096 else 4,
    )
    return out


@triton.jit
def _rope_store_kernel(
    qkv_ptr,
    pos_ptr,
    cos_ptr,
    sin_ptr,
    q_out_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_ptr,
    k_scale_ptr,
    v_scale_ptr,
    stride_qkv,
    stride_cb,
    stride_ch,
    stride_ct,
    stride_sb,
    stride_sh,
    N_HEADS: tl.constexpr,
    N_KV: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    FP8: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    d = tl.arange(0, HALF)
    pos = tl.load(pos_ptr + t)
    c = tl.load(cos_ptr + pos * HALF + d).to(tl.float32)
    s = tl.load(sin_ptr + pos * HALF + d).to(tl.float32)
    base = qkv_ptr + t * stride_qkv + h * (2 * HALF)
    x1 = tl.load(base + d).to(tl.float32)
    x2 = tl.load(base + HALF + d).to(tl.float32)
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
        vsrc = qkv_ptr + t * stride_qkv + (N_HEADS + N_KV + kh) * (2 * HALF)
        if FP8:  # one scale per token and head: its largest magnitude / 448
            sdst = blk * stride_sb + kh * stride_sh + off
            k1, k2 = o1.to(tl.float32), o2.to(tl.float32)
            ka = tl.maximum(tl.max(tl.abs(k1), axis=0), tl.max(tl.abs(k2), axis=0))
            ks = tl.where(ka > 0, ka / 448.0, 1.0)
            tl.store(k_cache_ptr + dst + d, (k1 / ks).to(k_cache_ptr.dtype.element_ty))
            tl.store(k_cache_ptr + dst + HALF + d, (k2 / ks).to(k_cache_ptr.dtype.element_ty))
            tl.store(k_scale_ptr + sdst, ks)
            v1 = tl.load(vsrc + d).to(tl.float32)
            v2 = tl.load(vsrc + HALF + d).to(tl.float32)
            va = tl.maximum(tl.max(tl.abs(v1), axis=0), tl.max(tl.abs(v2), axis=0))
            vs = tl.where(va > 0, va / 448.0, 1.0)
            tl.store(v_cache_ptr + dst + d, (v1 / vs).to(v_cache_ptr.dtype.element_ty))
            tl.store(v_cache_ptr + dst + HALF + d, (v2 / vs).to(v_cache_ptr.dtype.element_ty))
            tl.store(v_scale_ptr + sdst, vs)
        else:
            tl.store(k_cache_ptr + dst + d, o1)
            tl.store(k_cache_ptr + dst + HALF + d, o2)
            tl.store(v_cache_ptr + dst + d, tl.load(vsrc + d))
            tl.store(v_cache_ptr + dst + HALF + d, tl.load(vsrc + HALF + d))


def rope_store(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    n_heads: int,
    n_kv: int,
    head_dim: int,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rotate q and k of every token; write k and v into the paged cache [blocks, kv_heads, block, head_dim]
    (an FP8 cache: e4m3 values and one scale per token and head into ``k_scale``/``v_scale`` [blocks, kv_heads,
    block])."""
    tokens = qkv.shape[0]
    q = torch.empty((tokens, n_heads, head_dim), dtype=qkv.dtype, device=qkv.device)
    fp8 = k_scale is not None and v_scale is not None
    ks = k_scale if k_scale is not None else k_cache  # unread without FP8
    vs = v_scale if v_scale is not None else v_cache
    _rope_store_kernel[(tokens, n_heads + n_kv)](
        qkv,
        positions,
        cos,
        sin,
        q,
        k_cache,
        v_cache,
        slot_mapping,
        ks,
        vs,
        qkv.stride(0),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        ks.stride(0),
        ks.stride(1),
        N_HEADS=n_heads,
        N_KV=n_kv,
        HALF=head_dim // 2,
        BLOCK_SIZE=k_cache.shape[2],
        FP8=fp8,
        num_warps=1,
    )
    return q


@triton.jit
def _silu_mul_kernel(x_ptr, out_ptr, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_cols
    g = tl.load(x_ptr + row * 2 * n_cols + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(x_ptr + row * 2 * n_cols + n_cols + offs, mask=mask, other=0.0).to(tl.float32)
    act = (
        (g / (1.0 + tl.exp(-g))).to(out_ptr.dtype.element_ty).to(tl.float32)
    )  # rounded like the eager act_fn
    tl.store(out_ptr + row * n_cols + offs, (act * u).to(out_ptr.dtype.element_ty), mask=mask)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    rows, two_n = gate_up.shape
    n = two_n // 2
    out = torch.empty((rows, n), dtype=gate_up.dtype, device=gate_up.device)
    block = 1024
    _silu_mul_kernel[(rows, triton.cdiv(n, block))](gate_up, out, n, BLOCK=block, num_warps=4)
    return out


@triton.jit
def _decode_attn_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    bt_ptr,
    lens_ptr,
    o_ptr,
    lse_ptr,
    k_scale_ptr,
    v_scale_ptr,
    scale,
    stride_bt,
    stride_kb,
    stride_kh,
    stride_kt,
    stride_sb,
    stride_sh,
    FP8: tl.constexpr,
    G: tl.constexpr,
    GP: tl.constexpr,
    D: tl.constexpr,
    BS: tl.constexpr,
    NSPLIT: tl.constexpr,
    N_HEADS: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(lens_ptr + b)
    n_blocks = tl.cdiv(seq_len, BS)
    per = tl.cdiv(n_blocks, NSPLIT)
    start = split * per
    end = tl.minimum(start + per, n_blocks)
    g = tl.arange(0, GP)
    d = tl.arange(0, D)
    t = tl.arange(0, BS)
    gmask = g < G
    heads = kvh * G + g
    q = tl.load(q_ptr + (b * N_HEADS + heads)[:, None] * D + d[None, :], mask=gmask[:, None], other=0.0)
    m_i = tl.full((GP,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((GP,), dtype=tl.float32)
    acc = tl.zeros((GP, D), dtype=tl.float32)
    for i in range(start, end):
        blk = tl.load(bt_ptr + b * stride_bt + i).to(tl.int64)
        kv_off = blk * stride_kb + kvh * stride_kh + t[:, None] * stride_kt + d[None, :]
        if FP8:  # dequantised in registers: e4m3 * the token's scale, in the query's dtype
            s_off = blk * stride_sb + kvh * stride_sh + t
            k_s = tl.load(k_scale_ptr + s_off)
            k = (tl.load(k_ptr + kv_off).to(tl.float32) * k_s[:, None]).to(q.dtype)
        else:
            k = tl.load(k_ptr + kv_off)
        scores = tl.dot(q, tl.trans(k)) * scale
        pos = i * BS + t
        scores = tl.where(pos[None, :] < seq_len, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        p = tl.exp(scores - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if FP8:
            v_s = tl.load(v_scale_ptr + s_off)
            v = (tl.load(v_ptr + kv_off).to(tl.float32) * v_s[:, None]).to(q.dtype)
        else:
            v = tl.load(v_ptr + kv_off)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    has = end > start
    safe_l = tl.where(l_i > 0, l_i, 1.0)
    out = tl.where(has, acc / safe_l[:, None], 0.0)
    lse = tl.where(has, m_i + tl.log(safe_l), float("-inf"))
    o_off = ((b * N_HEADS + heads) * NSPLIT + split)[:, None] * D + d[None, :]
    tl.store(o_ptr + o_off, out, mask=gmask[:, None])
    tl.store(lse_ptr + (b * N_HEADS + heads) * NSPLIT + split, lse, mask=gmask)


@triton.jit
def _decode_reduce_kernel(o_ptr, lse_ptr, out_ptr, D: tl.constexpr, NSPLIT: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    s = tl.arange(0, NSPLIT)
    d = tl.arange(0, D)
    lse = tl.load(lse_ptr + bh * NSPLIT + s)
    m = tl.max(lse, axis=0)
    w = tl.where(lse > float("-inf"), tl.exp(lse - m), 0.0)
    parts = tl.load(o_ptr + (bh * NSPLIT + s)[:, None] * D + d[None, :])
    out = tl.sum(parts * w[:, None], axis=0) / tl.sum(w, axis=0)
    tl.store(out_ptr + bh * D + d, out.to(out_ptr.dtype.element_ty))


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    n_split: int,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """One query token per row over its paged KV (flash-decoding: the sequence split ``n_split`` ways, then merged).
    An FP8 cache is read with its per-token scales ``k_scale``/``v_scale`` [blocks, kv_heads, block].

    q: [rows, heads, head_dim]; caches: [blocks, kv_heads, block, head_dim]; block_tables: [rows, max_blocks] int32;
    seq_lens: [rows] int32 (tokens in the cache, the current one included). Returns [rows, heads * head_dim].
    """
    rows, n_heads, d = q.shape
    n_kv = k_cache.shape[1]
    group = n_heads // n_kv
    part = torch.empty((rows, n_heads, n_split, d), dtype=torch.float32, device=q.device)
    lse = torch.empty((rows, n_heads, n_split), dtype=torch.float32, device=q.device)
    fp8 = k_scale is not None and v_scale is not None
    ks = k_scale if k_scale is not None else k_cache  # unread without FP8
    vs = v_scale if v_scale is not None else v_cache
    _decode_attn_kernel[(rows, n_kv, n_split)](
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        part,
        lse,
        ks,
        vs,
        scale,
        block_tables.stride(0),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        ks.stride(0),
        ks.stride(1),
        FP8=fp8,
        G=group,
        GP=max(16, triton.next_power_of_2(group)),
        D=d,
        BS=k_cache.shape[2],
        NSPLIT=n_split,
        N_HEADS=n_heads,
        num_warps=4,
    )
    out = torch.empty((rows, n_heads * d), dtype=q.dtype, device=q.device)
    _decode_reduce_kernel[(rows * n_heads,)](part, lse, out, D=d, NSPLIT=n_split, num_warps=1)
    return out


class Tail(NamedTuple):
    """A second matrix multiplied in the same launch as the weights (the adapters' fold, ``lora.py``): ``out`` [M, NT]
    (float32) = x · ``t``ᵀ, ``t`` [NT, K] contiguous in the activations' dtype. Its rows come in groups of ``group``
    (one adapter's A stack each); a tile of groups that no row's ``row_group`` (int32 [M], -1: none) names is skipped,
    its columns of ``out`` left unwritten."""

    t: torch.Tensor
    row_group: torch.Tensor
    group: int
    out: torch.Tensor


def _tail_args(tail: Tail | None, x: torch.Tensor) -> tuple[object, ...]:
    """The kernels' tail arguments (t, out, index, NT, group, t's and out's row strides); no tail: unread stand-ins."""
    if tail is None:
        return x, x, x, 0, 1, 0, 0
    nt, k = tail.t.shape
    if k != x.shape[1] or tail.t.stride(1) != 1 or tail.out.shape != (x.shape[0], nt):
        raise ValueError(
            f"tail {tuple(tail.t.shape)} / out {tuple(tail.out.shape)} do not fit x {tuple(x.shape)}"
        )
    return tail.t, tail.out, tail.row_group, nt, tail.group, tail.t.stride(0), tail.out.stride(0)


@triton.jit
def _tail_tile_used(idx_ptr, rm, mmask, t0, GROUP, BLOCK_N: tl.constexpr):
    """Whether a row of the batch uses a group (an adapter's rows of the tail) of the tile starting at row ``t0``."""
    idx = tl.load(idx_ptr + rm, mask=mmask, other=-1)
    lo = t0 // GROUP
    hi = (t0 + BLOCK_N - 1) // GROUP
    return tl.sum(((idx >= lo) & (idx <= hi)).to(tl.int32), axis=0) > 0


@triton.jit
def _skinny_tile(
    x_rows,
    mmask,
    rm,
    w_ptr,
    out_ptr,
    n0,
    N,
    K,
    stride_wn,
    stride_om,
    MP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    STAGES: tl.constexpr,
):
    """out[:, n0:n0+BLOCK_N] = the rows ``x_rows`` ([MP, 1] pointers) times rows n0.. of w [N, K]."""
    rn = n0 + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    nmask = rn < N
    acc = tl.zeros((MP, BLOCK_N), dtype=tl.float32)
    w_rows = w_ptr + rn.to(tl.int64)[:, None] * stride_wn
    for k in tl.range(0, K, BLOCK_K, num_stages=STAGES):
        kk = k + rk
        kmask = kk < K
        w = tl.load(w_rows + kk[None, :], mask=nmask[:, None] & kmask[None, :], other=0.0)
        x = tl.load(x_rows + kk[None, :], mask=mmask[:, None] & kmask[None, :], other=0.0)
        acc += tl.dot(x, tl.trans(w.to(x.dtype)))
    tl.store(
        out_ptr + rm[:, None] * stride_om + rn[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=mmask[:, None] & nmask[None, :],
    )


@triton.jit
def _skinny_gemm_kernel(
    x_ptr,
    w_ptr,
    y_ptr,
    t_ptr,
    u_ptr,
    idx_ptr,
    M,
    N,
    K,
    NT,
    GROUP,
    stride_xm,
    stride_wn,
    stride_ym,
    stride_tn,
    stride_um,
    MP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    STAGES: tl.constexpr,
    TAIL: tl.constexpr,
):
    """y[M, N] = x[M, K] @ w[N, K]^T for few rows M (<= MP): streams w once, the rows padded for the dot.

    TAIL (``Tail``): the first cdiv(NT, BLOCK_N) programs compute u[M, NT] = x @ t[NT, K]^T instead (first, so
    they run in the first wave beside the weights' tiles, not after them), the others w's tiles as without it."""
    pid = tl.program_id(0)
    rm = tl.arange(0, MP)
    mmask = rm < M
    x_rows = x_ptr + rm[:, None] * stride_xm
    if TAIL:
        tiles = tl.cdiv(NT, BLOCK_N)
        if pid < tiles:
            if _tail_tile_used(idx_ptr, rm, mmask, pid * BLOCK_N, GROUP, BLOCK_N):
                _skinny_tile(
                    x_rows,
                    mmask,
                    rm,
                    t_ptr,
                    u_ptr,
                    pid * BLOCK_N,
                    NT,
                    K,
                    stride_tn,
                    stride_um,
                    MP,
                    BLOCK_N,
                    BLOCK_K,
                    STAGES,
                )
        else:
            _skinny_tile(
                x_rows,
                mmask,
                rm,
                w_ptr,
                y_ptr,
                (pid - tiles) * BLOCK_N,
                N,
                K,
                stride_wn,
                stride_ym,
                MP,
                BLOCK_N,
                BLOCK_K,
                STAGES,
            )
    else:
        _skinny_tile(
            x_rows,
            mmask,
            rm,
            w_ptr,
            y_ptr,
            pid * BLOCK_N,
            N,
            K,
            stride_wn,
            stride_ym,
            MP,
            BLOCK_N,
            BLOCK_K,
            STAGES,
        )


GEMM_CONFIGS: tuple[tuple[int, int, int, int], ...] = (
    # BLOCK_N, BLOCK_K, num_warps, stages
    (16, 512, 4, 4),
    (32, 256, 4, 4),
    (16, 256, 4, 6),
    (64, 128, 4, 4),
    (32, 512, 8, 3),
    # fewer warps per weight tile: each warp streams its own weight rows (the FP8 kernel's lesson); the small
    # matrices of a tensor-parallel rank (qkv 5120 x 8192, o 8192 x 4096) reached only ~3 TB/s with cuBLAS
    (32, 256, 2, 4),
    (16, 512, 1, 4),
    (32, 512, 2, 3),
)


def skinny_linear(
    x: torch.Tensor, w: torch.Tensor, config: tuple[int, int, int, int], tail: Tail | None = None
) -> torch.Tensor:
    """x [M, K] @ w [N, K]^T for M <= 32, with one of GEMM_CONFIGS; with ``tail``, also ``tail.out`` = x @ tail.tᵀ
    in the same launch."""
    m, k = x.shape
    n = w.shape[0]
    block_n, block_k, warps, stages = config
    mp = 16 if m <= 16 else 32
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    t, u, index, nt, group, stride_t, stride_u = _tail_args(tail, x)
    _skinny_gemm_kernel[(triton.cdiv(n, block_n) + triton.cdiv(nt, block_n),)](
        x,
        w,
        y,
        t,
        u,
        index,
        m,
        n,
        k,
        nt,
        group,
        x.stride(0),
        w.stride(0),
        y.stride(0),
        stride_t,
        stride_u,
        MP=mp,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        STAGES=stages,
        TAIL=tail is not None,
        num_warps=warps,
    )
    return y


# ---- FP8 weight-only skinny GEMM ----------------------------------------------------------------------------------

# e4m3 → bf16 for four packed bytes: each byte moves to the top of a 16-bit half (prmt), the 7 exponent+mantissa
# bits shift into bf16 position (the value is then the e4m3 value times 2^-120: e4m3's exponent bias is 7, bf16's
# 127), the sign goes back, and one bf16x2 multiply by 2^120 (0x7B80) restores the value exactly, subnormals
# included. Integer and packed-bf16 instructions instead of the conversion pipe, whose cvt e4m3 → f16 → bf16 chain
# (three conversions per two values) can be slower than HBM on Hopper. ``fp8.e4m3_to_bf16_bits`` is the same
# arithmetic in torch, tested against torch's conversion for every byte.
_E4M3_TO_BF16_PTX = tl.constexpr(
    """
{
.reg .b32 a<2>, b<2>, e120;
mov.u32 e120, 0x7B807B80;
prmt.b32 a0, 0, $2, 0x5140;
prmt.b32 a1, 0, $2, 0x7362;
and.b32 b0, a0, 0x7FFF7FFF;
and.b32 b1, a1, 0x7FFF7FFF;
shr.b32 b0, b0, 4;
shr.b32 b1, b1, 4;
lop3.b32 b0, b0, 0x80008000, a0, 0xf8;
lop3.b32 b1, b1, 0x80008000, a1, 0xf8;
mul.rn.bf16x2 $0, b0, e120;
mul.rn.bf16x2 $1, b1, e120;
}
"""
)

# The f16-compute mode (CONVERT 2) multiplies the activations by 2^-8 before rounding them to f16 (so |x| up to 65504 * 2^8
# ≈ 1.7e7 stays finite; beyond that it is inf) and the fp32 accumulator by 2^8 in the epilogue. bf16 → f16 of the scaled value is exact
# for 2^-6 <= |x| <= 1.7e7 (f16 has 10 mantissa bits to bf16's 7); smaller |x| land in f16's subnormals, where
# the rounding error is at most 2^-25 * 2^8 = 2^-17 absolute (7.6e-6), far below the weights' e4m3 rounding.
FP16_X_SHIFT = 8


@triton.jit
def _scale_to_f16_kernel(x_ptr, out_ptr, K, stride_xm, MUL: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < K
    x = tl.load(x_ptr + row * stride_xm + offs, mask=mask, other=0.0)
    tl.store(out_ptr + row * K + offs, (x.to(tl.float32) * MUL).to(tl.float16), mask=mask)


def scale_to_f16(x: torch.Tensor) -> torch.Tensor:
    """x [M, K] (unit column stride) times 2^-FP16_X_SHIFT, rounded to f16 (contiguous): the f16 modes' input."""
    m, k = x.shape
    out = torch.empty((m, k), dtype=torch.float16, device=x.device)
    block = 1024
    _scale_to_f16_kernel[(m, triton.cdiv(k, block))](
        x, out, k, x.stride(0), MUL=2.0**-FP16_X_SHIFT, BLOCK=block, num_warps=4
    )
    return out


@triton.jit
def _fp8_tile(
    x_rows,
    mmask,
    rm,
    w_ptr,
    s_ptr,
    y_ptr,
    n0,
    N,
    K,
    stride_wn,
    stride_ym,
    MP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    STAGES: tl.constexpr,
    CONVERT: tl.constexpr,
    IEEE: tl.constexpr,
    EVEN_N: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    """y[:, n0:n0+BLOCK_N] of ``_fp8_skinny_gemm_kernel``: rows n0.. of the e4m3 w, dequantised in registers."""
    rn = n0 + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    nmask = rn < N
    acc = tl.zeros((BLOCK_N, MP), dtype=tl.float32)
    w_rows = w_ptr + rn.to(tl.int64)[:, None] * stride_wn
    for k in tl.range(0, K, BLOCK_K, num_stages=STAGES):
        kk = k + rk
        if EVEN_K:
            x = tl.load(x_rows + kk[None, :], mask=mmask[:, None], other=0.0)
            if EVEN_N:
                w = tl.load(w_rows + kk[None, :])
            else:
                w = tl.load(w_rows + kk[None, :], mask=nmask[:, None], other=0)
        else:
            kmask = kk < K
            x = tl.load(x_rows + kk[None, :], mask=mmask[:, None] & kmask[None, :], other=0.0)
            w = tl.load(w_rows + kk[None, :], mask=nmask[:, None] & kmask[None, :], other=0)
        if CONVERT == 1:
            wx = tl.inline_asm_elementwise(
                _E4M3_TO_BF16_PTX, "=r,=r,r", [w], dtype=tl.bfloat16, is_pure=True, pack=4
            )
        else:
            wx = w.to(tl.float8e4nv, bitcast=True).to(x.dtype)
        if IEEE:  # float32 activations (tests): no TF32 rounding
            acc += tl.dot(wx, tl.trans(x), input_precision="ieee")
        else:
            acc += tl.dot(wx, tl.trans(x))
    scale = tl.load(s_ptr + rn, mask=nmask, other=0.0)
    if CONVERT >= 2:  # f16 compute: the activations were scaled by 2^-FP16_X_SHIFT = 2^-8
        scale = scale * 256.0
    acc = acc * scale[:, None]
    tl.store(
        y_ptr + rm[None, :] * stride_ym + rn[:, None],
        acc.to(y_ptr.dtype.element_ty),
        mask=nmask[:, None] & mmask[None, :],
    )


@triton.jit
def _fp8_tail_tile(
    x_rows,
    mmask,
    rm,
    t_ptr,
    u_ptr,
    n0,
    NT,
    K,
    stride_tn,
    stride_um,
    MP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    STAGES: tl.constexpr,
    CONVERT: tl.constexpr,
    IEEE: tl.constexpr,
):
    """u[:, n0:n0+BLOCK_N] = x · t[n0.., :]ᵀ for the tail (``Tail``): t in its own 16-bit or float32 dtype, converted
    to the activations' (CONVERT 2: f16, exact for 2^-14 <= |t| <= 65504; the f16 x carries 2^-8, undone here),
    scale 1."""
    rn = n0 + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    nmask = rn < NT
    acc = tl.zeros((BLOCK_N, MP), dtype=tl.float32)
    t_rows = t_ptr + rn.to(tl.int64)[:, None] * stride_tn
    for k in tl.range(0, K, BLOCK_K, num_stages=STAGES):
        kk = k + rk
        kmask = kk < K
        x = tl.load(x_rows + kk[None, :], mask=mmask[:, None] & kmask[None, :], other=0.0)
        t = tl.load(t_rows + kk[None, :], mask=nmask[:, None] & kmask[None, :], other=0.0).to(x.dtype)
        if IEEE:
            acc += tl.dot(t, tl.trans(x), input_precision="ieee")
        else:
            acc += tl.dot(t, tl.trans(x))
    if CONVERT >= 2:
        acc = acc * 256.0
    tl.store(
        u_ptr + rm[None, :] * stride_um + rn[:, None],
        acc.to(u_ptr.dtype.element_ty),
        mask=nmask[:, None] & mmask[None, :],
    )


@triton.jit
def _fp8_skinny_gemm_kernel(
    x_ptr,
    w_ptr,
    s_ptr,
    y_ptr,
    t_ptr,
    u_ptr,
    idx_ptr,
    M,
    N,
    K,
    NT,
    GROUP,
    stride_xm,
    stride_wn,
    stride_ym,
    stride_tn,
    stride_um,
    MP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    STAGES: tl.constexpr,
    CONVERT: tl.constexpr,
    IEEE: tl.constexpr,
    EVEN_N: tl.constexpr,
    EVEN_K: tl.constexpr,
    TAIL: tl.constexpr,
    TAIL_BLOCK_K: tl.constexpr,
):
    """y[M, N] = (x[M, K] @ w[N, K]^T) * s[N] for few rows M (<= MP), w in e4m3, fp32 accumulation.

    The weight rows are the MMA's M dimension (acc[BLOCK_N, MP]), so Hopper can feed the converted weight tile from
    registers; x is padded to MP rows. w_ptr points at the e4m3 bytes as uint8. CONVERT 0: Triton's own
    fp8 → x.dtype conversion; CONVERT 1: the PTX bit trick above (x bf16, CUDA only); CONVERT 2: x is f16 holding
    the activations times 2^-8 (``scale_to_f16``), the weights go to f16 by Triton's conversion (one native
    instruction per two values on sm_89+) and the epilogue multiplies by 2^8.
    TAIL (``Tail``): the first cdiv(NT, BLOCK_N) programs compute u[M, NT] = x @ t[NT, K]^T (``_fp8_tail_tile``),
    TAIL_BLOCK_K columns at a time: BLOCK_K / t's element size, so a stage of the 16-bit tail takes no more shared
    memory than one of the e4m3 weights (the kernel's shared memory, hence its programs per SM, stay as without).
    """
    pid = tl.program_id(0)
    rm = tl.arange(0, MP)
    mmask = rm < M
    x_rows = x_ptr + rm[:, None] * stride_xm
    if TAIL:
        tiles = tl.cdiv(NT, BLOCK_N)
        if pid < tiles:
            if _tail_tile_used(idx_ptr, rm, mmask, pid * BLOCK_N, GROUP, BLOCK_N):
                _fp8_tail_tile(
                    x_rows,
                    mmask,
                    rm,
                    t_ptr,
                    u_ptr,
                    pid * BLOCK_N,
                    NT,
                    K,
                    stride_tn,
                    stride_um,
                    MP,
                    BLOCK_N,
                    TAIL_BLOCK_K,
                    STAGES,
                    CONVERT,
                    IEEE,
                )
        else:
            _fp8_tile(
                x_rows,
                mmask,
                rm,
                w_ptr,
                s_ptr,
                y_ptr,
                (pid - tiles) * BLOCK_N,
                N,
                K,
                stride_wn,
                stride_ym,
                MP,
                BLOCK_N,
                BLOCK_K,
                STAGES,
                CONVERT,
                IEEE,
                EVEN_N,
                EVEN_K,
            )
    else:
        _fp8_tile(
            x_rows,
            mmask,
            rm,
            w_ptr,
            s_ptr,
            y_ptr,
            pid * BLOCK_N,
            N,
            K,
            stride_wn,
            stride_ym,
            MP,
            BLOCK_N,
            BLOCK_K,
            STAGES,
            CONVERT,
            IEEE,
            EVEN_N,
            EVEN_K,
        )


FP8_GEMM_CONFIGS: tuple[tuple[int, int, int, int, int], ...] = (
    # BLOCK_N, BLOCK_K, num_warps, stages, CONVERT (0: Triton's cvt to bf16, 1: PTX bit trick to bf16, 2: f16
    # compute). Compiled for sm_90 on CPU: shared memory 40-160 KB (so 1-5 programs per SM).
    (64, 256, 4, 4, 1),
    (64, 128, 4, 6, 1),
    (128, 128, 8, 4, 1),
    (128, 256, 8, 3, 1),
    (32, 256, 4, 4, 1),
    (32, 512, 4, 4, 1),
    (64, 256, 4, 4, 0),
    (64, 128, 4, 6, 0),
    # Added after the SASS of the main loop (sm_90, 16-divisible shapes, MP=16), instructions per weight element
    # per thread: (32,256,4,4,1) 6.8, (64,128,4,6,1) 6.8 (wgmma: 112 extra PRMT per 64 values repack the bytes),
    # (64,128,4,6,0) 4.5. Below BLOCK_N = 64 Triton uses mma.sync and, with more than BLOCK_N/16 warps, splits the
    # warps over the activation rows too, so each warp converts the same weights again: BLOCK_N = 16 * num_warps
    # converts each weight once, (32,256,2,4,1) 4.1. CONVERT 2 converts e4m3 → f16 with the one native
    # cvt.rn.f16x2.e4m3x2 per two values and multiplies in f16: (32,256,2,4,2) 2.1, (16,1024,1,3,2) 2.0,
    # (64,128,4,6,2) 3.0, (128,256,8,3,2) 2.7. The smaller BLOCK_N also gives the 8192-row matrices (qkv, o,
    # down) 256-512 programs for the 132 SMs instead of 64-256.
    (32, 256, 2, 4, 1),
    (16, 512, 1, 4, 1),
    (32, 256, 2, 4, 2),
    (32, 512, 2, 3, 2),
    (16, 512, 1, 4, 2),
    (16, 1024, 1, 3, 2),
    (64, 128, 4, 6, 2),
    (64, 256, 4, 4, 2),
    (128, 256, 8, 3, 2),
)
FP8_DEFAULT_CONFIG = (64, 128, 4, 6, 0)  # untuned: Triton's own conversion, 64 KB of shared memory


def fp8_skinny_linear(
    x: torch.Tensor,
    w_data: torch.Tensor,
    w_scale: torch.Tensor,
    config: tuple[int, ...],
    tail: Tail | None = None,
) -> torch.Tensor:
    """(x [M, K] @ w_data [N, K]^T) * w_scale [N] for M <= 32, w_data float8_e4m3fn, with one of FP8_GEMM_CONFIGS.

    Returns [M, N] in x.dtype. CONVERT 1 needs bf16 activations (else Triton's conversion is used). CONVERT 2
    (bf16/f16 activations; fp32 ones use CONVERT 0) first rounds x * 2^-8 to f16 (``scale_to_f16``, one small
    kernel) and multiplies in f16: see FP16_X_SHIFT for its precision. With ``tail``, also ``tail.out`` = x @ tail.tᵀ
    (t not FP8: scale 1) in the same launch.
    """
    m, k = x.shape
    n, kw = w_data.shape
    if kw != k:
        raise ValueError(f"fp8_skinny_linear: x has {k} columns, w {kw}")
    if m > 32:
        raise ValueError(f"fp8_skinny_linear: at most 32 rows, got {m}")
    if w_data.dtype != torch.float8_e4m3fn or w_data.stride(1) != 1:
        raise ValueError("fp8_skinny_linear: w_data must be float8_e4m3fn with unit column stride")
    if x.stride(1) != 1:
        x = x.contiguous()
    block_n, block_k, warps, stages, convert = config
    if convert == 1 and x.dtype != torch.bfloat16:
        convert = 0
    if convert >= 2 and x.dtype == torch.float32:
        convert = 0  # fp32 activations (tests) keep their precision: Triton's conversion, IEEE dot
    mp = 16 if m <= 16 else 32
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    xk = scale_to_f16(x) if convert >= 2 else x
    t, u, index, nt, group, stride_t, stride_u = _tail_args(tail, x)
    _fp8_skinny_gemm_kernel[(triton.cdiv(n, block_n) + triton.cdiv(nt, block_n),)](
        xk,
        w_data.view(torch.uint8),
        w_scale,
        y,
        t,
        u,
        index,
        m,
        n,
        k,
        nt,
        group,
        xk.stride(0),
        w_data.stride(0),
        y.stride(0),
        stride_t,
        stride_u,
        MP=mp,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        STAGES=stages,
        CONVERT=convert,
        IEEE=x.dtype == torch.float32,
        EVEN_N=n % block_n == 0,
        EVEN_K=k % block_k == 0,
        TAIL=tail is not None,
        TAIL_BLOCK_K=max(16, block_k // tail.t.element_size()) if tail is not None else block_k,
        num_warps=warps,
    )
    return y
