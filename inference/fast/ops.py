"""The decode path's operations: Triton kernels on CUDA, plain torch elsewhere (the same function either way).

The torch versions are the CPU path and the reference the kernels are tested against.

FP8 KV cache: when the caches are ``torch.float8_e4m3fn``, each token's K (after rotary) and V are stored per head as
e4m3 with one float32 scale (the head's largest magnitude / 448) in ``k_scale`` / ``v_scale`` [blocks, kv_heads,
block]; attention reads them back as value * scale in the query's dtype.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

import torch
import torch.nn.functional as F

_log = logging.getLogger(__name__)

_kernels: ModuleType | None = None
_kernels_checked = False


def triton_kernels(device: torch.device) -> ModuleType | None:
    """The Triton kernel module when it can run on ``device`` (CUDA, or the interpreter on CPU), else None."""
    global _kernels, _kernels_checked
    if os.environ.get("HANBOT_FAST_NO_TRITON") == "1":
        return None
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return None
    if not _kernels_checked:
        _kernels_checked = True
        try:
            from inference.fast import kernels

            _kernels = kernels
        except ImportError as exc:  # no Triton: the torch path serves, slower
            _log.warning("Triton is not importable (%s): the fast decoder uses plain torch operations", exc)
    return _kernels


FP8_KV = torch.float8_e4m3fn
FP8_KV_MAX = 448.0


def quantize_kv_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 values, float32 scales) of ``x`` [..., head_dim]: one scale per vector, its largest magnitude / 448."""
    xf = x.float()
    amax = xf.abs().amax(dim=-1)
    scale = torch.where(amax > 0, amax / FP8_KV_MAX, torch.ones_like(amax))
    return (xf / scale[..., None]).to(FP8_KV), scale


# ---- torch reference versions -------------------------------------------------------------------------------------


