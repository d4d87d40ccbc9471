# mypy: disable-error-code="no-untyped-def"
# (Triton reads the annotations of @triton.jit functions itself; the kernel carries only tl.constexpr ones.)
"""Varlen paged prefill attention: one launch per layer for every sequence of a prefill pass.

Each program takes a tile of one sequence's new tokens and one KV head: its rows are (token, query head of the KV
head's group) pairs, so grouped-query attention reads each K/V block once for the whole group (no copies to the
query heads' count). It walks the sequence's blocks through its block table up to the tile's causal limit (the
reused or earlier-chunk tokens before ``start`` included), with an online softmax in float32, and reads 16/32-bit
caches or e4m3 caches with their per-(block, head, token) scales, dequantised in registers as the decode kernel does.

Imported only where Triton is available (``ops.triton_kernels``): CUDA, or CPU tests under TRITON_INTERPRET=1.
``ops.prefill_attention`` (per sequence, torch) is the reference and the CPU path.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# rows (token x query head of the group) per program: 128 on a GPU (16 new tokens at the 70B's GQA group of 8)
BLOCK_M_CUDA = 128
BLOCK_M_INTERPRET = 64


def group_pad(group: int) -> int:
    return triton.next_power_of_2(group)


def tile_tokens(group: int, device: torch.device) -> int:
    """New tokens per program for a GQA group of ``group`` query heads per KV head."""
    rows = BLOCK_M_CUDA if device.type == "cuda" else BLOCK_M_INTERPRET
    return max(1, rows // group_pad(group))


def supported(head_dim: int, block_size: int) -> bool:
    """Shapes ``tl.dot`` takes: power-of-two head size and page size of at least 16."""
    return all(n >= 16 and n & (n - 1) == 0 for n in (head_dim, block_size))


@triton.jit
def _attend_block(
    q,
    q_pos,
    m_i,
    l_i,
    acc,
    k_head,
    v_head,
    ks_head,
    vs_head,
    blk,
    i,
    tile_kv,
    t,
    scale,
    stride_kb,
    stride_sb,
    FP8: tl.constexpr,
    IEEE: tl.constexpr,
    BS: tl.constexpr,
):
    """One KV block of the online softmax, causally masked (every row sees key 0: its maximum is finite after the
    first block)."""
    kv_base = blk * stride_kb
    if FP8:  # dequantised in registers: e4m3 * the token's scale, in the query's dtype
        s_off = blk * stride_sb + t
        k = (tl.load(k_head + kv_base + tile_kv).to(tl.float32) * tl.load(ks_head + s_off)[:, None]).to(
            q.dtype
        )
    else:
        k = tl.load(k_head + kv_base + tile_kv)
    if IEEE:
        scores = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
    else:
        scores = tl.dot(q, tl.trans(k)) * scale
    scores = tl.where((i * BS + t)[None, :] <= q_pos[:, None], scores, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(scores, axis=1))
    p = tl.exp(scores - m_new[:, None])
    alpha = tl.exp(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if FP8:
        v = (tl.load(v_head + kv_base + tile_kv).to(tl.float32) * tl.load(vs_head + s_off)[:, None]).to(
            q.dtype
        )
    else:
        v = tl.load(v_head + kv_base + tile_kv)
    if IEEE:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def _prefill_attn_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    meta_ptr,
    tile_ptr,
    k_scale_ptr,
    v_scale_ptr,
    scale,
    stride_meta,
    stride_o,
    stride_kb,
    stride_kh,
    stride_kt,
    stride_sb,
    stride_sh,
    FP8: tl.constexpr,
    IEEE: tl.constexpr,
    G: tl.constexpr,
    GP: tl.constexpr,
    TOK: tl.constexpr,
    D: tl.constexpr,
    BS: tl.constexpr,
    N_HEADS: tl.constexpr,
):
    tile = tl.program_id(0)
    kvh = tl.program_id(1)
    seq = tl.load(tile_ptr + 2 * tile).to(tl.int64)
    t0 = tl.load(tile_ptr + 2 * tile + 1)
    row = meta_ptr + seq * stride_meta  # (q offset, new tokens, start, block ids...)
    q_off = tl.load(row)
    length = tl.load(row + 1)
    start = tl.load(row + 2)
    r = tl.arange(0, TOK * GP)
    tok = t0 + r // GP
    g = r % GP
    valid = (tok < length) & (g < G)
    heads = kvh * G + g
    d = tl.arange(0, D)
    t = tl.arange(0, BS)
    rows = (q_off + tok).to(tl.int64) * N_HEADS + heads
    q = tl.load(q_ptr + rows[:, None] * D + d[None, :], mask=valid[:, None], other=0.0)
    q_pos = start + tok
    limit = start + tl.minimum(t0 + TOK, length)  # keys [0, limit) are visible to some row of the tile
    m_i = tl.full((TOK * GP,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((TOK * GP,), dtype=tl.float32)
    acc = tl.zeros((TOK * GP, D), dtype=tl.float32)
    tile_kv = t[:, None] * stride_kt + d[None, :]  # int32, one block's K or V of this head
    k_head = k_ptr + kvh * stride_kh
    v_head = v_ptr + kvh * stride_kh
    ks_head = k_scale_ptr + kvh * stride_sh
    vs_head = v_scale_ptr + kvh * stride_sh
    for i in range(0, tl.cdiv(limit, BS)):
        blk = tl.load(row + 3 + i).to(tl.int64)
        m_i, l_i, acc = _attend_block(
            q,
            q_pos,
            m_i,
            l_i,
            acc,
            k_head,
            v_head,
            ks_head,
            vs_head,
            blk,
            i,
            tile_kv,
            t,
            scale,
            stride_kb,
            stride_sb,
            FP8,
            IEEE,
            BS,
        )
    out = acc / l_i[:, None]
    # the output's offsets from the runtime row stride: not the query's (kept live through the loop otherwise)
    o_off = (q_off + tok).to(tl.int64) * stride_o + heads * D
    tl.store(o_ptr + o_off[:, None] + d[None, :], out.to(o_ptr.dtype.element_ty), mask=valid[:, None])


def prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: torch.Tensor,
    tiles: torch.Tensor,
    tok: int,
    scale: float,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of every sequence's new tokens over its paged KV, in one launch.

    q: [tokens, heads, head_dim] (the sequences' new tokens one after another); caches: [blocks, kv_heads, block,
    head_dim] (FP8: with ``k_scale``/``v_scale`` [blocks, kv_heads, block]); meta: int32 [sequences, 3 + blocks]
    rows (q offset, new tokens, start, block ids padded); tiles: int32 [programs, 2] (sequence, first new token),
    ``tok`` new tokens each (``tile_tokens``). Returns [tokens, heads * head_dim] in q's dtype.
    """
    tokens, n_heads, d = q.shape
    n_kv = k_cache.shape[1]
    group = n_heads // n_kv
    out = torch.empty((tokens, n_heads * d), dtype=q.dtype, device=q.device)
    fp8 = k_scale is not None and v_scale is not None
    ks = k_scale if k_scale is not None else k_cache  # unread without FP8
    vs = v_scale if v_scale is not None else v_cache
    cuda = q.device.type == "cuda"
    _prefill_attn_kernel[(tiles.shape[0], n_kv)](
        q,
        k_cache,
        v_cache,
        out,
        meta,
        tiles,
        ks,
        vs,
        scale,
        meta.stride(0),
        out.stride(0),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        ks.stride(0),
        ks.stride(1),
        FP8=fp8,
        IEEE=q.dtype == torch.float32,
        G=group,
        GP=group_pad(group),
        TOK=tok,
        D=d,
        BS=k_cache.shape[2],
        N_HEADS=n_heads,
        num_warps=8 if cuda else 4,
        num_stages=2,
    )
    return out