def rms_norm_ref(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor:
    if residual is not None:
        residual.add_(x)
        x = residual
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * y.to(x.dtype)


def rope_store_ref(
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
    tokens = qkv.shape[0]
    q, k, v = qkv.view(tokens, n_heads + 2 * n_kv, head_dim).split([n_heads, n_kv, n_kv], dim=1)
    c = torch.cat([cos[positions], cos[positions]], dim=-1)[:, None, :]
    s = torch.cat([sin[positions], sin[positions]], dim=-1)[:, None, :]

    def rot(x: torch.Tensor) -> torch.Tensor:
        half = head_dim // 2
        return torch.cat([-x[..., half:], x[..., :half]], dim=-1)

    q_out = q * c + rot(q) * s
    k_out = k * c + rot(k) * s
    block = k_cache.shape[2]
    blk, off = slot_mapping // block, slot_mapping % block
    if k_scale is not None and v_scale is not None:
        k_q, k_s = quantize_kv_ref(k_out)
        v_q, v_s = quantize_kv_ref(v)
        k_cache[blk, :, off, :] = k_q
        v_cache[blk, :, off, :] = v_q
        k_scale[blk, :, off] = k_s
        v_scale[blk, :, off] = v_s
        return q_out.contiguous()
    k_cache[blk, :, off, :] = k_out
    v_cache[blk, :, off, :] = v
    return q_out.contiguous()


def silu_mul_ref(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def gather_kv(
    cache: torch.Tensor,
    blocks: torch.Tensor,
    length: int,
    scale: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """[kv_heads, length, head_dim] of one sequence from the paged cache [blocks, kv_heads, block, head_dim]
    (an FP8 cache: dequantised with its ``scale`` [blocks, kv_heads, block] into ``dtype``)."""
    g = cache[blocks]  # [n, kv, block, d]
    if scale is not None:
        g = (g.float() * scale[blocks][..., None]).to(dtype or torch.float32)
    return g.permute(1, 0, 2, 3).reshape(cache.shape[1], -1, cache.shape[3])[:, :length]


def decode_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    n_split: int = 1,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    _rows, n_heads, d = q.shape
    block = k_cache.shape[2]
    outs = []
    for r, length in enumerate(seq_lens.tolist()):
        n = -(-length // block)
        blocks = block_tables[r, :n].long()
        k = gather_kv(k_cache, blocks, length, k_scale, q.dtype)
        v = gather_kv(v_cache, blocks, length, v_scale, q.dtype)
        o = F.scaled_dot_product_attention(
            q[r][None, :, None, :], k[None], v[None], scale=scale, enable_gqa=True
        )  # [1, heads, 1, d]
        outs.append(o.reshape(n_heads * d))
    return torch.stack(outs)


# ---- dispatch ------------------------------------------------------------------------------------------------------


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor:
    k = triton_kernels(x.device)
    if k is not None:
        return k.rms_norm(x, weight, eps, residual)  # type: ignore[no-any-return]
    return rms_norm_ref(x, weight, eps, residual)


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
    k = triton_kernels(qkv.device)
    fn = k.rope_store if k is not None else rope_store_ref
    return fn(  # type: ignore[no-any-return]
        qkv, positions, cos, sin, k_cache, v_cache, slot_mapping, n_heads, n_kv, head_dim, k_scale, v_scale
    )


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    k = triton_kernels(gate_up.device)
    if k is not None:
        return k.silu_mul(gate_up)  # type: ignore[no-any-return]
    return silu_mul_ref(gate_up)


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
    k = triton_kernels(q.device)
    if k is not None:
        return k.decode_attention(  # type: ignore[no-any-return]
            q, k_cache, v_cache, block_tables, seq_lens, scale, n_split, k_scale, v_scale
        )
    return decode_attention_ref(q, k_cache, v_cache, block_tables, seq_lens, scale, 1, k_scale, v_scale)


def prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    blocks: torch.Tensor,
    start: int,
    scale: float,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of ``q`` [tokens, heads, d] (positions start..start+tokens-1) over the sequence's cache."""
    tokens, n_heads, d = q.shape
    length = start + tokens
    k = gather_kv(k_cache, blocks, length, k_scale, q.dtype)
    v = gather_kv(v_cache, blocks, length, v_scale, q.dtype)
    qh = q.transpose(0, 1)[None]  # [1, heads, tokens, d]; the KV heads shared by their groups (no copies)
    if start == 0:
        o = F.scaled_dot_product_attention(qh, k[None], v[None], is_causal=True, scale=scale, enable_gqa=True)
    else:
        rows = torch.arange(tokens, device=q.device)[:, None] + start
        cols = torch.arange(length, device=q.device)[None, :]
        o = F.scaled_dot_product_attention(
            qh, k[None], v[None], attn_mask=cols <= rows, scale=scale, enable_gqa=True
        )
    return o[0].transpose(0, 1).reshape(tokens, n_heads * d)


@dataclass(frozen=True)
class PrefillBatch:
    """The sequences of one prefill pass, as the attention of every layer reads them (built once per pass).

    ``segments``: (q offset, new tokens, start, block ids) per sequence (the torch path's loop). With the Triton
    kernel also ``meta`` int32 [sequences, 3 + blocks] (q offset, new tokens, start, block ids padded) and ``tiles``
    int32 [programs, 2] (sequence, first new token), ``tile_tokens`` new tokens each."""

    segments: list[tuple[int, int, int, torch.Tensor]]
    meta: torch.Tensor | None = None
    tiles: torch.Tensor | None = None
    tile_tokens: int = 0


def prefill_batch(
    segments: Sequence[tuple[int, int, int, torch.Tensor]],
    n_heads: int,
    n_kv: int,
    head_dim: int,
    block_size: int,
    device: torch.device,
) -> PrefillBatch:
    """The metadata of a prefill pass: the kernel's tables on ``device`` when the kernel serves, else the list."""
    segs = list(segments)
    if triton_kernels(device) is None or os.environ.get("HANBOT_FAST_PREFILL_TORCH") == "1":
        return PrefillBatch(
            segs
        )  # HANBOT_FAST_PREFILL_TORCH=1: this attention alone on the torch path (A/B runs)
    from inference.fast import prefill_attn

    if not prefill_attn.supported(head_dim, block_size):
        return PrefillBatch(segs)
    tok = prefill_attn.tile_tokens(n_heads // n_kv, device)
    width = max(int(b.shape[0]) for *_, b in segs)
    head = torch.tensor([[o, n, s] for o, n, s, _ in segs], dtype=torch.int32)
    # the programs with the most keys first, so the last wave is made of short ones
    work = [(s + min(t0 + tok, n), i, t0) for i, (_, n, s, _) in enumerate(segs) for t0 in range(0, n, tok)]
    tiles = torch.tensor([[i, t0] for _, i, t0 in sorted(work, reverse=True)], dtype=torch.int32)
    meta = torch.zeros((len(segs), 3 + width), dtype=torch.int32, device=device)
    meta[:, :3] = head.to(device)
    for i, (*_, blocks) in enumerate(segs):
        meta[i, 3 : 3 + blocks.shape[0]] = blocks
    return PrefillBatch(segs, meta, tiles.to(device), tok)


def prefill_attention_batch(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    batch: PrefillBatch,
    scale: float,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of every sequence of a prefill pass: one kernel launch, or the torch loop per sequence.
    q: [tokens, heads, d]; returns [tokens, heads * d]."""
    if batch.meta is not None and batch.tiles is not None:
        from inference.fast import prefill_attn

        return prefill_attn.prefill_attention(
            q.contiguous(),
            k_cache,
            v_cache,
            batch.meta,
            batch.tiles,
            batch.tile_tokens,
            scale,
            k_scale,
            v_scale,
        )
    outs = [
        prefill_attention(q[o : o + n], k_cache, v_cache, blocks, s, scale, k_scale, v_scale)
        for o, n, s, blocks in batch.segments
    ]
    return outs[0] if len(outs) == 1 else torch.cat(outs)
